"""Sweep runner speed: a 1,000-point sweep of single-node simulations with the local backend.

Records wall time, points/s and the runner's own cost per point, simulation excluded, two ways:

- ``runner_cpu_per_point_ms``: CPU time of the driver plus the pool workers' CPU time outside point
  functions, per point — what the runner itself burns (process start-up, messaging, row building, Parquet
  flushes, compaction). It does not depend on other jobs sharing the machine;
- ``overhead_per_point_ms``: (wall × workers − Σ wall time inside point functions) / points — the same plus
  idle workers (tail, waiting for the driver) and time spent waiting for a CPU when the machine is shared.

``--serial`` also measures ``workers=1`` (in this process: no inter-process messaging).

Workloads (``--workload``):

- ``weightsync`` (default): 1,000 weight-sync simulations on one 8-GPU node — seeded random points over
  topology (hgx-h200-8, hgx-h100-8), model (Llama-3-8B, Qwen3-30B-A3B), strategy (5), trainer/rollout
  split, rollout TP, rollout dtype and KV reserve; tens of ms per point;
- ``fanout``: 1,000 points of ``studies/example_fanout.py``'s point function on hgx-h200-8 (2 directions
  × 5 fan-outs × 100 sizes); a few ms per point, so the runner's share is most visible.

``--study PATH`` runs any study file instead. Results go to benchmarks/results/sweep-<label>.json.

    python benchmarks/sweep.py                                   # weightsync, 2 workers, 1 run
    python benchmarks/sweep.py --workload fanout --repeat 3 --serial --label fanout-cpu2
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from _record import machine_facts, write_result

from fabricsim.harness.store import ResultsStore
from fabricsim.harness.study import Study, load_study
from fabricsim.harness.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent

FANOUT_STUDY = f'''
import numpy as np
from fabricsim.harness.study import Grid, Study, load_study

_fanout = load_study({str(ROOT / "studies" / "example_fanout.py")!r})
SIZES = sorted({{int(s) for s in np.logspace(12, 30, 100, base=2)}})
STUDY = Study(
    name="bench_fanout",
    grid=Grid.product(topology=["hgx-h200-8"], direction=["h2d", "d2h"], fanout=[1, 2, 4, 6, 8], size_bytes=SIZES),
    run=_fanout.run,
    calibration=_fanout.calibration,
)
'''

WEIGHTSYNC_STUDY = '''
from fabricsim.hwmodels import presets
from fabricsim.harness.study import Grid, Study, Uniform
from fabricsim.workloads import models
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync


def run(p):
    gpus = [f"gpu{i}" for i in range(8)]
    setup = SyncSetup(presets.get(p["topology"]), models.get(p["model"]), FSDPLayout(gpus[: p["trainer_gpus"]]),
                      RolloutLayout(gpus[p["trainer_gpus"]:], tp=p["rollout_tp"]),
                      rollout_dtype=None if p["rollout_dtype"] == "bf16" else p["rollout_dtype"],
                      kv_reserve_fraction=p["kv_reserve"])
    result = simulate_sync(setup, get(p["strategy"]))
    return {"feasible": float(result.feasible), "sync_s": (result.sync_s, "s")}


STUDY = Study(
    name="bench_weightsync",
    grid=Grid.random(
        1000, seed=0, topology=["hgx-h200-8", "hgx-h100-8"], model=["Llama-3-8B", "Qwen3-30B-A3B"],
        strategy=["nccl-broadcast", "cuda-ipc-buckets", "host-staged", "rdma-p2p", "shared-pool:zero-copy"],
        trainer_gpus=[2, 4, 6], rollout_tp=[1, 2], rollout_dtype=["bf16", "fp8"], kv_reserve=Uniform(0.0, 0.9),
    ),
    run=run,
    calibration="default",
)
'''
WORKLOADS = {"fanout": FANOUT_STUDY, "weightsync": WEIGHTSYNC_STUDY}


def _median_of(repeat: int, run: Callable[[int], dict]) -> dict:
    runs = sorted((run(i) for i in range(repeat)), key=lambda r: r["wall_s"])
    best = runs[len(runs) // 2]
    best["wall_s_all"] = [r["wall_s"] for r in runs]
    return best


def _cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its finished child processes (the pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _measure(study: Study, workers: int, store_root: Path) -> dict:
    self0, kids0 = _cpu_s()
    t0 = time.perf_counter()
    report = run_sweep(study, store=ResultsStore(store_root), workers=workers, progress=False)
    wall = time.perf_counter() - t0
    self1, kids1 = _cpu_s()  # the pool is shut down and its workers reaped by now
    rows = len(ResultsStore(store_root).load(study.name))
    if report.failed:
        raise SystemExit(f"{report.failed} points failed; fix the workload before timing it")
    runner_cpu = (self1 - self0) + (kids1 - kids0) - report.point_cpu_s
    return {
        "workers": workers,
        "points": report.ran,
        "rows": rows,
        "wall_s": round(wall, 3),
        "points_per_s": round(report.ran / wall, 1),
        "sum_point_s": round(report.point_s, 3),
        "mean_point_ms": round(1e3 * report.point_s / report.ran, 3),
        # Wall-based: includes waiting for a CPU when other jobs share the machine.
        "overhead_per_point_ms": round(1e3 * max(0.0, wall * workers - report.point_s) / report.ran, 3),
        # CPU-based: what the runner itself burns (driver + workers outside point functions); load-independent.
        "runner_cpu_per_point_ms": round(1e3 * max(0.0, runner_cpu) / report.ran, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="weightsync")
    ap.add_argument("--study", default=None, help="a study file to sweep instead of --workload")
    ap.add_argument("--serial", action="store_true", help="also measure workers=1 in this process")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode; the median by wall time is kept")
    ap.add_argument("--label", default=None, help="results file label (default: WORKLOAD-HOST)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    load_before = os.getloadavg()[0]  # the 2-core dev machine is shared: say how busy it was
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            study = load_study(args.study)
        else:
            path = Path(tmp) / f"bench_{args.workload}.py"
            path.write_text(WORKLOADS[args.workload])
            study = load_study(path)
        n = len(study.points())
        # Median of repeats by wall time: the dev machine is shared, single runs wobble.
        pool = _median_of(args.repeat, lambda i: _measure(study, args.workers, Path(tmp) / f"pool{i}"))
        serial = (_median_of(args.repeat, lambda i: _measure(study, 1, Path(tmp) / f"serial{i}"))
                  if args.serial else None)
    line = (f"{study.name}: {n} points, {args.workers} workers: {pool['wall_s']:.2f} s wall, "
            f"{pool['points_per_s']:.0f} points/s, runner overhead {pool['overhead_per_point_ms']:.2f} ms/point "
            f"wall-based, {pool['runner_cpu_per_point_ms']:.2f} ms/point CPU")
    if serial:
        line += f" (serial: {serial['wall_s']:.2f} s, {serial['overhead_per_point_ms']:.2f} ms/point)"
    print(line)
    doc = {
        "benchmark": "sweep",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_facts(), "loadavg_1min_before": round(load_before, 2)},
        "study": study.name,
        "grid_points": n,
        "repeats": args.repeat,
        "pool": pool,
        "serial": serial,
        "target_overhead_per_point_ms": 5.0,
        "note": "pool timings share the cores with whatever else runs; point time grows under contention",
    }
    label = args.label or f"{args.workload}-{socket.gethostname().split('.')[0]}"
    out = Path(args.out or Path(__file__).with_name("results") / f"sweep-{label}.json")
    write_result(out, doc)


if __name__ == "__main__":
    main()
