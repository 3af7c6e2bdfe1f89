"""Synthetic measurements: the simulator's own predictions, in the measurement file format.

Used by the round-trip test (calibrating on what a known profile predicts must give that profile back)
and to rehearse `calibrate`/`report` without a GPU. IPC cases get a linear cost in the size.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import CalibrationProfile
from fabricsim.hwmodels.presets import PRESET_FOR
from fabricsim.validate.cases import build_cases, to_scenario
from fabricsim.validate.measurements import FORMAT, FORMAT_VERSION, case_to_dict, check_document

from .simulate import collective_params, simulate_case


def synthetic_document(preset: str, profile: CalibrationProfile, suite: str = "full", *, sm_copies: bool = False,
                       ipc_open: tuple[float, float] = (40e-6, 1e-14),
                       ipc_close: tuple[float, float] = (20e-6, 0.0)) -> dict[str, Any]:
    """A checked measurement document whose every number is what `profile` on `preset` predicts."""
    model, n = next((k for k, v in PRESET_FOR.items() if v == preset), (profile.gpu_model, profile.gpus))
    topo = presets.get(preset, calibration=profile)
    collectives = collective_params(profile)
    cases = []
    for case in build_cases(n, suite, sm_copies=sm_copies):
        d = case_to_dict(case)
        if case.group == "ipc":
            d["measured"] = {"reps": 1, "open_s": ipc_open[0] + ipc_open[1] * case.bytes,
                             "close_s": ipc_close[0] + ipc_close[1] * case.bytes}
            d["scenario"] = None
        else:
            pred = simulate_case(case, topo, collectives)
            d["measured"] = {"reps": 1, "makespan_s": pred.makespan_s, "finish_s": pred.finish_s}
            d["scenario"] = to_scenario(case, preset, n)
        cases.append(d)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(),
           "suite": suite, "machine": {"kind": "synthetic", "preset": preset, "gpu_model": model, "gpus": n,
                                       "device_layer": "simulator"},
           "cases": cases, "skipped": [], "settings": {}}
    check_document(doc, "synthetic")
    return doc
