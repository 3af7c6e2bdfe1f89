"""What declaring one copy costs: a `Simulation.transfer` call each, against `Simulation.transfers` for all of
them (the same declared items; `tests/test_transfers_bulk.py` checks that).

`--copies` copies between random GPU pairs of `cluster-8x8-rail` (routes built before timing, as in a large sync
where a few thousand routes carry millions of copies), each after one earlier item, with and without a per-copy
setup time; microseconds per copy, the minimum of `--repeat` fresh simulations, the collector off while timing
(as a weight sync holds it off). The ids are made before timing in both cases.

    python benchmarks/declare_bulk.py            # -> benchmarks/results/declare-bulk.json
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from _record import best_wall, stamp, write_result

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "declare-bulk.json"))
    args = ap.parse_args()
    os.environ["FABRICSIM_PROGRESS"] = "0"
    topo = presets.get("cluster-8x8-rail")
    gpus = topo.gpus()
    rng = random.Random(1)
    pairs = [(a, b) for a, b in ((rng.choice(gpus), rng.choice(gpus)) for _ in range(args.copies)) if a != b]
    ids = [f"x{i}" for i in range(len(pairs))]

    def timed(bulk: bool, setup: float) -> float:
        def prepare():
            sim = Simulation(topo, record_load=False)
            sim.warm_routes(pairs)
            for a, b in dict.fromkeys(pairs):  # every route built and kept: only declaring is timed
                sim.transfer(None, a, b, 1.0)
            first = sim.delay("first", 0.0)
            copies = [(i, a, b, 1048576.0, setup, None) for i, (a, b) in zip(ids, pairs, strict=True)]
            def one_by_one() -> None:
                for i, a, b, n, s, _ in copies:
                    sim.transfer(i, a, b, n, after=[first], tag="x", setup_s=s)

            return (lambda: sim.transfers(copies, after=[first], tag="x")) if bulk else one_by_one

        best = best_wall(args.repeat, prepare)
        us = best / len(pairs) * 1e6
        print(f"{'transfers' if bulk else 'transfer ':9s} setup {setup:g} s: {us:5.2f} us per copy", flush=True)
        return us

    cases = {f"{'transfers' if bulk else 'transfer'}{'_setup' if setup else ''}": timed(bulk, setup)
             for setup in (0.0, 1e-6) for bulk in (False, True)}
    write_result(Path(args.out), {
        **stamp("declare-bulk"),
        "topology": topo.name, "copies": len(pairs), "repeats": args.repeat,
        "note": "min of repeats; routes built before timing; the collector off while timing", "us_per_copy": cases})


if __name__ == "__main__":
    main()
