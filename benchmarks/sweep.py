"""Sweep runner speed: a 1,000-point sweep of single-node simulations with the local backend.

Records wall time, points/s and the runner's own cost per point, simulation excluded:

- ``overhead_per_point_ms`` (the pool, ``--workers N``): (wall × workers − Σ time inside point functions)
  / points — everything the runner adds: process start-up, messaging, row building, Parquet flushes,
  compaction, and idle workers at the tail;
- ``serial_overhead_per_point_ms`` (``workers=1``, in this process): (wall − Σ point time) / points — the
  bookkeeping alone (rows, Parquet, progress), with no inter-process messaging.

The default study is 1,000 points of ``studies/example_fanout.py``'s point function on hgx-h200-8
(2 directions × 5 fan-outs × 100 sizes, 4 KiB..1 GiB); ``--study PATH`` runs another study file instead
(e.g. the weight-sync study). Results go to benchmarks/results/sweep-<label>.json.

    python benchmarks/sweep.py                  # 2 workers (this repo's CI machine has 2 cores)
    python benchmarks/sweep.py --workers 4 --label h100-host
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from simcore.store import ResultsStore
from simcore.study import Study, load_study
from simcore.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent

BENCH_STUDY = f'''
import numpy as np
from simcore.study import Grid, Study, load_study

_fanout = load_study({str(ROOT / "studies" / "example_fanout.py")!r})
SIZES = sorted({{int(s) for s in np.logspace(12, 30, 100, base=2)}})
STUDY = Study(
    name="bench_sweep",
    grid=Grid.product(topology=["hgx-h200-8"], direction=["h2d", "d2h"], fanout=[1, 2, 4, 6, 8], size_bytes=SIZES),
    run=_fanout.run,
    calibration=_fanout.calibration,
)
'''


def _measure(study: Study, workers: int, store_root: Path) -> dict:
    t0 = time.perf_counter()
    report = run_sweep(study, store=ResultsStore(store_root), workers=workers, progress=False)
    wall = time.perf_counter() - t0
    rows = len(ResultsStore(store_root).load(study.name))
    assert report.failed == 0, f"{report.failed} points failed"
    return {
        "workers": workers,
        "points": report.ran,
        "rows": rows,
        "wall_s": round(wall, 3),
        "points_per_s": round(report.ran / wall, 1),
        "sum_point_s": round(report.point_s, 3),
        "mean_point_ms": round(1e3 * report.point_s / report.ran, 3),
        "overhead_per_point_ms": round(1e3 * max(0.0, wall * workers - report.point_s) / report.ran, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=None, help="study file to sweep (default: 1,000 fan-out points)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each mode; the median by wall time is kept")
    ap.add_argument("--label", default=socket.gethostname().split(".")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    load_before = os.getloadavg()[0]  # the 2-core dev machine is shared: say how busy it was
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            study = load_study(args.study)
        else:
            path = Path(tmp) / "bench_sweep.py"
            path.write_text(BENCH_STUDY)
            study = load_study(path)
        n = len(study.points())
        # Median of repeats by wall time: the dev machine is shared, single runs wobble.
        pools = sorted((_measure(study, args.workers, Path(tmp) / f"pool{i}") for i in range(args.repeat)),
                       key=lambda r: r["wall_s"])
        serials = sorted((_measure(study, 1, Path(tmp) / f"serial{i}") for i in range(args.repeat)),
                         key=lambda r: r["wall_s"])
        pool, serial = pools[len(pools) // 2], serials[len(serials) // 2]
        pool["wall_s_all"] = [r["wall_s"] for r in pools]
        serial["wall_s_all"] = [r["wall_s"] for r in serials]
    print(f"{study.name}: {n} points, {args.workers} workers: {pool['wall_s']:.2f} s wall, "
          f"{pool['points_per_s']:.0f} points/s, runner overhead {pool['overhead_per_point_ms']:.2f} ms/point "
          f"(serial: {serial['wall_s']:.2f} s, {serial['overhead_per_point_ms']:.2f} ms/point)")
    doc = {
        "benchmark": "sweep",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:]),
        "machine": {"host": socket.gethostname(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "python": sys.version.split()[0], "platform": platform.platform(),
                    "loadavg_1min_before": round(load_before, 2)},
        "study": study.name,
        "grid_points": n,
        "repeats": args.repeat,
        "pool": pool,
        "serial": serial,
        "target_overhead_per_point_ms": 5.0,
        "note": "pool timings share the cores with whatever else runs; point time grows under contention",
    }
    out = Path(args.out or Path(__file__).with_name("results") / f"sweep-{args.label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(doc, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"wrote {out}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
