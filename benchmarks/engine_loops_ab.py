"""engine_loops.py alternately on this checkout and on another commit's, on one machine: the per-event timings of
two versions of the engine, where the VM's speed drifts between runs (up to 40% within a day on the dev VMs).

The other commit runs from its own git worktree with its own venv and its own copy of the benchmark (an older
engine_loops.py records the counters its engine has), each run in a fresh process, HEAD first:

    git worktree add /tmp/base COMMIT && python3 -m venv /tmp/venvb && /tmp/venvb/bin/pip install -e /tmp/base
    python benchmarks/engine_loops_ab.py --base-dir /tmp/base --base-python /tmp/venvb/bin/python --pairs 2 \\
        --out benchmarks/results/engine-loops-ab-xeon.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _record import write_result

HERE = Path(__file__).resolve().parent


def commit_of(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def one_run(python: str, repo: Path, out: Path) -> dict:
    """engine_loops.py of `repo`, run by `python`, its result file read back."""
    subprocess.run([python, str(repo / "benchmarks" / "engine_loops.py"), "--out", str(out)], check=True,
                   cwd=repo)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-dir", type=Path, required=True, help="the other commit's worktree")
    ap.add_argument("--base-python", required=True, help="the python of the venv that has the worktree installed")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    head, base = HERE.parent, args.base_dir.resolve()
    versions = [(commit_of(head), sys.executable, head), (commit_of(base), args.base_python, base)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for code, python, repo in versions:
                doc = one_run(python, repo, Path(tmp) / f"run{i}-{len(runs)}.json")
                runs.append({**doc, "code": code + (" (HEAD)" if repo == head else "")})
    note = (f"python benchmarks/engine_loops_ab.py: engine_loops.py run alternately, HEAD ({versions[0][0]}) first, "
            f"then {versions[1][0]} (its own worktree, venv and benchmark script), {args.pairs} pairs; each run's "
            f"created_at is its end")
    write_result(args.out, {"benchmark": "engine-loops-ab", "note": note, "runs": runs})


if __name__ == "__main__":
    main()
