"""The workload cases: weight-sync strategies and KV-cache policies run end to end on one GPU, as plain data.

A `WorkloadCase` names a real procedure (`mech`), the model whose tensors it moves (`model`, a preset with
`layers` decoder layers: a documented subset where the whole model would not fit twice on one GPU beside
its buffers) and its parameters (bucket size, pages). The GPU side (`validate.gpu.workloads`) runs it and
stores its time; the fit side (`validate.fit.workloads_sim`) simulates the same procedure on the same
tensors under the same id. Tensor lists come from `validate/workload_tensors.json`, generated from the
model presets (`fabricsim.validate.fit.workloads_models`; a test keeps the two equal): the GPU side may not
import the simulator's workload layer.

Split: software costs (per tensor, per bucket) are fitted on the `calibration` cases only: the 64 MiB and
1 GiB buckets and every other weight-sync mechanism (fp8 at its one bucket size, 256 MiB) on Llama-3-8B and
Qwen3-30B-A3B. The 256 MiB IPC buckets, every case of the third model (Llama-3-70B, 4 layers), the reader
cases and every KV case are `held-out`: they judge the fit. Imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import CALIBRATION, HELD_OUT
from .errors import MeasurementError

MiB, GiB = 1 << 20, 1 << 30

# (preset, decoder layers used). Llama-3-8B whole; the others cut to fit trainer copy, rollout copy and a
# double-buffered pool on one 141 GB GPU while keeping thousands of tensors (Qwen3's 128 experts per layer).
MODELS: dict[str, tuple[str, int]] = {
    "llama8b": ("Llama-3-8B", 32),
    "qwen30b": ("Qwen3-30B-A3B", 8),
    "llama70b": ("Llama-3-70B", 4),
    "llama8b-4l": ("Llama-3-8B", 4),  # the pool cases with several readers colocated on one GPU
}
CALIBRATION_MODELS = ("llama8b", "qwen30b")
BUCKETS = {"64M": 64 * MiB, "256M": 256 * MiB, "1G": GiB}
HELD_OUT_BUCKETS = ("256M",)
HOST_BUCKET = 512 * MiB
FP8_BUCKET = "256M"

SYNC_MECHS = ("noop", "ipc-tensor-first", "ipc-tensor-steady", "ipc-bucket", "fp8-bucket", "host-staged",
              "pool-pull", "pool-zero-copy")
KV_MECHS = ("kv-offload-decode", "kv-prefetch-decode", "kv-topk-fetch", "kv-swap", "kv-prefix-copy")
MULTI_GPU_MECHS = ("nccl-flat", "nccl-tensor", "nccl-bucket", "ipc-pull-readers", "relay")
RELAY_CHUNK = 64 * MiB

# KV cache geometry for the KV cases: Llama-3-8B's (32 layers, 8 KV heads of 128, bf16), 16-token pages:
# one page of one layer's K (or V) is 32 KiB, a page across all layers and K/V 2 MiB.
KV_GEOMETRY = {"layers": 32, "page_tokens": 16, "kv_heads": 8, "head_dim": 128, "blocks": 4096}
DECODE_BYTES = 2 * GiB  # the HBM-bound stand-in for a decode step reads and writes this much (~1 ms on H200)
DECODE_STEPS = 12


@dataclass(frozen=True)
class WorkloadCase:
    """One end-to-end case; `params` holds what the procedure needs (bucket_bytes, pages, steps, ...)."""

    id: str
    kind: str  # 'sync' | 'kv'
    mech: str
    split: str
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    gpus: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "mech": self.mech, "split": self.split, "model": self.model,
                "params": dict(self.params), "gpus": self.gpus}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkloadCase:
        return cls(d["id"], d["kind"], d["mech"], d["split"], d.get("model", ""), dict(d.get("params") or {}),
                   int(d.get("gpus", 1)))


BUCKET_ALIGN = 16  # kernels.bucket.ALIGN: tensors sit at 16-byte offsets inside a bucket


def aligned(n: int) -> int:
    return (n + BUCKET_ALIGN - 1) // BUCKET_ALIGN * BUCKET_ALIGN


def plan_buckets(sizes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Consecutive tensors grouped while they fit `bucket_bytes`; a larger tensor travels alone (as slime)."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, n in enumerate(sizes):
        need = aligned(n)
        if cur and used + need > bucket_bytes:
            buckets.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        buckets.append(cur)
    return buckets


def bucket_entries(idx: list[int], sizes: list[int]) -> list[tuple[int, int, int]]:
    """(tensor index, byte offset in the bucket, bytes) for one bucket."""
    out, off = [], 0
    for i in idx:
        out.append((i, off, sizes[i]))
        off += aligned(sizes[i])
    return out


def page_bytes_all_layers() -> int:
    g = KV_GEOMETRY
    return 2 * g["layers"] * g["page_tokens"] * g["kv_heads"] * g["head_dim"] * 2


def _sync_cases() -> list[WorkloadCase]:
    out = []
    for key in ("llama8b", "qwen30b", "llama70b"):
        split = CALIBRATION if key in CALIBRATION_MODELS else HELD_OUT
        for mech in SYNC_MECHS:
            if mech == "ipc-bucket":
                for name, nbytes in BUCKETS.items():
                    s = HELD_OUT if name in HELD_OUT_BUCKETS else split
                    out.append(WorkloadCase(f"ws-{mech}-{name}-{key}", "sync", mech, s, key,
                                            {"bucket_bytes": nbytes}))
            elif mech == "fp8-bucket":
                out.append(WorkloadCase(f"ws-{mech}-{FP8_BUCKET}-{key}", "sync", mech, split, key,
                                        {"bucket_bytes": BUCKETS[FP8_BUCKET], "block": 128}))
            elif mech == "host-staged":
                out.append(WorkloadCase(f"ws-{mech}-{key}", "sync", mech, split, key, {"bucket_bytes": HOST_BUCKET}))
            else:
                out.append(WorkloadCase(f"ws-{mech}-{key}", "sync", mech, split, key))
    return out


def _kv_cases() -> list[WorkloadCase]:
    pb = page_bytes_all_layers()
    out = [
        WorkloadCase("kv-offload-decode-256", "kv", "kv-offload-decode", HELD_OUT,
                     params={"pages": 256, "steps": DECODE_STEPS, "decode_bytes": DECODE_BYTES, "page_bytes": pb}),
        WorkloadCase("kv-prefetch-decode-256", "kv", "kv-prefetch-decode", HELD_OUT,
                     params={"pages": 256, "steps": DECODE_STEPS, "decode_bytes": DECODE_BYTES, "page_bytes": pb}),
    ]
    for k in (16, 64, 256):
        out.append(WorkloadCase(f"kv-topk-fetch-{k}", "kv", "kv-topk-fetch", HELD_OUT,
                                params={"pages": k, "page_bytes": pb}))
    for n in (128, 512):
        out.append(WorkloadCase(f"kv-swap-{n}", "kv", "kv-swap", HELD_OUT, params={"pages": n, "page_bytes": pb}))
    for n in (64, 512):
        out.append(WorkloadCase(f"kv-prefix-copy-{n}", "kv", "kv-prefix-copy", HELD_OUT,
                                params={"pages": n, "page_bytes": pb}))
    return out


def _multi_gpu_cases(n_gpus: int) -> list[WorkloadCase]:
    """Written for two or more GPUs (run by the multi-GPU issue): the trainer on GPU 0, readers on 1..n-1."""
    out = []
    readers = n_gpus - 1
    for mech in MULTI_GPU_MECHS:
        params: dict[str, Any] = {"readers": readers}
        if mech == "nccl-bucket":
            params["bucket_bytes"] = BUCKETS["256M"]
        if mech == "relay":
            params["chunk_bytes"] = RELAY_CHUNK
        counts = range(1, readers + 1) if mech == "ipc-pull-readers" else (readers,)
        for k in counts:
            out.append(WorkloadCase(f"ws-{mech}-{k}r-llama8b", "sync", mech, HELD_OUT, "llama8b",
                                    {**params, "readers": k}, gpus=n_gpus))
    return out


def _colocated_pool_cases() -> list[WorkloadCase]:
    """The pool cases with several readers, every reader a process on the trainer's GPU (one-GPU machines)."""
    out = [WorkloadCase(f"ws-ipc-pull-readers-{k}r-colocated", "sync", "ipc-pull-readers", HELD_OUT, "llama8b-4l",
                        {"readers": k, "colocated": True}) for k in (1, 2, 3)]
    out += [WorkloadCase(f"ws-relay-{k}h-colocated", "sync", "relay", HELD_OUT, "llama8b-4l",
                         {"readers": k, "colocated": True, "chunk_bytes": RELAY_CHUNK}) for k in (1, 3)]
    return out


def build_workload_cases(n_gpus: int = 1) -> list[WorkloadCase]:
    """Every case this machine can run: the one-GPU cases always, the multi-GPU ones from two GPUs on."""
    cases = _sync_cases() + _colocated_pool_cases() + _kv_cases()
    if n_gpus >= 2:
        cases += _multi_gpu_cases(n_gpus)
    return cases


# Beside the module, not under validate/data: the GPU side reads it from an installed package too (package-data).
TENSORS_FILE = Path(__file__).resolve().parent / "workload_tensors.json"


def tensor_list(model: str, path: Path | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every bf16 tensor the case's model moves, in checkpoint order."""
    from fabricsim.hwmodels.fileio import read_text  # here: this module imports nothing heavy (the GPU side)

    path = path or TENSORS_FILE
    try:
        doc = json.loads(read_text(path, MeasurementError, "the workload tensor lists"))
    except json.JSONDecodeError as exc:
        raise MeasurementError(f"{path}: cannot read the workload tensor lists ({exc})") from None
    if model not in doc.get("models", {}):
        known = ", ".join(doc.get("models", {}))
        raise MeasurementError(f"{path}: no tensor list for model '{model}' (known: {known})")
    return [(n, tuple(s)) for n, s in doc["models"][model]["tensors"]]
