"""Weight-sync wall time against cluster size: every strategy, three large MoE models, 8 ... 1,024 GPUs.

Each point is one weight sync in a fresh process (so a point that runs away can be stopped), placed as in the
`cluster_scale` study (`studies/cluster_scale.py`: half the GPUs train in bf16, half serve fp8 in
expert-parallel engines of TP 8 or 16, on `cluster-Nx8-h200`). Recorded per point:
the simulation's own wall time (`simulate_sync`, measured inside the child), the child's whole wall time
(imports included), the simulated sync time, flow events, and whether the configuration is feasible (an
infeasible answer — CUDA IPC across nodes, weights that do not fit — is an answer, and costs little).
A point slower than `--timeout` seconds is recorded as a timeout and the larger sizes of that (model,
strategy) are skipped.

    python benchmarks/sync_scale.py            # -> benchmarks/results/sync-scale.json and .png
    python benchmarks/sync_scale.py --quick    # one model, up to 64 GPUs
    python benchmarks/sync_scale.py --replot benchmarks/results/sync-scale.json   # plot a (partial) run
    python benchmarks/sync_scale.py --strategies rdma-p2p --knob max_sim_tasks=1 --out ...  # a knob on every point
    python benchmarks/sync_scale.py --strategies shared-pool:pull-on-publish --nodes 64 128 256 --out ...  # 2,048 GPUs
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _record import stamp, write_result

from fabricsim.harness.sweep import _die_with_parent  # a point's process ends with this one, however it ends

RESULTS = Path(__file__).with_name("results")
MODELS = ["Qwen3-235B-A22B", "DeepSeek-V3", "Kimi-K2"]
STRATEGIES = ["nccl-broadcast", "cuda-ipc-buckets", "host-staged", "rdma-p2p", "shared-pool:zero-copy",
              "shared-pool:pull-on-publish", "shared-pool:relay", "delta:rdma-p2p"]
NODES = [1, 2, 4, 8, 16, 32, 64, 128]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[5])
from _record import solver_counts
from fabricsim.simcore import Simulation
from fabricsim.workloads.weightsync import base
from fabricsim.workloads.weightsync.cluster_layout import setup_of
from fabricsim.workloads.weightsync import get, simulate_sync
counts = []
class Counted(Simulation):  # the sync's simulation, its solver counters noted after its run (the simulation
    def run(self, *a, **kw):  # itself is not kept: it is freed where it always was, inside the timed sync)
        try:
            return super().run(*a, **kw)
        finally:
            counts.append(solver_counts(self))
base.Simulation = Counted
point = {"model": sys.argv[1], "strategy": sys.argv[2], "gpus": int(sys.argv[3])}
knobs = json.loads(sys.argv[4])
t0 = time.perf_counter()
res = simulate_sync(setup_of(point), get(point["strategy"], **knobs))
wall = time.perf_counter() - t0
m = res.metrics()
print(json.dumps({"sim_wall_s": wall, "feasible": res.feasible, "reason": res.reason,
                  "sync_s": m.get("sync_s"), "flow_events": m.get("flow_events"),
                  "solver": counts[-1] if counts and res.feasible else None,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_point(model: str, strategy: str, nodes: int, timeout: float, env: dict[str, str] | None = None,
              knobs: dict | None = None, python: str = sys.executable, bench_dir: Path | None = None) -> dict:
    """One point in a fresh process (`env`: extra environment variables for it; `knobs`: the strategy's), of
    `python` with the benchmarks of `bench_dir` (default: this interpreter, this checkout's: another checkout
    for `sync_scale_ab.py`)."""
    row = {"model": model, "strategy": strategy, "nodes": nodes, "gpus": 8 * nodes}
    t0 = time.perf_counter()
    env = dict(os.environ, FABRICSIM_PROGRESS="0", **(env or {}))
    bench_dir = bench_dir or Path(__file__).parent
    try:
        out = subprocess.run([python, "-c", CHILD, model, strategy, str(8 * nodes), json.dumps(knobs or {}),
                              str(bench_dir)], cwd=bench_dir,
                             capture_output=True,
                             text=True, timeout=timeout, env=env,
                             preexec_fn=functools.partial(_die_with_parent, os.getpid(), None))
    except subprocess.TimeoutExpired:
        row.update(status="timeout", process_wall_s=time.perf_counter() - t0)
        return row
    row["process_wall_s"] = time.perf_counter() - t0
    if out.returncode != 0:
        row.update(status="error", error=(out.stderr.strip().splitlines() or ["?"])[-1])
        return row
    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    row["status"] = "ok" if row["feasible"] else "infeasible"
    return row


def plot(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in doc["points"]}, key=MODELS.index)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for strategy in STRATEGIES:
            rows = [r for r in doc["points"] if r["model"] == model and r["strategy"] == strategy]
            done = [r for r in rows if r["status"] in ("ok", "infeasible")]
            if not done:
                continue
            line, = ax.plot([r["gpus"] for r in done], [r["sim_wall_s"] for r in done], "o-", label=strategy,
                            markersize=4)
            for r in done:
                if r["status"] == "infeasible":
                    ax.plot(r["gpus"], r["sim_wall_s"], "x", color=line.get_color(), markersize=7)
            nudge = 2 ** (0.07 * (STRATEGIES.index(strategy) - len(STRATEGIES) // 2))  # side by side, not stacked
            for r in rows:
                if r["status"] == "timeout":
                    ax.plot(r["gpus"] * nudge, doc["timeout_s"], "^", color=line.get_color(), markersize=8)
        ax.axhline(10, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("GPUs (half train, half serve)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("simulation wall time, s (x: infeasible answer, ^: timeout)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"fabricsim sync wall time vs cluster size ({doc['machine']['cores']}-core {doc['machine']['cpu']})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per point (default 60)")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--strategies", nargs="*", default=None)
    ap.add_argument("--max-gpus", type=int, default=None, help="largest cluster size to run")
    ap.add_argument("--nodes", type=int, nargs="*", default=None,
                    help=f"cluster sizes in 8-GPU nodes (default {' '.join(map(str, NODES))}; larger too: 256)")
    ap.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                    help="a strategy knob for every point (repeat), e.g. max_sim_tasks=1 for rdma-p2p")
    ap.add_argument("--out", default=None)
    ap.add_argument("--replot", metavar="JSON", help="only draw the plot of an earlier (maybe partial) run")
    args = ap.parse_args()
    if any("=" not in kv for kv in args.knob):
        ap.error("--knob takes KEY=VALUE")
    if args.max_gpus is not None and args.max_gpus < 8:
        ap.error(f"--max-gpus must be at least 8 (one node), got {args.max_gpus}")
    if args.nodes is not None and (not args.nodes or min(args.nodes) < 1):
        ap.error(f"--nodes takes node counts of at least 1, got {args.nodes}")
    knobs = dict(kv.split("=", 1) for kv in args.knob)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix(".png"))
        return
    models = args.models or (MODELS[:1] if args.quick else MODELS)
    strategies = args.strategies or STRATEGIES
    nodes_list = sorted(args.nodes) if args.nodes else [n for n in NODES if n <= 8] if args.quick else NODES
    if args.max_gpus is not None:
        nodes_list = [n for n in nodes_list if 8 * n <= args.max_gpus]
    out = Path(args.out) if args.out else RESULTS / f"sync-scale{'-quick' if args.quick else ''}.json"
    doc = {**stamp("sync-scale"),
           "timeout_s": args.timeout, "complete": False,
           "note": "one point at a time, each in a fresh process; the 2-core VM was shared with other jobs",
           "knobs": knobs, "points": []}
    for model in models:
        for strategy in strategies:
            stop = None
            for nodes in nodes_list:
                if stop is not None:
                    row = {"model": model, "strategy": strategy, "nodes": nodes, "gpus": 8 * nodes,
                           "status": "skipped", "reason": f"{stop} GPUs timed out"}
                else:
                    row = run_point(model, strategy, nodes, args.timeout, knobs=knobs)
                    print(f"{model:16s} {strategy:28s} {row['gpus']:5d} GPUs  {row['status']:10s} "
                          f"sim {row.get('sim_wall_s', float('nan')):7.2f} s  process {row['process_wall_s']:6.2f} s"
                          f"  sync {row.get('sync_s') or float('nan'):7.3f} s", flush=True)
                    if row["status"] == "timeout":
                        stop = row["gpus"]
                doc["points"].append(row)
                doc["load_average_1m_at_end"] = os.getloadavg()[0]
                write_result(out, doc)  # after every point: an interrupted run keeps what it measured
    doc["complete"] = True
    write_result(out, doc)
    plot(doc, out.with_suffix(".png"))

if __name__ == "__main__":
    main()
