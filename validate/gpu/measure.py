"""Run the measured cases on a device layer and publish one validate output folder, all or nothing.

`run_validate(out, suite, device)` measures every case of `cases.build_cases` for the machine, takes
medians after warm-up, writes `measured.json`, one scenario file per case (`scenarios/CASE.json`, the
DESIGN.md format) and the machine facts, into a hidden temporary folder beside `out`, and renames it to
`out` only when everything is written: an interrupted or failed run leaves nothing behind.

Imports neither torch nor simpy: the device layer (real: `measure_torch.TorchDevice`; CI:
`device_fake.FakeDevice`) is passed in, and only `open_device()` imports torch.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fabricsim.hwmodels.fileio import check_parent_folder
from fabricsim.hwmodels.presets import PRESET_FOR
from fabricsim.validate.cases import SUITES, Case, build_cases, to_scenario
from fabricsim.validate.errors import ValidateRunError
from fabricsim.validate.measurements import FORMAT, FORMAT_VERSION, case_to_dict, check_document, write_json_atomic

GROUP_ORDER = {"copies": 0, "nccl": 1, "ipc": 2}
# How IPC close is timed; files without this setting timed it with a garbage collection inside (not comparable).
IPC_CLOSE_TIMING = "unmap-only"


class DeviceLayer(Protocol):
    name: str

    def gpu_count(self) -> int: ...
    def has_sm_copies(self) -> tuple[bool, str]: ...
    def facts(self) -> dict[str, Any]: ...
    def run_copies(self, case: Case, reps: int, warmup: int) -> list[dict[str, dict[str, float]]]: ...
    def run_nccl(self, cases: list[Case], reps: int, warmup: int) -> dict[str, list[float]]: ...
    def run_ipc(self, cases: list[Case], reps: int) -> dict[str, dict[str, list[float]]]: ...


def gpu_model_of(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100' (the model names the presets and profiles use); a name with none of
    those models is returned as it is, so that no preset matches it and calibrate says so.

    Whole tokens only: 'NVIDIA GH200 480GB' contains 'H200' but is a Grace Hopper superchip (a coherent
    NVLink-C2C host link instead of PCIe), which an H200 preset would model wrongly.
    """
    tokens = set(re.split(r"[\s_/-]+", name.upper()))
    for model in ("H200", "H100", "A100", "L40S"):
        if model in tokens:
            return "H100-PCIE" if model == "H100" and "PCIE" in tokens else model
    return name


def cuda_available() -> bool:
    """torch is installed and sees a CUDA GPU (else every suite has nothing to measure). Sets the copy engines'
    connection count first, since it must be set before CUDA starts."""
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def open_device() -> DeviceLayer | None:
    """The torch device layer, or None when torch or a CUDA GPU is missing (nothing to measure)."""
    if not cuda_available():
        return None
    from .measure_torch import TorchDevice

    return TorchDevice()


def reps_for(nbytes: int, suite: str) -> tuple[int, int]:
    """(repetitions, warm-ups): many for latency-bound sizes, few where one copy takes milliseconds."""
    reps = 21 if nbytes <= (1 << 20) else 11 if nbytes <= (64 << 20) else 9
    if suite == "quick":
        reps = max(3, reps // 2)
    return reps, 2


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _summarise_copies(case: Case, samples: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    ids = [x.id for x in case.xfers] + [k.id for k in case.kernels]
    finish = {i: _median([s["finish_s"][i] for s in samples]) for i in ids}
    own = {i: _median([s["own_s"][i] for s in samples]) for i in ids}
    spans = [max(s["finish_s"][i] for i in ids) for s in samples]
    alone = len(ids) == 1
    # A lone copy is timed best on its own stream (no clock hop); concurrent ones on the common clock.
    makespan = own[ids[0]] if alone else _median(spans)
    if alone:
        finish = {ids[0]: own[ids[0]]}
    q = sorted(spans)
    # Equal copies are served in an order that changes from one repetition to the next, so per-copy
    # medians mix positions; the k-th earliest finish of each repetition (an order statistic) does not.
    ranked = [sorted(s["finish_s"][i] for i in ids) for s in samples]
    ranked_own = [sorted(s["own_s"][i] for i in ids) for s in samples]
    return {"reps": len(samples), "makespan_s": makespan, "finish_s": finish, "own_s": own,
            "finish_sorted_s": [_median([r[k] for r in ranked]) for k in range(len(ids))],
            "own_sorted_s": [_median([r[k] for r in ranked_own]) for k in range(len(ids))],
            "raw_finish_s": {i: [s["finish_s"][i] for s in samples] for i in ids},
            "raw_own_s": {i: [s["own_s"][i] for s in samples] for i in ids},
            "spread_s": q[-1] - q[0], "makespan_common_clock_s": _median(spans)}


def measure(device: DeviceLayer, suite: str = "full", *, kind: str = "", budget_s: float | None = None,
            log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure every case; returns the measurement document (checked, not yet written)."""
    if suite not in SUITES:
        raise ValidateRunError(f"unknown suite '{suite}' (known: {', '.join(SUITES)})")
    t0 = time.monotonic()
    facts = device.facts()
    n = device.gpu_count()
    model = gpu_model_of(str(facts.get("gpu_name", "")))
    preset = PRESET_FOR.get((model, n))
    sm_ok, sm_note = device.has_sm_copies()
    cases = sorted(build_cases(n, suite, sm_copies=sm_ok), key=lambda c: (GROUP_ORDER[c.group],
                                                                            c.pattern.startswith("sm")))
    skipped: list[dict[str, str]] = []
    if not sm_ok:
        skipped.append({"id": "sm-*", "reason": f"SM-driven copies skipped: {sm_note}"})
    if n < 2:
        skipped.append({"id": "p2p-*, nccl-*", "reason": f"needs two or more GPUs; this machine has {n}"})
    skipped.append({"id": "weightpool", "reason": "WeightPool publish/observe latency is measured by "
                    "benchmarks/kernels.py (benchmarks/results/kernels-*/kernels-bench.csv), not here"})
    done: list[dict[str, Any]] = []

    def over_budget() -> bool:
        return budget_s is not None and time.monotonic() - t0 > budget_s

    def record(case: Case, measured: dict[str, Any]) -> None:
        d = case_to_dict(case)
        d["measured"] = measured
        d["scenario"] = to_scenario(case, preset or "custom", n)
        done.append(d)

    copies = [c for c in cases if c.group == "copies"]
    for i, case in enumerate(copies):
        if over_budget():
            skipped.extend({"id": c.id, "reason": "time budget spent"} for c in copies[i:])
            break
        reps, warm = reps_for(max(x.bytes for x in case.xfers), suite)
        try:
            samples = device.run_copies(case, reps, warm)
        except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others; it is listed
            skipped.append({"id": case.id, "reason": f"failed: {type(exc).__name__}: {exc}"[:400]})
            log(f"{case.id}: FAILED {exc}")
            continue
        record(case, _summarise_copies(case, samples))
        log(f"[{time.monotonic() - t0:6.1f}s] {case.id}: {done[-1]['measured']['makespan_s'] * 1e6:.1f} us")
    nccl = [c for c in cases if c.group == "nccl"]
    if nccl and over_budget():
        skipped.extend({"id": c.id, "reason": "time budget spent"} for c in nccl)
    elif nccl:
        try:
            res = device.run_nccl(nccl, 5, 2)
        except Exception as exc:  # noqa: BLE001
            res = {}
            skipped.append({"id": "nccl-*", "reason": f"failed: {type(exc).__name__}: {exc}"[:400]})
        for c in nccl:
            times = res.get(c.id)
            if not times:
                skipped.append({"id": c.id, "reason": "NCCL run returned no time"})
                continue
            record(c, {"reps": len(times), "makespan_s": _median(times), "all_s": times})
        log(f"[{time.monotonic() - t0:6.1f}s] nccl: {len(nccl)} cases")
    ipc = [c for c in cases if c.group == "ipc"]
    if ipc and over_budget():
        skipped.extend({"id": c.id, "reason": "time budget spent"} for c in ipc)
    elif ipc:
        try:
            res_ipc = device.run_ipc(ipc, 7)
        except Exception as exc:  # noqa: BLE001
            res_ipc = {}
            skipped.append({"id": "ipc-*", "reason": f"failed: {type(exc).__name__}: {exc}"[:400]})
        for c in ipc:
            r = res_ipc.get(c.id)
            if not r:
                continue
            record(c, {"reps": len(r["open_s"]), "open_s": _median(r["open_s"]), "close_s": _median(r["close_s"])})
        log(f"[{time.monotonic() - t0:6.1f}s] ipc: {len(ipc)} cases")
    machine = {"kind": kind, "preset": preset, "gpu_model": model, "gpus": n, "device_layer": device.name,
               "sm_copies": sm_note, **{k: v for k, v in facts.items() if k not in ("gpus",)}}
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(),
        "suite": suite, "machine": machine, "cases": done, "skipped": skipped,
        "settings": {"CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
                     "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"), "statistic": "median",
                     "ipc_close_timing": IPC_CLOSE_TIMING,
                     "warmup": 2, "wall_s": time.monotonic() - t0, "budget_s": budget_s},
    }
    check_document(doc, "measurements")
    return doc


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that holds anything: a measurement never replaces another; and one whose own
    folder does not exist (`check_parent_folder`: the output folder is made, no tree for a typo)."""
    check_parent_folder(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidateRunError(f"output folder {out} already exists and is not empty; pick another --out")


def publish_folder(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write the output folder under a temporary name, then rename it into place: nothing partial
    survives a crash or a Ctrl-C (used by the copy suite and the workload suite)."""
    out = Path(out)
    check_output_folder(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def publish(doc: dict[str, Any], out: Path) -> Path:
    """The copy suite's folder: measured.json, one scenario file per case, the machine's topology texts."""

    def fill(tmp: Path) -> None:
        (tmp / "scenarios").mkdir()
        for c in doc["cases"]:
            if c.get("scenario"):
                write_json_atomic(tmp / "scenarios" / f"{c['id']}.json", c["scenario"])
        facts = doc["machine"]
        for key in ("topo_m", "nvlink_status", "query"):
            if facts.get(key):
                (tmp / f"{key}.txt").write_text(str(facts[key]))
        write_json_atomic(tmp / "measured.json", doc)

    return publish_folder(out, fill)


def run_validate(out: str | Path, suite: str = "full", device: DeviceLayer | None = None, *, kind: str = "",
                 budget_s: float | None = None, verbose: bool = True) -> Path | None:
    """Measure and publish; returns the output folder, or None when there is no GPU (nothing to do)."""
    out = Path(out)
    check_output_folder(out)
    if device is None:
        device = open_device()
        if device is None:
            return None
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    doc = measure(device, suite, kind=kind, budget_s=budget_s, log=log)
    return publish(doc, out)
