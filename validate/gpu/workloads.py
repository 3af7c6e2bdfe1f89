"""`fabricsim validate --suite workloads`: weight-sync strategies and KV policies run end to end, one output folder.

`run_workloads(out, device)` runs every case of `workload_cases.build_workload_cases` the machine can run on a
device layer (real: `workloads_torch.TorchWorkloads`; CI: `workloads_fake.FakeWorkloads`), groups the
weight-sync cases by model (one trainer copy of the weights per model), stops starting cases once the time
budget is spent (listing what it skipped), and publishes `workloads.json` all or nothing (the same
hidden-folder-then-rename as the copy suite). Imports neither torch nor simpy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fabricsim.validate.gpu.measure import check_output_folder, cuda_available, gpu_model_of, publish_folder
from fabricsim.validate.measurements import write_json_atomic
from fabricsim.validate.workload_cases import MODELS, MULTI_GPU_MECHS, WorkloadCase, build_workload_cases, tensor_list
from fabricsim.validate.workloads_file import FORMAT, FORMAT_VERSION, check_workload_document

REPS = {"sync": 5, "kv": 7}


class WorkloadDevice(Protocol):
    name: str

    def gpu_count(self) -> int: ...
    def facts(self) -> dict[str, Any]: ...
    def run_sync(self, model: str, tensors: list[tuple[str, tuple[int, ...]]], cases: list[WorkloadCase],
                 reps: int, over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]: ...
    def run_kv(self, cases: list[WorkloadCase], reps: int,
               over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]: ...
    def run_multi(self, cases: list[WorkloadCase], reps: int,
                  over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]: ...
    def close(self) -> None: ...


def open_workload_device() -> WorkloadDevice | None:
    """The torch layer, or None without torch or a CUDA GPU (nothing to measure)."""
    if not cuda_available():
        return None
    from .workloads_torch import TorchWorkloads

    return TorchWorkloads()


def measure_workloads(device: WorkloadDevice, *, kind: str = "", budget_s: float | None = None,
                      only: tuple[str, ...] = (), log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the cases (all, or those whose id starts with one of `only`); the checked document."""
    t0 = time.monotonic()
    facts = device.facts()
    n = device.gpu_count()
    cases = [c for c in build_workload_cases(n) if not only or c.id.startswith(only)]
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if n < 2:
        skipped.append({"id": "ws-nccl-*, ws-ipc-pull-readers-*r-llama8b, ws-relay-*r-llama8b",
                        "reason": f"needs two or more GPUs; this machine has {n} (the pool cases run colocated)"})

    def over_budget() -> bool:
        return budget_s is not None and time.monotonic() - t0 > budget_s

    def collect(group: list[WorkloadCase], res: dict[str, dict[str, Any] | str]) -> None:
        for c in group:
            r = res.get(c.id, "not run")
            if isinstance(r, str):
                skipped.append({"id": c.id, "reason": r})
                log(f"[{time.monotonic() - t0:6.1f}s] {c.id}: {r}")
                continue
            done.append({**c.to_dict(), "measured": r})
            log(f"[{time.monotonic() - t0:6.1f}s] {c.id}: {r['time_s'] * 1e3:.3f} ms")

    try:
        multi = [c for c in cases if c.mech in MULTI_GPU_MECHS]
        for model in MODELS:
            group = [c for c in cases if c.kind == "sync" and c.model == model and c not in multi]
            if not group:
                continue
            if over_budget():
                collect(group, {c.id: "time budget spent" for c in group})
                continue
            collect(group, device.run_sync(model, tensor_list(model), group, REPS["sync"], over_budget))
        kv = [c for c in cases if c.kind == "kv"]
        if kv:
            collect(kv, device.run_kv(kv, REPS["kv"], over_budget))
        if multi:
            collect(multi, device.run_multi(multi, REPS["sync"], over_budget))
    finally:
        device.close()
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(),
           "suite": "workloads",
           "machine": {"kind": kind, "gpu_model": gpu_model_of(str(facts.get("gpu_name", ""))), "gpus": n,
                       "device_layer": device.name, **{k: v for k, v in facts.items() if k != "gpus"}},
           "cases": done, "skipped": skipped,
           "settings": {"reps": REPS, "statistic": "median", "warmup": 1, "wall_s": time.monotonic() - t0,
                        "multi_reader_checksum": "outside-timing",
                        "budget_s": budget_s,
                        "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}}
    check_workload_document(doc, "workload measurements")
    return doc


def publish_workloads(doc: dict[str, Any], out: Path) -> Path:
    """Write `out/workloads.json` under a hidden folder, then rename it into place."""
    return publish_folder(out, lambda tmp: write_json_atomic(tmp / "workloads.json", doc))


def run_workloads(out: str | Path, device: WorkloadDevice | None = None, *, kind: str = "",
                  budget_s: float | None = None, only: tuple[str, ...] = (), verbose: bool = True) -> Path | None:
    """Measure and publish; None when there is no GPU (nothing to do)."""
    out = Path(out)
    check_output_folder(out)
    if device is None:
        device = open_workload_device()
        if device is None:
            return None
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    return publish_workloads(measure_workloads(device, kind=kind, budget_s=budget_s, only=only, log=log), out)
