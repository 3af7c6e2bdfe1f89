"""The workload suite's tensor lists, generated from the model presets (`workloads.models`).

The GPU side of validate may not import the simulator's workload layer, so the shapes it allocates are
written once to `validate/workload_tensors.json` by `write_tensor_file()`; a test regenerates them
and fails if the committed file differs from the presets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fabricsim.validate.workload_cases import MODELS, TENSORS_FILE
from fabricsim.workloads import models


def model_subset(key: str) -> models.ModelConfig:
    """The preset behind a case's model key, cut to the decoder layers the suite moves."""
    preset, layers = MODELS[key]
    return dataclasses.replace(models.get(preset), num_layers=layers)


def tensor_document() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (preset, layers) in MODELS.items():
        m = model_subset(key)
        ts = m.tensors()
        if any(t.dtype != "bf16" for t in ts):
            raise ValueError(f"{preset}: the workload suite moves bf16 tensors only")
        out[key] = {"preset": preset, "layers": layers, "bytes": int(sum(t.nbytes for t in ts)),
                    "tensors": [[t.name, list(t.shape)] for t in ts]}
    return {"format": "fabricsim-workload-tensors", "dtype": "bf16", "models": out}


def write_tensor_file(path: Path = TENSORS_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tensor_document(), separators=(",", ":")) + "\n")
    return path


if __name__ == "__main__":
    print(write_tensor_file())
