"""What one distinct route costs to build, step by step, on a 1,024-GPU cluster: the pull-on-publish sync's
262,144 (trainer, rollout) pairs each build their own route, and that is most of its wall time.

For `--pairs` distinct (trainer GPU, rollout GPU) pairs of the `cluster_scale` layout on `cluster-128x8-h200`
(half the nodes train, half serve), each step timed over all pairs with fresh caches (microseconds per route):
the compiled shortest-path search (`RouteIndex.shortest`: the search, its call and the node names),
`Topology._build_path` (search + hops, path class, resources, caps, latency: every route's cost before route
templates), `Topology._renamed` (the same entry renamed from the route of a representative pair of machines,
`hwmodels.symmetry`; the representatives' own routes are searched and built within the timing),
`Topology.path_shape` (renamed where it can be, + the `PathShape`), and `Simulation`'s kept shape (its own tuple,
no `Path`, + the route number), the per-route cost a `transfer` pays the first time it sees a pair; last, that
shape with the pairs warmed 512 at a time first (`Simulation.warm_routes`), as a pull-on-publish read does.
Routes are renamed from the first pair on (`Topology.rename_after_searches_per_node` = 0; a sync searches four
routes per graph node first, ~15,600 of its 262,144).

    python benchmarks/route_build.py            # -> benchmarks/results/route-build.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _record import best_wall, stamp, write_result

from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore import Simulation
from fabricsim.workloads.weightsync.cluster_layout import setup_of

RESULTS = Path(__file__).with_name("results")
BATCH = 512  # pairs warmed together (`Simulation.warm_routes`): one reader's trainers at 1,024 GPUs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32768)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "route-build.json"))
    args = ap.parse_args()
    Topology.rename_after_searches_per_node = 0
    setup = setup_of({"model": "DeepSeek-V3", "gpus": 1024})
    topo = setup.topology
    trainers, rollouts = setup.trainer.gpus, setup.rollout.gpus
    per = max(1, args.pairs // len(trainers))
    pairs = [(t, r) for t in trainers for r in rollouts[:per]][:args.pairs]
    topo.path_shape(pairs[0][0], pairs[0][1])  # build the route index and load the compiled search first

    def timed(step: str) -> float:
        def prepare():
            topo._changed()  # no cached path, hop or index: every pair is new
            topo.path_shape(*pairs[-1])
            route = topo._index().route
            sim = Simulation(topo, record_load=False)
            fn = {"search": route.shortest, "build_path": topo._build_path, "renamed": topo._renamed,
                  "path_shape": topo.path_shape}.get(
                step, lambda a, b, sim=sim: sim._shape("t", a, b, "ce"))  # the simulation's shape, warmed or not

            def work() -> None:
                if step == "batched_simulation_shape":  # as a pull-on-publish read: warm a reader's pairs, then ask
                    for k in range(0, len(pairs), BATCH):
                        sim.warm_routes(pairs[k:k + BATCH])
                        for a, b in pairs[k:k + BATCH]:
                            fn(a, b)
                else:
                    for a, b in pairs:
                        fn(a, b)
            return work

        best = best_wall(args.repeat, prepare)
        us = best / len(pairs) * 1e6
        print(f"{step:18s} {us:6.2f} us per route", flush=True)
        return us

    steps = {s: timed(s) for s in ("search", "build_path", "renamed", "path_shape", "simulation_shape",
                                   "batched_simulation_shape")}
    write_result(Path(args.out), {
        **stamp("route-build"),
        "topology": topo.name, "pairs": len(pairs), "repeats": args.repeat,
        "note": "min of repeats; fresh caches each repeat; the collector off while timing", "us_per_route": steps})


if __name__ == "__main__":
    main()
