"""`fabricsim simulate FILE [--json] [--perfetto PATH] [--calibration PATH|none]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fabricsim.hwmodels.endpoints import compress_endpoints
from fabricsim.hwmodels.fileio import refuse_overwrite
from fabricsim.hwmodels.intervals import SAMPLES, Interval, sample_count, say_calibration_note

from .collectives import ring_copy_id, ring_fill_id, ring_schedule
from .records import Result
from .scenario import load_scenario
from .units import format_bytes


def _makespan(seconds: float, interval: Interval | None) -> str:
    """'49.4865 ms [37.0265, 66.5633] (90%)', in s from a second on (a 23,902.4339 ms makespan is 23.9024 s); the
    interval, where there is one, on the same line as the value it bounds (its note is the calibration note, said
    on stderr)."""
    scale, unit = (1.0, "s") if seconds >= 1.0 else (1e3, "ms")
    if interval is None:
        return f"{seconds * scale:.4f} {unit}"
    return interval.format(scale=scale, unit=unit, digits=4)


def _table(result: Result, calls: Sequence[dict] = (), interval: Interval | None = None) -> str:
    """The text form of a run; `calls`: the scenario's collective calls (`Scenario.collective_calls`), each shown
    as one row from its first ring copy to its last rank's finish, in place of its zero-length marker;
    `interval`: the makespan's, shown beside it."""
    rows = [f"topology {result.topology}   calibration {result.calibration_id or 'none (datasheet defaults)'}",
            f"{'id':<14} {'src':>10} -> {'dst':<10} {'bytes':>11} {'class':<11} {'start':>11} {'finish':>11} "
            f"{'GB/s*':>8}"]
    for r in result.transfers:
        rows.append(f"{r.id:<14} {r.src:>10} -> {r.dst:<10} {format_bytes(r.bytes):>11} {r.path_class:<11} "
                    f"{r.start_s * 1e3:>9.4f}ms {r.finish_s * 1e3:>9.4f}ms {r.moving_GBps:>8.1f}")
    called = {c["id"] for c in calls}  # and a broadcast's pipeline fills, part of its one row
    called |= {ring_fill_id(ring_copy_id(c["id"], t["id"])) for c in calls if c["op"] == "broadcast"
               for t in ring_schedule(c["op"], c["bytes"], c["gpus"])}
    for r in result.tasks:
        if r.id not in called:
            what = f"{r.kind} on {r.src}" if r.src else r.kind
            rows.append(f"{r.id:<14} {what:>24} {'':>11} {'':<11} {r.start_s * 1e3:>9.4f}ms {r.finish_s * 1e3:>9.4f}ms")
    for c in calls:
        what = f"{c['op']} on {compress_endpoints(c['gpus'], ordered=True)}"  # in ring order
        rows.append(f"{c['id']:<14} {what:>24} {format_bytes(c['bytes']):>11} {'collective':<11} "
                    f"{c['start_s'] * 1e3:>9.4f}ms {c['finish_s'] * 1e3:>9.4f}ms")
    rows.append(f"makespan {_makespan(result.makespan_s, interval)}")
    rows.append("(* GB/s while moving: from its first byte, after any engine-queue wait, latency and fixed cost, "
                "to the finish)")
    busiest = sorted(result.mean_utilisation().items(), key=lambda kv: -kv[1])[:5]
    if busiest:
        rows.append("busiest resources (mean utilisation over the makespan): "
                    + ", ".join(f"{name} {u:.0%}" for name, u in busiest))
    return "\n".join(rows)


def _simulate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.file)
    if args.perfetto:  # before the run: a long simulation must not end in a refusal
        refuse_overwrite(args.perfetto, args.force, "trace", file=True,
                         inputs=(args.file, args.calibration, *scenario.input_files()))
    topo = scenario.load_topology(args.calibration)
    result = scenario.build(topology=topo).run()
    calls = scenario.collective_calls(result)
    unfitted = scenario.unfitted_mechanisms(topo)
    say_calibration_note(topo)
    if unfitted:
        print(f"note: no fit for {', '.join(unfitted)} in {topo.calibration_id or 'this topology'}: those copies "
              "take the pinned copy engine's parameters (likely too fast), and their interval is widened",
              file=sys.stderr)
    interval = (scenario.makespan_interval(args.calibration, args.samples, result.makespan_s, topo) if args.samples
                else None)
    if args.perfetto:
        result.write_trace(args.perfetto)
    if args.json:
        doc = result.to_dict()
        if calls:
            doc["collectives"] = calls  # a documented addition (README)
        if interval is not None:
            doc["makespan_interval_s"] = interval.to_dict()  # a documented addition (README)
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(_table(result, calls, interval))
        if args.perfetto:
            print(f"trace written to {args.perfetto} (open it in https://ui.perfetto.dev)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        description="Simulate the transfers (and tasks) of a scenario file on its topology.",
        epilog="examples:\n  fabricsim simulate examples/h2d_fanout.yaml\n"
               "  fabricsim simulate examples/h2d_fanout.yaml --json\n"
               "  fabricsim simulate scenario.yaml --perfetto trace.json --calibration hwmodels/profiles/h100x1.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="scenario file (format in README)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    p.add_argument("--perfetto", metavar="PATH", help="write a Perfetto/Chrome trace JSON here")
    p.add_argument("--force", action="store_true", help="replace the --perfetto file if it exists")
    p.add_argument("--calibration", metavar="PATH", help="calibration profile: a path, a bundled profile's name "
                   "(h200x2), or 'none' for the datasheet figures (overrides the scenario's)")
    p.add_argument("--samples", type=sample_count, default=SAMPLES, metavar="N",
                   help="perturbed re-runs for the makespan's 90%% interval, 0 for none (default: %(default)s)")
    p.set_defaults(func=_simulate)
