"""`fabricsim validate | calibrate | report`: measure real GPUs, fit a profile, compare the simulator with them.

Imports are lazy: `validate` must run on the GPU image, which has torch but not simpy, so only the
measuring modules load for it; `calibrate` and `report` (CPU side) load the simulator.
"""

from __future__ import annotations

import argparse
import math
import sys


def _seconds(text: str) -> float:
    """`--budget-s` (argparse type): a finite number of seconds > 0."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not 0 < x < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return x


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate",
                              description="Measure copy, P2P, concurrency, NCCL and CUDA IPC timings on the GPUs "
                                          "of this machine (methodology: docs/validation.md) into one output folder.")
    p.add_argument("--suite", choices=("quick", "full", "workloads"), default="full",
                   help="copy/NCCL/IPC cases (quick, full) or weight-sync strategies and KV policies end to end "
                        "(workloads; docs/validation.md)")
    p.add_argument("--out", default="validate-out", help="output folder (must not exist or be empty)")
    p.add_argument("--kind", default="", help="machine kind label recorded with the results")
    p.add_argument("--budget-s", type=_seconds, default=None,
                   help="stop starting new cases after this many seconds (skipped cases are listed)")
    p.add_argument("--only", action="append", default=[],
                   help="workloads suite: run only cases whose id starts with this (repeatable)")
    p.set_defaults(func=_cmd_validate)

    c = subparsers.add_parser("calibrate",
                              description="Fit latency, bandwidth, size efficiency, shared caps and engine "
                                          "discipline per path class from the calibration subset of MEASURED.")
    c.add_argument("measured", nargs="+",
                   help="measured.json or a validate output folder; also nccl-tests output (all_reduce_perf, "
                        "all_gather_perf, broadcast_perf), nvbandwidth output and the concurrent-copies JSON; several "
                        "files of one machine are fitted together; or one workload suite folder (workloads.json)")
    c.add_argument("profile", help="profile file to write (JSON); for a workload measurement, the existing profile "
                                   "whose software_costs the fit updates")
    c.add_argument("--force", action="store_true", help="replace the profile file if it exists")
    c.add_argument("--id", default=None, help="profile id (default: derived from the machine and date)")
    c.add_argument("--split", choices=("current", "file"), default=None,
                   help="which calibration/held-out split: today's case list (default) or the one in the file; "
                        "recorded in the profile, and `report` judges with it (a workload measurement always uses "
                        "its file's)")
    c.add_argument("--base", default=None, metavar="PROFILE",
                   help="derive from this profile (a bundled name such as h200x2, or a file): what MEASURED covers is "
                        "refitted, the rest kept (e.g. after `validate --suite quick` on a new machine)")
    c.add_argument("--note", default=None, help="a sentence recorded in the profile's provenance (what it rests on)")
    c.set_defaults(func=_cmd_calibrate)

    r = subparsers.add_parser("report",
                              description="Simulate every measured case with PROFILE, write error tables "
                                          "(calibration vs held-out), a predicted-vs-measured plot, and store "
                                          "measured and simulated rows in the results store.")
    r.add_argument("measured", help="measured.json, a validate output folder or another format calibrate reads")
    r.add_argument("--profile", default=None, help="profile (default: the preset's bundled profile)")
    r.add_argument("--out", default=None, help="report folder (default: beside the measurements)")
    r.add_argument("--store", default=None, help="results store folder (default: $FABRICSIM_STORE or ./results)")
    r.add_argument("--no-store", action="store_true", help="do not write rows to the results store")
    r.add_argument("--force", action="store_true", help="replace the report folder if it exists")
    r.add_argument("--split", choices=("current", "file"), default=None,
                   help="which calibration/held-out split: today's case list or the one in the file (default: the "
                        "one the profile was fitted with; one that would count a case the profile was fitted on as "
                        "held out is refused)")
    r.set_defaults(func=_cmd_report)


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.suite == "workloads":
        from fabricsim.validate.gpu.workloads import run_workloads

        out = run_workloads(args.out, kind=args.kind, budget_s=args.budget_s, only=tuple(args.only))
    else:
        from fabricsim.validate.gpu.measure import run_validate

        out = run_validate(args.out, args.suite, kind=args.kind, budget_s=args.budget_s)
    if out is None:
        print("fabricsim validate: no CUDA GPU visible (torch missing or no device): nothing to do")
        return 0
    print(f"measurements written to {out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from fabricsim.hwmodels.fileio import refuse_overwrite
    from fabricsim.validate.workloads_file import is_workload_file

    workload = [m for m in args.measured if is_workload_file(m)]
    if workload:  # the workload suite: software costs added to an existing profile
        from fabricsim.validate.errors import MeasurementError
        from fabricsim.validate.fit.workloads_report import calibrate_workloads

        if len(args.measured) > 1:
            raise MeasurementError(f"{workload[0]}: a workload measurement is fitted alone (its software costs go "
                                   "into an existing profile); give it without other files")
        if args.split is not None:  # said, not ignored: the fit would not follow it
            raise MeasurementError(f"{workload[0]}: --split does not apply to a workload measurement (its calibration "
                                   "cases are the ones its file records); leave it out")
        print(calibrate_workloads(args.measured[0], args.profile))
        return 0
    from fabricsim.validate.fit.calibrate import calibrate_file

    refuse_overwrite(args.profile, args.force, "profile", inputs=args.measured)
    profile = calibrate_file(args.measured, args.profile, profile_id=args.id, split=args.split or "current",
                             base=args.base, note=args.note)
    moved = profile.provenance.get("split_changed_from_file") or []
    print(f"profile {profile.id} written to {args.profile} (split {profile.provenance.get('split')}"
          + (f": {len(moved)} cases judged by today's case list, not the file's" if moved else "") + ")")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fabricsim.hwmodels.fileio import refuse_overwrite
    from fabricsim.validate.fit.report import check_store, default_report_dir, report_file
    from fabricsim.validate.workloads_file import is_workload_file

    if not args.no_store:  # said before the report is written, not after it
        check_store(args.store)
    if is_workload_file(args.measured):
        from fabricsim.validate.fit.workloads_report import report_workloads

        out = args.out or default_report_dir(args.measured)
        refuse_overwrite(out, args.force, "report", inputs=(args.measured, args.profile))
        print(report_workloads(args.measured, profile=args.profile, out=out,
                               store=None if args.no_store else (args.store or "")))
        return 0

    out = args.out or default_report_dir(args.measured)
    refuse_overwrite(out, args.force, "report", inputs=(args.measured, args.profile))
    summary = report_file(args.measured, profile=args.profile, out=out, store=None if args.no_store
                          else (args.store or ""), split=args.split)
    print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point without the rest of the CLI (used on the GPU image: `python3 -m fabricsim.validate validate ...`)."""
    from fabricsim.errors import FabricsimError, os_error_line

    parser = argparse.ArgumentParser(prog="python -m fabricsim.validate")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FabricsimError as exc:
        print(f"fabricsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # `--out` in a folder that does not exist, no permission: as `fabricsim` says it
        print(f"fabricsim: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
