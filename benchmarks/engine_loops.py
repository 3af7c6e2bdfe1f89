"""Engine cost per flow event, compiled event loop against the simpy path, and a 10^6-transfer cluster run.

Workload: K workers, each a chain of transfers (`after=` the previous one, so K are in flight), every transfer
between two random GPU/host endpoints with a log-uniform size (64 KiB..256 MiB), fixed seed; topology
latencies as in the presets (no calibration). Cases: the 8-GPU star (`hgx-h200-8`) and `cluster-8x8-rail`,
K = 8, 64, 512, 10^4 transfers each, on both loops (`Simulation.run(loop=...)`); each timing is the minimum of
`--repeat` runs of `run()` (declaring the work is timed apart), because the 2-core VM is shared. Then one run of
10^6 transfers on `cluster-8x8-rail` with 64 in flight on the compiled loop (declare + run, wall).

    python benchmarks/engine_loops.py                 # -> benchmarks/results/engine-loops.json and .png
    python benchmarks/engine_loops.py --quick         # 2,000 transfers, one repeat, no 10^6 run
    python benchmarks/engine_loops.py --million       # only the 10^6 run, printed (declare / run / wall), no files
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from _record import solver_counts, stamp, write_result

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation

RESULTS = Path(__file__).with_name("results")


def declare(topology: str, n_transfers: int, workers: int, seed: int = 1, kinds: tuple[str, ...] = ("gpu", "host"),
            distinct: bool = False) -> tuple[Simulation, float]:
    """The workload above; `kinds`: the endpoints drawn from, `distinct`: never a copy from an endpoint to itself
    (benchmarks/engine_vs_simgrid.py draws GPUs only, two distinct ones)."""
    topo = presets.get(topology, calibration=None)
    endpoints = [e for e in topo.endpoints() if e.split(".")[-1].startswith(kinds)]
    rng = random.Random(seed)
    t0 = time.perf_counter()
    sim = Simulation(topo, record_load=False)
    for w in range(workers):
        prev: list[str] = []
        for i in range(n_transfers // workers + (1 if w < n_transfers % workers else 0)):
            rid = f"w{w}.{i}"
            src, dst = rng.sample(endpoints, 2) if distinct else (rng.choice(endpoints), rng.choice(endpoints))
            sim.transfer(rid, src, dst, int(2 ** rng.uniform(16, 28)), after=prev)
            prev = [rid]
    return sim, time.perf_counter() - t0


def run_case(topology: str, n_transfers: int, workers: int, loop: str, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        sim, declare_s = declare(topology, n_transfers, workers)
        t0 = time.perf_counter()
        res = sim.run(loop=loop)
        run_s = time.perf_counter() - t0
        if best is None or run_s < best["run_s"]:
            best = {"topology": topology, "transfers": n_transfers, "in_flight": workers, "loop": loop,
                    "declare_s": declare_s, "run_s": run_s, "flow_events": res.events,
                    "us_per_event": run_s / res.events * 1e6, "makespan_s": res.makespan_s, "repeats": repeat,
                    "solver": solver_counts(sim)}
    print(f"{topology:17s} K={workers:4d} {loop:8s} {best['us_per_event']:7.2f} us/event  "
          f"(run {best['run_s']:.3f} s, declare {best['declare_s']:.3f} s, {best['flow_events']} events)", flush=True)
    return best


def million() -> dict:
    """10^6 transfers on cluster-8x8-rail, 64 in flight, on the compiled loop: declare + run, wall."""
    t0 = time.perf_counter()
    sim, declare_s = declare("cluster-8x8-rail", 1_000_000, 64)
    res = sim.run(loop="compiled")
    wall = time.perf_counter() - t0
    print(f"10^6 transfers on cluster-8x8-rail, 64 in flight: {wall:.1f} s wall (declare {declare_s:.1f} s, "
          f"run {wall - declare_s:.1f} s, load {os.getloadavg()[0]:.2f})", flush=True)
    return {"topology": "cluster-8x8-rail", "transfers": 1_000_000, "in_flight": 64, "loop": "compiled",
            "declare_s": declare_s, "wall_s": wall, "flow_events": res.events,
            "us_per_event_run": (wall - declare_s) / res.events * 1e6, "makespan_s": res.makespan_s,
            "solver": solver_counts(sim)}


TOPOLOGIES = ("hgx-h200-8", "cluster-8x8-rail")


def plot_per_event(doc: dict, out: Path, title: str, draw: Callable, legend_size: int = 8) -> None:
    """The figure of both engine benchmarks (this one and engine_vs_simgrid.py): a panel per topology, wall us per
    flow event against K, log-log; `draw(ax, topology)` draws a panel's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TOPOLOGIES), figsize=(10, 4), sharey=True)
    for ax, topology in zip(axes, TOPOLOGIES, strict=True):
        draw(ax, topology)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("transfers in flight (K)")
        ax.set_title(topology)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wall us per flow event (min of repeats)")
    axes[0].legend(fontsize=legend_size)
    fig.suptitle(f"{title}, {doc['machine']['cores']}-core {doc['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot(doc: dict, out: Path) -> None:
    def draw(ax, topology: str) -> None:
        for loop, style in (("compiled", "o-"), ("simpy", "s--")):
            rows = [c for c in doc["cases"] if c["topology"] == topology and c["loop"] == loop]
            ax.plot([c["in_flight"] for c in rows], [c["us_per_event"] for c in rows], style, label=f"{loop} loop")
        ax.plot([64, 512], [2, 5], "k*", markersize=10, label="issue 13 targets (2 us @64, 5 us @512)")

    plot_per_event(doc, out, "fabricsim engine, one process", draw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--million", action="store_true", help="only the 10^6-transfer run, printed, nothing written")
    args = ap.parse_args()
    os.environ.setdefault("FABRICSIM_PROGRESS", "0")  # timings, not progress lines
    if args.million:
        Simulation(presets.get("h100-1")).run()  # load the compiled code before timing anything
        million()
        return
    n = 2_000 if args.quick else 10_000
    repeat = 1 if args.quick else args.repeat
    Simulation(presets.get("h100-1")).run()  # load the compiled code before timing anything
    cases = [run_case(topology, n, k, loop, repeat)
             for topology in TOPOLOGIES for k in (8, 64, 512) for loop in ("compiled", "simpy")]
    big = None if args.quick else million()
    doc = {**stamp("engine-loops"),
           "nproc": os.cpu_count(),
           "note": "one process; min of repeats per case; the 2-core VM was shared with other jobs (load below)",
           "cases": cases, "million_transfers": big}
    out = Path(args.out) if args.out else RESULTS / f"engine-loops{'-quick' if args.quick else ''}.json"
    write_result(out, doc)
    plot(doc, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
