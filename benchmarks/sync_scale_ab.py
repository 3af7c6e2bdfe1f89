"""Points of the scale benchmark run alternately on this checkout and on another one (an older commit in a git
worktree, with its own venv), so that a comparison survives the shared VM, whose wall times move by 10-40%
between runs minutes apart.

Each point is one weight sync in a fresh process (`sync_scale.run_point`, as the scale benchmark runs it); for
every repeat, every (strategy, model) runs on both checkouts, one after the other, each side first in turn.
Recorded: each run's process wall time, simulated wall time and sync time (equal on both sides when the change is
exact).

    git worktree add /tmp/base <commit> && python3 -m venv /tmp/venv-base && /tmp/venv-base/bin/pip install -e /tmp/base
    python benchmarks/sync_scale_ab.py --base-python /tmp/venv-base/bin/python --base-dir /tmp/base \\
        --strategies host-staged shared-pool:pull-on-publish --gpus 1024 --repeat 2 --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from _record import stamp, write_result
from sync_scale import MODELS, run_point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-python", required=True, help="the other checkout's venv python")
    ap.add_argument("--base-dir", required=True, help="the other checkout (a git worktree)")
    ap.add_argument("--strategies", nargs="+", required=True)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    here = Path(__file__).parent
    base = Path(args.base_dir) / "benchmarks"
    commit = subprocess.run(["git", "-C", args.base_dir, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for rep in range(args.repeat):
        for strategy in args.strategies:
            for model in args.models:
                pair = (("base", args.base_python, base), ("this", sys.executable, here))
                for side, python, bench in pair if rep % 2 == 0 else pair[::-1]:  # each side first in turn
                    row = {"repeat": rep, "side": side,
                           **run_point(model, strategy, args.gpus // 8, args.timeout, python=python, bench_dir=bench)}
                    rows.append(row)
                    print(f"{side:4s} {strategy:28s} {model:16s} {row['process_wall_s']:6.2f} s  {row['status']}",
                          flush=True)
    write_result(Path(args.out), {**stamp("sync-scale-ab"), "base_commit": commit, "gpus": args.gpus,
                                  "note": "alternating runs, base first in even repeats, this checkout first in odd "
                                          "ones; shared 2-core VM",
                                  "runs": rows})


if __name__ == "__main__":
    main()
