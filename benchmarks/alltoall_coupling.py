"""How far one departure reaches in a rotated all-to-all: the flows whose max-min rate changes when one flow
ends. What an exact engine must re-rate per event of `rdma-p2p`, whatever its algorithm.

The bare pattern of `rdma-p2p`'s write stage: N senders and N receivers, each behind one NIC of capacity 1 (a
sender's NIC carries what it sends, a receiver's what it receives); each sender keeps `--lanes` writes in flight,
lane l at a random step s of its rotated schedule writing to receiver (i + l + lanes * s) mod N, as the lanes of
a static schedule drift apart when copy sizes differ. For each N: the max-min rates of all N * lanes flows
(`fluid.max_min_rates`, the engine's own solver), then for `--samples` random flows the rates again without
that flow, counting the flows whose rate moved (relative change > 1e-12). Deterministic (seeded): any machine
gives the same numbers.

An exact flow-level simulation must re-rate at least the flows whose rate changed, at every departure (and, in
reverse, every arrival). Were that a fixed share of the N * lanes flows in flight, each event would cost O(N)
and a sync, with O(N^2) copies, O(N^3); a fixed number keeps an event's work flat and a sync at O(N^2). The
record says which: from N = 128 per side on, the median is a few hundred flows whatever N (a falling share).

    python benchmarks/alltoall_coupling.py       # -> benchmarks/results/alltoall-coupling.json
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from _record import stamp, write_result

from fabricsim.simcore.fluid import Flow, max_min_rates

RESULTS = Path(__file__).with_name("results")


def flows_of(n: int, lanes: int, rng: random.Random) -> list[tuple[int, int]]:
    """(sender NIC, receiver NIC) of each flow in flight: resources 0..n-1 send, n..2n-1 receive."""
    steps = max(1, n // lanes)
    return [(i, n + (i + lane + lanes * rng.randrange(steps)) % n) for i in range(n) for lane in range(lanes)]


def rates(pairs: list[tuple[int, int]], n: int) -> list[float]:
    flows = [Flow(k, [a, b], [1.0, 1.0], 1.0) for k, (a, b) in enumerate(pairs)]
    return max_min_rates(flows, [1.0] * (2 * n))[0]


def reach(n: int, lanes: int, samples: int, seed: int) -> dict:
    rng = random.Random(seed)
    pairs = flows_of(n, lanes, rng)
    base = rates(pairs, n)
    shares = []
    for k in rng.sample(range(len(pairs)), samples):
        after = rates(pairs[:k] + pairs[k + 1:], n)
        before = base[:k] + base[k + 1:]
        moved = sum(1 for x, y in zip(before, after, strict=True) if abs(x - y) > 1e-12 * x)
        shares.append(moved / len(before))
    return {"gpus_per_side": n, "flows_in_flight": len(pairs), "distinct_rates": len({round(r, 12) for r in base}),
            "moved_flows_median": statistics.median(shares) * (len(pairs) - 1),
            "moved_share_median": statistics.median(shares), "moved_share_mean": statistics.fmean(shares),
            "moved_share_min": min(shares), "moved_share_max": max(shares), "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128, 256, 512])
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "alltoall-coupling.json"))
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        row = reach(n, args.lanes, args.samples, args.seed)
        rows.append(row)
        print(f"N = {n:4d} per side, {row['flows_in_flight']:6d} flows: a departure moves the rates of "
              f"{100 * row['moved_share_median']:.1f}% (median; {100 * row['moved_share_min']:.1f}-"
              f"{100 * row['moved_share_max']:.1f}%): {row['moved_flows_median']:.0f} flows; "
              f"{row['distinct_rates']} distinct rates", flush=True)
    write_result(Path(args.out), {
        **stamp("alltoall-coupling"),
        "lanes": args.lanes, "seed": args.seed,
        "note": "structural (seeded, machine-independent): share of flows whose max-min rate changes when one "
                "flow of a rotated all-to-all ends", "rows": rows})


if __name__ == "__main__":
    main()
