"""How long a machine's first use of the engine takes: compiling the solver (`simcore._fluidcore`, with
`_maxmin`) and the event loop, each process with an empty numba cache of its own, so nothing is loaded from disk.

Why: every fresh install (a new venv, CI, a non-editable `pip install`) pays this once before its first
simulation, and the README's main job counts it apart ("after N s loading the engine"). With `--base-python`, the
same is timed alternately for another commit's worktree (its own venv), as the engine benchmarks do: the 2-core
VMs' speed drifts by tens of percent within a day.

    python benchmarks/compile_time.py                                   # -> results/compile-time.json
    python benchmarks/compile_time.py --base-python /tmp/venvb/bin/python --pairs 2 --out results/X.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _record import stamp, write_result

RESULTS = Path(__file__).with_name("results")
# run in a child: an empty cache directory of its own, the solver then the loop, each timed; prints one JSON line
CHILD = """
import json, os, subprocess, time
t0 = time.perf_counter()
from fabricsim.simcore import fluid, lowering
fluid.load_core()
t1 = time.perf_counter()
lowering.load_loop()
t2 = time.perf_counter()
import fabricsim
root = os.path.dirname(os.path.dirname(fabricsim.__file__))
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
print(json.dumps({"code": commit.strip() or root, "solver_s": t1 - t0, "loop_s": t2 - t1, "total_s": t2 - t0}))
"""


def one(python: str) -> dict:
    """One first use, in a fresh process of `python` with an empty numba cache."""
    with tempfile.TemporaryDirectory(prefix="compile-time-") as cache:
        out = subprocess.run([python, "-c", CHILD], capture_output=True, text=True, check=True, cwd=cache,
                             env={**os.environ, "NUMBA_CACHE_DIR": cache, "FABRICSIM_PROGRESS": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-python", help="the python of a venv with another commit's worktree installed")
    ap.add_argument("--pairs", type=int, default=2, help="runs of each (alternating, when --base-python is given)")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile-time.json")
    args = ap.parse_args()
    runs = []
    for _ in range(args.pairs):
        for python in (sys.executable, *([args.base_python] if args.base_python else [])):
            row = one(python)
            runs.append(row)
            print(f"{row['code']:>10s}  solver {row['solver_s']:5.1f} s  loop {row['loop_s']:4.1f} s  "
                  f"total {row['total_s']:5.1f} s", flush=True)
    write_result(args.out, {**stamp("compile-time"), "note": "first use with an empty numba cache, one process "
                            "each, alternating when two versions", "runs": runs})


if __name__ == "__main__":
    main()
