"""What holding Python's cyclic collector off during a simulation (`simcore.gcpause`) saves: large syncs run with
the pause (the default) and with `FABRICSIM_GC_PAUSE=0`, each in a fresh process, alternating, `--repeat` times;
recorded per run: the simulation's wall time and the process's peak resident memory.

    python benchmarks/gc_pause.py            # -> benchmarks/results/gc-pause.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _record import stamp, write_result
from sync_scale import run_point

RESULTS = Path(__file__).with_name("results")
# (model, strategy, nodes, knobs): a procedural sync (with a second publish the pool's reads are processes: a read
# may be torn and retried), a declared one with 1.6M items, a solver-bound one
POINTS = [("DeepSeek-V3", "shared-pool:pull-on-publish", 128, {"publishes": 2, "publish_interval_s": 0.5}),
          ("Kimi-K2", "host-staged", 128, {}), ("Qwen3-235B-A22B", "rdma-p2p", 16, {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", default=str(RESULTS / "gc-pause.json"))
    args = ap.parse_args()
    rows = []
    for model, strategy, nodes, knobs in POINTS:
        for rep in range(args.repeat):
            for pause in ("1", "0"):
                row = run_point(model, strategy, nodes, args.timeout, env={"FABRICSIM_GC_PAUSE": pause}, knobs=knobs)
                row.update(gc_pause=pause == "1", repeat=rep, knobs=knobs)
                rows.append(row)
                print(f"{model:16s} {strategy:28s} {row['gpus']:5d} GPUs  pause={pause}  {row['status']:8s} "
                      f"sim {row.get('sim_wall_s', float('nan')):6.2f} s  peak {row.get('max_rss_mb', 0):6.0f} MB",
                      flush=True)
    write_result(Path(args.out), {
        **stamp("gc-pause"),
        "note": "each run a fresh process, pause on and off alternating; shared 2-core VM", "runs": rows})


if __name__ == "__main__":
    main()
