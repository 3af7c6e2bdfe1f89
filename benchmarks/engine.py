"""Engine throughput: flow arrivals + departures per second, and wall time, for two standard workloads.

(a) 10^4 transfers on hgx-h200-8 with 64 workers each keeping one transfer in flight (so up to 64 active);
(b) 10^5 transfers on a 64-GPU cluster (8 nodes x 8, rail-optimised) with 64 workers;
(scaling) 2,000 transfers on hgx-h200-8 with 8, 16, 32, 64 and 128 in flight: microseconds per event against
the number of active flows, to check that cost grows no faster than events x active flows.
Each worker picks a random source and destination among the endpoints and a log-uniform size (64 KiB..256 MiB)
with a fixed seed, so every run simulates the same thing. Results go to
benchmarks/results/engine-full.json (or engine-quick.json).

    python benchmarks/engine.py            # both cases
    python benchmarks/engine.py --quick    # (a) only, 2,000 transfers
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from _record import stamp, write_result

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation


def workload(sim: Simulation, endpoints: list[str], n_transfers: int, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    per_worker = [n_transfers // workers + (1 if w < n_transfers % workers else 0) for w in range(workers)]

    def worker(w: int, count: int):
        for i in range(count):
            src, dst = rng.choice(endpoints), rng.choice(endpoints)
            size = int(2 ** rng.uniform(16, 28))
            yield sim.transfer(f"w{w}.{i}", src, dst, size, tag="bench")

    for w, count in enumerate(per_worker):
        sim.process(worker(w, count))


def run_case(name: str, topology: str, n_transfers: int, workers: int = 64, seed: int = 1) -> dict:
    topo = presets.get(topology, calibration=None)
    endpoints = [e for e in topo.endpoints() if e.split(".")[-1].startswith(("gpu", "host"))]
    sim = Simulation(topo, record_load=False)
    workload(sim, endpoints, n_transfers, workers, seed)
    t0 = time.perf_counter()
    res = sim.run()
    wall = time.perf_counter() - t0
    events = res.events
    print(f"{name}: {n_transfers} transfers on {topology}, {workers} in flight: {wall:.2f} s wall, "
          f"{events} flow events, {events / wall:,.0f} events/s, simulated makespan {res.makespan_s:.3f} s")
    return {"case": name, "topology": topology, "transfers": n_transfers, "max_active": workers,
            "wall_s": wall, "flow_events": events, "events_per_s": events / wall, "makespan_s": res.makespan_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = [run_case("a", "hgx-h200-8", 2_000 if args.quick else 10_000)]
    if not args.quick:
        cases.append(run_case("b", "cluster-8x8-rail", 100_000))
        for workers in (8, 16, 32, 64, 128):
            c = run_case(f"scaling-{workers}", "hgx-h200-8", 2_000, workers=workers)
            c["us_per_event"] = c["wall_s"] / c["flow_events"] * 1e6
            c["us_per_event_per_active_flow"] = c["us_per_event"] / workers
            cases.append(c)
    doc = {
        **stamp("engine"),
        "note": "single process, one core; other work shared the machine (see load average)",
        "cases": cases,
    }
    out = Path(args.out or Path(__file__).with_name("results") / f"engine-{'quick' if args.quick else 'full'}.json")
    write_result(out, doc)


if __name__ == "__main__":
    main()
