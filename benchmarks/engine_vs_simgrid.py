"""fabricsim's compiled loop against SimGrid's max-min core, on the same flows: time per flow event, and how far
apart the two engines' finish times are.

Why: issue 13 sets the engine's speed targets as "faster than SimGrid's C++ core at every K", from a comparison
on the 8-GPU star only. This runs both engines on the star and on `cluster-8x8-rail`, on one machine, alternating.

Workload: engine_loops.py's (K chains of 10^4 transfers in all, log-uniform sizes, fixed seed, no calibration),
drawn between two distinct GPUs, every transfer with one latency (`LATENCIES`). GPUs only: SimGrid routes run
between hosts, and fabricsim stripes a host's copies to another machine over equal routes at fractional
coefficients, which a SimGrid route cannot carry. Every declared transfer's route becomes a SimGrid route over
links of the same capacities (a coefficient of 2 is the link listed twice; `simgrid/maxmin_bench.cpp`), on
SimGrid's "raw" network model (no correction factors, TCP window or cross traffic), with the transfers as
activities with dependencies (no actors), in both of its update modes (Lazy, its default, and Full).

Timed: `Simulation.run(loop="compiled")` and SimGrid's `Engine::run`, each the least of `--repeat` runs, declaring
and platform building apart; flow events are the same count for both (two per transfer). Compared: every
transfer's finish time, against fabricsim's own change when one transfer carries one byte more (`one_byte_more`:
long runs of dependent transfers amplify rounding, so exact engines part beyond some point).

SimGrid is not a dependency of fabricsim: build it once from its source release and pass its install prefix.

    # SimGrid 4.1 (its source release; Boost headers needed), as measured here:
    #   cmake SRC -DCMAKE_BUILD_TYPE=Release -Denable_smpi=OFF -Denable_model-checking=OFF -Denable_python=OFF \\
    #         -Denable_documentation=OFF -DBoost_INCLUDE_DIR=BOOST -DCMAKE_INSTALL_PREFIX=PREFIX && make install
    python benchmarks/engine_vs_simgrid.py --simgrid PREFIX --boost BOOST   # -> results/engine-vs-simgrid.json
    python benchmarks/engine_vs_simgrid.py --simgrid PREFIX --quick         # 2,000 transfers, one repeat, no file
    python benchmarks/engine_vs_simgrid.py --replot benchmarks/results/engine-vs-simgrid.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _record import stamp, write_result
from engine_loops import TOPOLOGIES, declare, plot_per_event

from fabricsim.simcore import Simulation
from fabricsim.simcore.lowering import Work

RESULTS = Path(__file__).with_name("results")
DRIVER = Path(__file__).with_name("simgrid") / "maxmin_bench.cpp"
# precision/timing: SimGrid rounds event times to 1e-9 s by default, which parts finish times of microsecond
# transfers (cluster-8x8-rail at K = 512: 2e-5 apart with the default, every one within 2e-13 with 1e-15)
SIMGRID_CFG = ["--cfg=network/model:raw", "--cfg=precision/timing:1e-15", "--log=root.thres:critical"]
# Every transfer gets one latency: SimGrid's CM02 weights a flow's share by its route's latency (TCP's RTT
# unfairness, even in the "raw" model: a flow's sharing penalty is its latency), so only a latency common to all
# flows keeps its sharing plain max-min. The star's own latency (its NVLink hop), and none (as issue 13 ran it).
LATENCIES = (2.5e-6, 0.0)


def build_driver(prefix: Path, boost: Path | None, workdir: Path) -> Path:
    """Compile the SimGrid driver against the SimGrid installed at `prefix`."""
    exe = workdir / "maxmin_bench"
    cmd = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", f"-I{prefix / 'include'}", str(DRIVER),
           f"-L{prefix / 'lib'}", "-lsimgrid", f"-Wl,-rpath,{prefix / 'lib'}", "-o", str(exe)]
    if boost is not None:
        cmd.insert(3, f"-I{boost}")
    subprocess.run(cmd, check=True)
    return exe


def export(sim, path: Path) -> int:
    """Write the simulation's declared transfers as the driver's input (see maxmin_bench.cpp); returns their
    number. Refuses what a SimGrid route cannot carry (a fractional coefficient, a rate cap, a copy engine)."""
    work = map(Work._make, sim._deferred)  # the declared items, before the run lowers them
    hosts: dict[str, int] = {}
    links: dict[int, int] = {}
    pairs: dict[tuple[str, str], tuple[int, int, float]] = {}  # -> (pair number, route number, latency)
    lines_routes, lines_items = [], []
    for n, w in enumerate(work):
        start, latency, route, nbytes, weight, cap, engine = w[:7]
        kind, psrc, pdst, deps = w.kind, w.src, w.dst, w.deps
        if kind != "transfer" or cap is not None or engine is not None or weight != 1.0 or start != 0.0:
            raise ValueError(f"item {n}: only uncapped, unqueued transfers of weight 1 carry over to SimGrid")
        if len(deps) > 1:
            raise ValueError(f"item {n}: waits for {len(deps)} items; the driver takes one predecessor")
        key = (psrc, pdst)
        got = pairs.get(key)
        if got is None:
            a, b = sim._routes.off[route], sim._routes.off[route + 1]
            listed = []
            for res, coef in zip(sim._routes.res[a:b], sim._routes.coef[a:b], strict=True):
                if coef != int(coef) or coef < 1:
                    raise ValueError(f"route {psrc} -> {pdst}: coefficient {coef} on a link is not a whole count")
                listed += [links.setdefault(res, len(links))] * int(coef)
            for h in key:
                hosts.setdefault(h, len(hosts))
            got = pairs[key] = (len(pairs), route, latency)
            lines_routes.append(f"{hosts[psrc]} {hosts[pdst]} {latency!r} {len(listed)} {' '.join(map(str, listed))}")
        elif got[1:] != (route, latency):
            raise ValueError(f"{psrc} -> {pdst}: two routes or latencies for one pair")
        lines_items.append(f"{got[0]} {nbytes!r} {deps[0] if deps else -1}")
    cap_of = sim.net.capacity
    text = [str(len(hosts)), *hosts, str(len(links)), *(repr(float(cap_of[r])) for r in links),
            str(len(lines_routes)), *lines_routes, str(len(lines_items)), *lines_items]
    path.write_text("\n".join(text) + "\n")
    return len(lines_items)


def run_simgrid(exe: Path, inp: Path, out: Path, optim: str, repeat: int) -> tuple[float, list[float]]:
    """The least wall time of `repeat` runs of SimGrid's engine in update mode `optim` (Lazy, its default, or
    Full), and the finish times (of the last run)."""
    best = float("inf")
    finish: list[float] = []
    for _ in range(repeat):
        subprocess.run([str(exe), str(inp), str(out), *SIMGRID_CFG, f"--cfg=network/optim:{optim}"], check=True)
        vals = [float(x) for x in out.read_text().split()]
        best, finish = min(best, vals[0]), vals[1:]
    return best, finish


def workload(topology: str, n: int, k: int, latency_s: float) -> Simulation:
    """The declared workload, every transfer's latency set to `latency_s` (see LATENCIES)."""
    sim, _ = declare(topology, n, k, kinds=("gpu",), distinct=True)
    sim._deferred[:] = [tuple(Work._make(w)._replace(latency=latency_s)) for w in sim._deferred]
    return sim


def run_fabricsim(topology: str, n: int, k: int, latency: float, repeat: int) -> tuple[float, int, list[float]]:
    """The least wall time of `repeat` compiled runs (declaring apart), the flow events, and the finish times."""
    best, events, finish = float("inf"), 0, []
    for _ in range(repeat):
        sim = workload(topology, n, k, latency)
        t0 = time.perf_counter()
        res = sim.run(loop="compiled")
        wall = time.perf_counter() - t0
        best, events, finish = min(best, wall), res.events, res.records.finish_times()
    return best, events, finish


def one_byte_more(topology: str, n: int, k: int, latency: float, finish: list[float]) -> float:
    """fabricsim's own sensitivity: the largest relative change of a finish time when the first transfer carries one
    byte more. Over thousands of dependent transfers a fluid max-min run amplifies a difference in the last bits
    (an event a hair earlier re-rates others, whose successors start earlier, ...): two exact engines that round
    differently part as far as one engine does from itself on a byte's change, which is the yardstick here."""
    sim = workload(topology, n, k, latency)
    w = Work._make(sim._deferred[0])
    sim._deferred[0] = tuple(w._replace(nbytes=w.nbytes + 1.0))
    other = sim.run(loop="compiled").records.finish_times()
    return max(abs(a - b) / b for a, b in zip(other, finish, strict=True))


def agreement(ours: list[float], theirs: list[float]) -> dict:
    """How two runs' finish times agree: the largest relative difference, the share of transfers within 1e-9, and
    how far into the run (a fraction of the makespan) the first transfer that is not within 1e-9 ends."""
    rel = [abs(a - b) / b for a, b in zip(ours, theirs, strict=True)]
    apart = [a for a, r in zip(ours, rel, strict=True) if r > 1e-9]
    return {"max_rel_finish_diff": max(rel), "within_1e-9": sum(r <= 1e-9 for r in rel) / len(rel),
            "first_apart_at": min(apart) / max(ours) if apart else None}


def case(exe: Path, tmp: Path, topology: str, n: int, k: int, latency: float, repeat: int) -> dict:
    inp, out = tmp / "case.in", tmp / "case.out"
    export(workload(topology, n, k, latency), inp)
    fab_s, events, fab_finish = run_fabricsim(topology, n, k, latency, repeat)
    row = {"topology": topology, "transfers": n, "in_flight": k, "latency_s": latency, "flow_events": events,
           "repeats": repeat, "makespan_s": max(fab_finish), "fabricsim_run_s": fab_s,
           "fabricsim_us_per_event": fab_s / events * 1e6,
           "fabricsim_one_byte_more_max_rel_change": one_byte_more(topology, n, k, latency, fab_finish)}
    line = f"{topology:17s} K={k:4d} {latency * 1e6:3g} us  fabricsim {row['fabricsim_us_per_event']:6.2f}"
    for optim in ("Lazy", "Full"):
        sg_s, sg_finish = run_simgrid(exe, inp, out, optim, repeat)
        key = f"simgrid_{optim.lower()}"
        agree = agreement(fab_finish, sg_finish)
        row |= {f"{key}_run_s": sg_s, f"{key}_us_per_event": sg_s / events * 1e6,
                **{f"{key}_{name}": v for name, v in agree.items()}}
        line += f"  SimGrid {optim} {sg_s / events * 1e6:6.2f} (max diff {agree['max_rel_finish_diff']:.0e})"
    print(f"{line}  us/event; one byte more moves fabricsim by {row['fabricsim_one_byte_more_max_rel_change']:.0e}",
          flush=True)
    return row


def plot(doc: dict, out: Path) -> None:
    """Wall us per flow event against K: fabricsim and SimGrid's two update modes, per topology and latency."""
    def draw(ax, topology: str) -> None:
        for latency, dash in zip(LATENCIES, ("-", ":"), strict=True):
            rows = [c for c in doc["cases"] if c["topology"] == topology and c["latency_s"] == latency]
            ks = [c["in_flight"] for c in rows]
            for key, name, mark, color in (("fabricsim", "fabricsim (compiled loop)", "o", "C0"),
                                           ("simgrid_full", "SimGrid Full", "s", "C1"),
                                           ("simgrid_lazy", "SimGrid Lazy", "^", "C2")):
                ax.plot(ks, [c[f"{key}_us_per_event"] for c in rows], mark + dash, color=color,
                        label=f"{name}, latency {latency * 1e6:g} us")

    plot_per_event(doc, out, "fabricsim against SimGrid 4.1's max-min", draw, legend_size=7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simgrid", type=Path, help="SimGrid's install prefix (include/, lib/)")
    ap.add_argument("--boost", type=Path, help="Boost's include directory, where SimGrid's headers need it")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 transfers, one repeat, nothing written")
    ap.add_argument("--out", type=Path, default=RESULTS / "engine-vs-simgrid.json")
    ap.add_argument("--replot", type=Path, help="only draw the plot of a results file")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    if args.simgrid is None:
        ap.error("--simgrid PREFIX is needed (SimGrid's install prefix), unless --replot")
    n, repeat = (2000, 1) if args.quick else (10_000, args.repeat)
    tmp = Path(tempfile.mkdtemp(prefix="engine-vs-simgrid-"))
    try:
        exe = build_driver(args.simgrid, args.boost, tmp)
        version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        rows = [case(exe, tmp, topo, n, k, latency, repeat) for latency in LATENCIES
                for topo in TOPOLOGIES for k in (8, 64, 512)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.quick:
        doc = {**stamp("engine-vs-simgrid"), "nproc": os.cpu_count(), "simgrid": version,
               "simgrid_cfg": SIMGRID_CFG,
               "note": "one process each, alternating per case; least of the repeats; the 2-core VM may be shared "
                       "(load below)",
               "cases": rows}
        write_result(args.out, doc)
        plot(doc, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
