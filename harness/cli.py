"""`fabricsim sweep`, `fabricsim results ls|show` and `fabricsim plot`: studies from the command line.

Store location: ``--store DIR``, else ``$FABRICSIM_STORE``, else ``./results``. Plots go to
``./plots/STUDY/`` and traces to ``./traces/`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pandas as pd

from fabricsim.errors import INTERRUPTED, FabricsimError
from fabricsim.hwmodels.fileio import check_parent_folder

from .store import REASON_COLUMN, CorruptResultsWarning, ResultsStore, StoreError, compare, newest_runs, param_columns
from .study import StudyError, load_study, resolve_study_path, study_files


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `sweep`, `results` and `plot`."""
    store_help = "results store directory (default: $FABRICSIM_STORE or ./results)"

    p = subparsers.add_parser(
        "sweep",
        description="Run every point of a study (studies/NAME.py or a path) into the results store.",
    )
    p.add_argument("study", nargs="?", help="study name (studies/NAME.py; --list shows them) or path to a study file")
    p.add_argument("--list", action="store_true", help="list the studies by name, with what each one asks")
    p.add_argument("--backend", default="local", help="local (process pool, default) or ray")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU count)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--resume", action="store_true", help="skip points already in the store")
    p.add_argument("--retry-failed", action="store_true", help="with --resume, run failed points again")
    p.add_argument("--limit", type=int, default=None, help="run at most N (remaining) points")
    p.add_argument("--perfetto-point", metavar="POINT_ID", default=None,
                   help="re-run one point (id or unique prefix) and write its Perfetto trace; stores nothing")
    p.add_argument("--perfetto-dir", metavar="DIR", default="traces",
                   help="where --perfetto-point writes (default: ./traces)")
    p.add_argument("--force", action="store_true", help="with --perfetto-point: replace the point's trace if it exists")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    r = subparsers.add_parser("results")
    rsub = r.add_subparsers(dest="results_command", metavar="ACTION")
    ls = rsub.add_parser("ls", help="one line per study and source")
    ls.add_argument("--store", default=None, help=store_help)
    ls.set_defaults(func=_cmd_results_ls)
    show = rsub.add_parser("show", help="a study's points as a table (one column per metric)")
    show.add_argument("study", help="study name")
    show.add_argument("--source", default=None, help="sim or hw (default: both)")
    show.add_argument("--metric", action="append", default=None, help="only this metric (repeatable)")
    only = show.add_mutually_exclusive_group()
    only.add_argument("--failed", action="store_true", help="list failed points and their errors")
    only.add_argument("--infeasible", action="store_true",
                      help="list the points that ran but are infeasible (feasible = 0, no times) and why")
    only.add_argument("--compare", action="store_true",
                      help="predicted (sim) beside measured (hw) for the same scenario, with relative error")
    show.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    show.add_argument("--store", default=None, help=store_help)
    show.set_defaults(func=_cmd_results_show)
    r.set_defaults(func=lambda args: (r.print_help(), 2)[1])

    pl = subparsers.add_parser("plot")
    pl.add_argument("study", help="study name (studies/NAME.py) or path to a study file")
    pl.add_argument("--out", default=None, help="output directory (default: ./plots/STUDY)")
    pl.add_argument("--force", action="store_true", help="replace figure files that exist")
    pl.add_argument("--store", default=None, help=store_help)
    pl.set_defaults(func=_cmd_plot)


@contextmanager
def _report_corrupt_files() -> Iterator[None]:
    """Skipped corrupted files and figures become one warning line each on stderr (the rest is shown)."""
    from .plots import FigureSkipped

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptResultsWarning)
        warnings.simplefilter("always", FigureSkipped)
        yield
    for w in caught:
        if issubclass(w.category, CorruptResultsWarning | FigureSkipped):
            print(f"fabricsim: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepError, SweepInterrupted, run_sweep, trace_point

    if args.list:
        if args.study:  # `sweep weight_sync --list` would list every study and run nothing: say which was meant
            raise StudyError(f"sweep: give a STUDY to run ({args.study!r}) or --list, not both")
        _list_studies()
        return 0
    if not args.study:
        raise StudyError("sweep: give a STUDY (a name or a path to a study file); fabricsim sweep --list names them")
    if args.retry_failed and not args.resume:
        raise SweepError("--retry-failed reruns the failed points of an earlier run; it needs --resume")
    if args.perfetto_point:
        path, outcome = trace_point(args.study, args.perfetto_point, args.perfetto_dir, force=args.force)
        assert outcome.metrics is not None
        for metric, (value, unit) in outcome.metrics.items():
            print(f"{metric} = {value:.6g} {unit}".rstrip())
        print(f"trace: {path} (open in the Perfetto UI)")
        return 0
    # `kill PID` should save finished points like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with _report_corrupt_files():
            report = run_sweep(args.study, store=args.store, backend=args.backend, workers=args.workers,
                               address=args.address, resume=args.resume, retry_failed=args.retry_failed,
                               limit=args.limit, progress=not args.quiet)
    except SweepInterrupted as stop:
        print(f"fabricsim: interrupted: {stop.report.ran} finished points are saved; "
              f"`{_resume_command(args)}` runs the rest", file=sys.stderr)
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    store = ResultsStore(args.store)
    line = f"{report.study}: ran {report.ran} point{'' if report.ran == 1 else 's'}"
    extras = []
    if report.failed:
        extras.append(f"{report.failed} failed")
    if report.infeasible:
        extras.append(f"{report.infeasible} infeasible")
    if report.skipped:
        extras.append(f"{report.skipped} already in the store")
    if extras:
        line += f" ({', '.join(extras)})"
    if report.ran:
        rate = report.points_per_s
        line += f" in {report.wall_s:.1f}s, " + (f"{rate:.1f} points/s" if rate >= 1 else f"{1 / rate:.1f} s/point")
    if report.compile_s:
        line += f" (after {report.compile_s:.1f}s loading the engine: a machine's first run compiles it)"
    if report.skipped_failed:
        line += f"; {report.skipped_failed} of the stored points failed: --retry-failed reruns them"
    print(line)
    if not (store.root / report.study).is_dir():
        return 0  # nothing ran and nothing was stored before: there is no results folder to point at
    at = f" --store {args.store}" if args.store else ""
    hints = [f"fabricsim results show {report.study}{at}"]
    if load_study(args.study).figures:
        hints.append(f"fabricsim plot {report.study}{at}")
    print(f"results: {store.root / report.study}/   ({'; '.join(hints)})")
    return 1 if report.failed else 0


def _list_studies() -> None:
    """One line per study NAME that `fabricsim sweep NAME` runs: its description (else its docstring's first line),
    with the file where it is not a bundled study. A study file that does not load is listed with the reason."""
    rows = []
    for path, bundled in study_files():
        try:
            study = load_study(path)
            about = study.description or _first_doc_line(path)
        except FabricsimError as exc:
            about = f"(does not load: {exc})"
        where = "" if bundled else f"  [{path}]"  # a user's ./studies/NAME.py (it hides a bundled NAME)
        rows.append((path.stem, about + where))
    width = max((len(name) for name, _ in rows), default=0)
    for name, about in rows:
        print(f"{name:<{width}}  {about}".rstrip())


def _first_doc_line(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _resume_command(args: argparse.Namespace) -> str:
    """The command that goes on where an interrupted sweep stopped: the same options, plus --resume."""
    words = ["fabricsim", "sweep", args.study]
    for flag, value in (("--store", args.store), ("--backend", None if args.backend == "local" else args.backend),
                        ("--address", args.address), ("--workers", args.workers)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--resume"] + (["--retry-failed"] if args.retry_failed else []) + (["--quiet"] if args.quiet else [])
    return shlex.join(words)


def _cmd_results_ls(args: argparse.Namespace) -> int:
    store = ResultsStore(args.store)
    if args.store and not store.root.is_dir():  # a store named on purpose that is not there: a typo, not "no results"
        raise StoreError(f"{store.root}: no results store there (the folder `fabricsim sweep --store` writes)")
    with _report_corrupt_files():
        summary = store.summary()
    if summary.empty:
        print(f"no results in {store.root}")
        return 0
    summary["last"] = summary["last"].dt.strftime("%Y-%m-%d %H:%M:%S")
    print(summary.to_string(index=False))
    return 0


def _cmd_results_show(args: argparse.Namespace) -> int:
    if args.metric and (args.failed or args.infeasible):  # they list points and why, not metrics
        raise StoreError(f"--metric does not apply to --{'failed' if args.failed else 'infeasible'}, which lists "
                         "points and why they have no values")
    store = ResultsStore(args.store)
    with _report_corrupt_files():
        df = store.load(args.study, args.source)
    if df.empty:
        _say_why_there_are_no_rows(args, store)
    at = f" --store {args.store}" if args.store else ""
    failed = df[df["error"].notna()]
    good = df[df["error"].isna()]
    if args.infeasible:
        _print_infeasible(_infeasible_points(good), args.study, args.csv)
        return 0
    if args.failed:
        if failed.empty and not args.csv:
            infeasible = _infeasible_points(good)
            also = (f" ({len(infeasible)} ran and are infeasible: fabricsim results show {args.study} --infeasible"
                    f"{at} says why)" if len(infeasible) else "")
            print(f"no failed points in study {args.study!r}{also}")
            return 0
        table = failed[["point_id", *param_columns(failed), "error"]].drop_duplicates()
        _print(table, args.csv)
        return 0
    ok = good
    if args.metric:
        unknown = sorted(set(args.metric) - set(df["metric"].dropna()))
        if unknown:
            raise StoreError(f"--metric: study {args.study!r} has no metric {', '.join(map(repr, unknown))} (it has "
                             f"{', '.join(sorted(set(df['metric'].dropna())))})")
        ok = ok[ok["metric"].isin(args.metric)]
    if args.compare:
        table = compare(ok)
        if table.empty:
            raise StoreError(f"study {args.study!r} has no scenario with both simulated and measured rows")
        _print(table.drop(columns=["study"]), args.csv)
        return 0
    if ok.empty:
        raise StoreError(f"study {args.study!r} has no successful rows"
                         + (f" of metric {', '.join(args.metric)}" if args.metric else "")
                         + (f"; {failed['point_id'].nunique()} failed point(s): use --failed" if len(failed) else ""))
    ids = _identifying_columns(ok)
    params = [c for c in ids if c not in ("topology", "source")]
    index = ["point_id", *ids]
    ok = _dash_missing(ok, params)
    bounds = {(f"{m} [{u}]" if u else m): tuple(f"{m} {end} [{u}]" if u else f"{m} {end}" for end in ("lo", "hi"))
              for m, u in zip(ok["metric"], ok["unit"], strict=True)}
    ok = ok.assign(metric=[f"{m} [{u}]" if u else m for m, u in zip(ok["metric"], ok["unit"], strict=True)])
    metrics = _metric_order(ok)
    # Latest value per point and metric: a point run twice (without --resume) shows its newest result (the rule
    # `compare` counts measurements by)
    ok = newest_runs(ok, key=(*index, "metric"))
    table = ok.pivot_table(index=index, columns="metric", values="value", aggfunc="last", dropna=False)
    table = table[[m for m in metrics if m in table.columns]]  # the pivot sorts them by name
    table = _with_interval_columns(table.dropna(how="all"), ok, index, bounds).reset_index()
    table = table.sort_values([*ids, "point_id"], kind="stable")
    table.columns.name = None
    if args.csv:
        _print(table, csv=True)
    else:
        _print_wrapped(table, keep=["point_id"], ids=ids, beside=bounds)
    if args.metric:
        _say_what_is_missing(good, table, args.metric, f"fabricsim results show {args.study} --infeasible{at}")
    elif not args.csv and len(infeasible := _infeasible_points(good)):
        print(f"\n{len(infeasible)} infeasible point(s) (feasible = 0, no times): fabricsim results show {args.study} "
              f"--infeasible{at} says why", file=sys.stderr)
    if not failed.empty and not args.csv:
        n = failed["point_id"].nunique()
        print(f"\n{n} failed point(s): fabricsim results show {args.study} --failed{at}", file=sys.stderr)
    return 0


def _say_why_there_are_no_rows(args: argparse.Namespace, store: ResultsStore) -> None:
    """No rows of `args.study`: where they were looked for and how to make them, or, when no study of that name
    exists either (`sweep NAME` would fail too), that the name is unknown and which ones `sweep` runs."""
    where = Path(store.root).resolve()
    which = f"{args.source} " if args.source else ""
    at = f" --store {args.store}" if args.store else ""
    studies = store.studies()  # (a scan of the store's folders)
    if args.study in studies:  # stored, but not from this source (a study run from a file elsewhere too)
        raise StoreError(f"no {which}results for study {args.study!r} in {where} (it has results of other sources: "
                         f"fabricsim results show {args.study}{at})")
    try:
        resolve_study_path(args.study)
    except StudyError:
        known = [path.stem for path, _ in study_files()]
        stored = [s for s in studies if s not in known]
        also = f"; stored results: {', '.join(stored)}" if stored else ""
        raise StoreError(f"unknown study {args.study!r}: no results in {where} and no studies/{args.study}.py; the "
                         f"studies are {', '.join(known)} (fabricsim sweep --list says what each asks){also}") from None
    raise StoreError(f"no {which}results for study {args.study!r} in {where}: fabricsim sweep {args.study}{at} runs it")


def _identifying_columns(ok: pd.DataFrame) -> list[str]:
    """The columns that say which point a row is, in the order a reader looks for them: the named choices (strategy,
    policy, model, layout ...: text parameters, in the study's grid order), the machine (`topology`), then the
    numeric axes (GPUs, sizes, rates), then `source` (sim or hw). Parameters no successful row has are left out."""
    params = [c for c in param_columns(ok) if ok[c].notna().any()]
    text = [c for c in params if all(isinstance(v, str) for v in ok[c].dropna())]
    return [*text, "topology", *(c for c in params if c not in text), "source"]


def _metric_order(ok: pd.DataFrame) -> list[str]:
    """Metric columns (`name [unit]`) in the order the study reports them, those with an interval first: a study
    gives intervals to its headline numbers (sync time, stall, throughput), and by name `GB_d2d` came first. The
    order is the point reporting the most metrics' (an infeasible point reports few), then any others as seen."""
    per_point = ok.groupby("point_id", sort=False)["metric"].unique()
    seen = list(dict.fromkeys([*per_point.loc[per_point.map(len).idxmax()], *ok["metric"]]))
    with_interval = set(ok.loc[ok["lo"].notna(), "metric"]) if "lo" in ok.columns else set()
    return [m for m in seen if m in with_interval] + [m for m in seen if m not in with_interval]


def _with_interval_columns(table: pd.DataFrame, ok: pd.DataFrame, index: list[str],
                           bounds: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Beside each metric whose rows carry a prediction interval, its `lo` and `hi` columns (`sync_s lo [s]`,
    `sync_s hi [s]`), and one `level` column (0.9 for 90%): a value without its interval reads as more certain
    than the model is. Tables of rows without intervals come back unchanged."""
    if "lo" not in ok.columns or ok["lo"].isna().all():
        return table
    rows = ok[ok["lo"].notna()]
    parts = []
    for end, col in ((0, "lo"), (1, "hi")):
        wide = rows.pivot_table(index=index, columns="metric", values=col, aggfunc="last")
        parts.append(wide.rename(columns={m: bounds[m][end] for m in wide.columns}))
    level = rows.groupby(index)["level"].max().rename("level")
    joined = table.join(parts[0]).join(parts[1]).join(level)
    order: list[str] = []
    for m in table.columns:
        order += [m, *(c for c in bounds.get(m, ()) if c in joined.columns)]
    return joined[[*order, "level"]]


def _say_what_is_missing(good: pd.DataFrame, table: pd.DataFrame, metrics: list[str], why_command: str) -> None:
    """Points that ran but have none of the asked metrics (an infeasible configuration reports `feasible = 0`
    and no times) would otherwise vanish from the table without a word; `why_command` lists the infeasible ones
    with their reasons. `good`: the rows of points that ran without an error."""
    missing = set(good["point_id"]) - set(table["point_id"])
    if not missing:
        return
    infeasible = _infeasible_points(good)["point_id"].isin(missing).sum()  # as `--infeasible` counts them
    why = f": {infeasible} infeasible (feasible = 0; {why_command} says why)" if infeasible else ""
    print(f"\n{len(missing)} of {good['point_id'].nunique()} points have no {', '.join(metrics)}{why}",
          file=sys.stderr)


def _dash_missing(df: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """`df` with "-" where a parameter is missing: a conditional axis leaves other points without the parameter,
    and a pivot or a sort would drop or misplace them."""
    return df.assign(**{c: df[c].astype(object).where(df[c].notna(), "-") for c in params})


def _infeasible_points(good: pd.DataFrame) -> pd.DataFrame:
    """One row per point that ran but is infeasible, by its newest run: its rows carry a `reason`, or report
    `feasible = 0` (rows stored before reasons were kept, or from a study that gives none: reason "-"). Columns: the
    point id, the columns that say which point it is (as in the main table), `reason`."""
    if good.empty:
        return pd.DataFrame(columns=["point_id", REASON_COLUMN])
    newest = newest_runs(good, key=("point_id",))
    reasons = newest[REASON_COLUMN] if REASON_COLUMN in newest.columns else pd.Series(None, index=newest.index)
    flagged = newest[reasons.notna() | ((newest["metric"] == "feasible") & (newest["value"] == 0))]
    if flagged.empty:
        return pd.DataFrame(columns=["point_id", REASON_COLUMN])
    ids = _identifying_columns(flagged)
    reason = reasons[flagged.index].groupby(flagged["point_id"]).first()  # the first non-null of each point
    table = flagged.drop_duplicates("point_id")[["point_id", *ids]].copy()
    why = table["point_id"].map(reason).astype(object)
    table[REASON_COLUMN] = why.where(why.notna(), "-")
    table = _dash_missing(table, [c for c in ids if c not in ("topology", "source")])
    return table.sort_values([*ids, "point_id"], kind="stable").reset_index(drop=True)


def _print_infeasible(table: pd.DataFrame, study: str, csv: bool) -> None:
    """The infeasible points with their reasons: one line each, the reason last and left-aligned (a long message
    read from its start); constant columns said once above, as in the main table."""
    if csv:
        _print(table, csv=True)
        return
    if table.empty:
        print(f"no infeasible points in study {study!r}")
        return
    table = _said_once(table, keep=["point_id", REASON_COLUMN])
    lines = table.drop(columns=REASON_COLUMN).to_string(index=False).splitlines()
    print("\n".join(f"{line}  {why}" for line, why in zip(lines, [REASON_COLUMN, *table[REASON_COLUMN]], strict=True)))
    unexplained = int((table[REASON_COLUMN] == "-").sum())
    if unexplained:
        print(f"\n{unexplained} of them carry no reason (rows stored before reasons were kept, or a study that gives "
              f"none): a sweep of the study without --resume stores them again", file=sys.stderr)


def _said_once(table: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """`table` without its columns other than `keep` that hold one value in every row (of two or more), said once
    on a line above it ('all rows: topology = h100-1, source = sim'; '' and '-', a parameter no row has, go
    unsaid): a column repeating one value down every row hides the ones that vary. For the main table and
    `--infeasible`'s list alike."""
    same = [c for c in table.columns if c not in keep and len(table) > 1 and table[c].nunique(dropna=False) == 1]
    said = [f"{c} = {table[c].iloc[0]}" for c in same if str(table[c].iloc[0]) not in ("", "-")]
    if said:
        print("all rows: " + ", ".join(said))
    return table.drop(columns=same)


def _print_wrapped(table: pd.DataFrame, keep: list[str], ids: Sequence[str] = (),
                   beside: Mapping[str, Sequence[str]] | None = None) -> None:
    """A table that fits the terminal: columns with one value in every row become one line above it, and the
    rest wraps into blocks of columns, each block repeating the `keep` columns (the point id) and, where they take
    at most half the width, the identifying columns `ids` that vary (strategy, model ...: a block of metrics
    beside point ids alone cannot be read). The columns `beside[c]` (a metric's `lo` and `hi`) wrap with column
    `c`: a value whose interval is a block further down reads as more certain than it is."""
    width = _terminal_width()
    table = _said_once(table, keep=[*keep, *(c for c in table.columns if str(c).endswith(("]", " lo", " hi")))])
    col_width = {c: max(len(line) for line in table[[c]].to_string(index=False, float_format=_significant)
                         .splitlines()) + 2 for c in table.columns}
    varying = [c for c in ids if c in table.columns and c not in keep]
    if sum(col_width[c] for c in [*keep, *varying]) <= width // 2:
        keep = [*keep, *varying]
    attached = {b: c for c, ends in (beside or {}).items() for b in ends if c in table.columns}
    units: list[list[str]] = []  # runs of columns that wrap as one: a metric and its bounds
    for c in table.columns:
        if c in keep:
            continue
        if c in attached and units and units[-1][0] == attached[c]:
            units[-1].append(c)
        else:
            units.append([c])
    used = sum(col_width[c] for c in keep)
    blocks: list[list[str]] = [[]]
    for unit in units:
        if blocks[-1] and used + sum(col_width[b] for b in [*blocks[-1], *unit]) > width:
            blocks.append([])
        blocks[-1].extend(unit)
    print("\n\n".join(table[keep + block].to_string(index=False, float_format=_significant) for block in blocks))


def _terminal_width() -> int:
    """$COLUMNS, else the width of the terminal stdout goes to, else of the one stderr goes to (`results show |
    less -S` is read on that screen: the 120 columns assumed before wrapped a wide terminal's table), else 120."""
    columns = shutil.get_terminal_size((0, 0)).columns
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stderr__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 120


def _print(table: pd.DataFrame, csv: bool) -> None:
    if csv:
        table.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(table.to_string(index=False, float_format=_significant))


def _significant(x: float) -> str:
    """A table's number to six significant digits: pandas gives a column one fixed number of decimals, so a
    3 us makespan beside seconds showed as 0.000003 (and 1e-9 as 0.000000)."""
    return f"{x:.6g}"


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_study

    study = load_study(args.study)
    store = ResultsStore(args.store)
    if args.out:
        check_parent_folder(args.out)  # said now, before the figures are drawn; the folder itself is made
    with _report_corrupt_files():
        written = plot_study(study, store, args.out or None, force=args.force)
    for path in written:
        print(path)
    return 0
