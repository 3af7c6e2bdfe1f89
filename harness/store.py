"""The results store: a directory of Parquet files, one tidy row per metric, simulated and measured alike.

Layout (``./results`` unless ``--store DIR`` or ``FABRICSIM_STORE`` says otherwise)::

    results/STUDY/RUN_ID.parquet                 one finished run
    results/STUDY/RUN_ID.part-000003.parquet     a batch of a run still going, or one that was killed
    results/STUDY/.tmp-*.parquet                 being written; never read

Why this shape: many writers (a sweep's batches, several sweeps, the validate stage) must never corrupt
or lose each other's rows, and a reader must never see half a file. Every file is written under a hidden
temporary name, fsynced, then published with a hard link that fails rather than replace an existing name
(so nothing is ever overwritten) — a crash leaves at worst an invisible temp file. Writers never share a
file, so no locks are needed. A sweep flushes small part files as points finish (an interrupted sweep loses
only points in flight) and at the end compacts them into one file per run; readers ignore the parts of a
run whose compacted file exists, so the rows are never counted twice.

Row schema (DESIGN.md): ``study, run_id, point_id, <params as flattened columns>, metric, value, unit,
source (sim|hw), topology, calibration_id, device, versions, created_at`` plus ``error`` — null on
good rows; a failed point is one row with ``metric = "error"``, ``value`` NaN and the error text. Optional
columns: ``lo, hi, level`` (a simulated value's prediction interval) and ``reason`` (why a point that ran has no
result for some of its metrics, on each of its rows: an infeasible configuration's message; null elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.fileio import check_parent_folder, make_output_folder

CORE_COLUMNS = (
    "study",
    "run_id",
    "point_id",
    "metric",
    "value",
    "unit",
    "source",
    "topology",
    "calibration_id",
    "device",
    "versions",
    "created_at",
    "error",
)
SOURCES = ("sim", "hw")
# A simulated value's prediction interval (DESIGN.md): present on rows whose point function gave one.
INTERVAL_COLUMNS = ("lo", "hi", "level")
# Why a point that ran reports no result for some metrics (an infeasible configuration: `feasible = 0` and no
# times): text on each of the point's rows, null on others. Optional, so stores written before it stay readable.
REASON_COLUMN = "reason"
# The columns every row has or may have that are not a point's parameters (its parameters are the rest)
_NOT_PARAMETERS = frozenset((*CORE_COLUMNS, REASON_COLUMN))
# Columns a point's parameters must not be named (they sit beside them in a row; `study` refuses such names)
RESERVED_COLUMNS = (*CORE_COLUMNS, *INTERVAL_COLUMNS, REASON_COLUMN)
# The columns after the parameters, in a stored row's order
_TRAILING = (*CORE_COLUMNS[3:], REASON_COLUMN)
ERROR_METRIC = "error"
STORE_ENV = "FABRICSIM_STORE"
_PART_RE = re.compile(r"^(?P<run>.+)\.part-(?P<seq>\d+)\.parquet$")
# A study name is also a folder name and a Parquet file prefix: letters, digits, `_`, `.`, `-`.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StoreError(FabricsimError):
    """The results store cannot do what was asked (bad study name, unknown source, name clash)."""


class CorruptResultsFile(StoreError):
    """A file in the store is not readable Parquet of the results schema; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"results file {path} is unreadable ({reason}); move it away or delete it")
        self.path = path


class CorruptResultsWarning(UserWarning):
    """A corrupted file was skipped while loading; the other files' rows were returned."""


def default_store_root() -> Path:
    """``$FABRICSIM_STORE`` if set, else ``./results``."""
    return Path(os.environ.get(STORE_ENV) or "results")


def new_run_id() -> str:
    """Sortable by start time, unique across processes and machines."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def versions_json() -> str:
    """Software versions recorded beside every row (what produced the number)."""
    out = {"python": platform.python_version()}
    for dist in ("fabricsim", "simpy", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return json.dumps(out, sort_keys=True)


def make_row(
    *,
    study: str,
    run_id: str,
    point_id: str,
    params: Mapping[str, Any],
    metric: str,
    value: float,
    unit: str = "",
    source: str = "sim",
    topology: str | None = None,
    calibration_id: str = "uncalibrated",
    device: str = "",
    versions: str | None = None,
    created_at: datetime | None = None,
    error: str | None = None,
    interval: tuple[float, float, float] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One tidy row; the validate stage uses this for measured (``source="hw"``) rows too. `interval`:
    (lo, hi, level) of a simulated value, stored as the `lo`, `hi` and `level` columns; `reason`: why the point
    has no result for some metrics (the `reason` column)."""
    if source not in SOURCES:
        raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
    row: dict[str, Any] = {
        "study": study,
        "run_id": run_id,
        "point_id": point_id,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "source": source,
        "topology": topology if topology is not None else str(params.get("topology") or ""),
        "calibration_id": calibration_id,
        "device": device,
        "versions": versions if versions is not None else versions_json(),
        "created_at": created_at or datetime.now(UTC),
        "error": error,
    }
    if interval is not None:
        row.update(zip(INTERVAL_COLUMNS, (float(x) for x in interval), strict=True))
    if reason:
        row[REASON_COLUMN] = str(reason)
    for name, val in params.items():
        if name == "topology":
            continue
        if name in row:
            raise StoreError(f"parameter {name!r} collides with a results column")
        row[name] = val
    return row


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def _param_array(values: list[Any]) -> pa.Array:
    """One Parquet type per column, decided by the values themselves (not by whether this batch happens to
    contain a point without the parameter), so every batch of a run stores a parameter the same way."""
    values = [None if _is_missing(v) else v for v in values]
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} or kinds <= {bool} or kinds <= {str} or kinds <= {float}:
        return pa.array(values)
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


_INT_AS_NULLABLE = {pa.int64(): pd.Int64Dtype()}
_STRING_COLUMNS = ("study", "run_id", "point_id", "metric", "unit", "source", "topology", "calibration_id",
                   "device", "versions", "error", REASON_COLUMN)


def _to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Rows -> Arrow table with the schema's column order: ids, parameters, then the rest."""
    columns: dict[str, None] = {}
    for r in records:
        columns.update(dict.fromkeys(r))
    missing = [c for c in CORE_COLUMNS if c not in columns]
    if missing:
        raise StoreError(f"rows lack results columns {missing}")
    params = [c for c in columns if c not in _NOT_PARAMETERS]
    arrays: dict[str, pa.Array] = {}
    try:
        for col in ["study", "run_id", "point_id", *params, *(c for c in _TRAILING if c in columns)]:
            vals = [r.get(col) for r in records]
            if col in params:
                arrays[col] = _param_array(vals)
            elif col == "value":
                arrays[col] = pa.array([math.nan if _is_missing(v) else float(v) for v in vals], pa.float64())
            elif col == "created_at":
                arrays[col] = pa.array(pd.to_datetime(pd.Series(vals), utc=True), pa.timestamp("us", tz="UTC"))
            else:
                arrays[col] = pa.array([None if _is_missing(v) else str(v) for v in vals], pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise StoreError(f"rows cannot be stored as Parquet: column {col!r}: {exc}") from None
    return pa.table(arrays)


def _publish(table: pa.Table, final: Path) -> Path:
    """Write `table` to `final` atomically and without ever replacing an existing file."""
    tmp = final.parent / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # fails with FileExistsError instead of overwriting
        except FileExistsError:
            raise StoreError(f"results file {final} already exists; the store never overwrites") from None
        except OSError:
            # File systems without hard links: rename is atomic; the name is unique to this writer anyway.
            if final.exists():
                raise StoreError(f"results file {final} already exists; the store never overwrites") from None
            os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


class ResultsStore:
    """A results store rooted at one directory (see the module docstring for layout and guarantees)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()
        if self.root.exists() and not self.root.is_dir():  # said now, not after a sweep's first points ran
            raise StoreError(f"{self.root}: the results store is a file, not a folder")

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def check_writable(self) -> None:
        """Raise now (a sweep calls this before its first point) rather than at the first write, when the store
        could not be made: it is made if missing, but not the folders above it (`fileio.check_parent_folder`:
        `--store` with a typo made a folder tree)."""
        if not self.root.is_dir():
            check_parent_folder(self.root)

    # ------------------------------------------------------------------ writing

    def _study_dir(self, study: str, create: bool = False) -> Path:
        if not isinstance(study, str) or not NAME_RE.match(study):
            raise StoreError(f"study name {study!r} must be letters, digits, '_', '-', '.' only")
        folder = self.root / study
        if create:
            make_output_folder(self.root, "studies' results")
            folder.mkdir(exist_ok=True)
        return folder

    def write(
        self, rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, study: str, run_id: str | None = None,
        part: int | None = None,
    ) -> Path:
        """Publish `rows` of one study as a new file: the whole run (`part=None`) or batch `part` of it."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
        if not records:
            raise StoreError("refusing to write an empty results file")
        studies = {r.get("study") for r in records}
        if studies != {study}:
            raise StoreError(f"rows belong to studies {sorted(map(str, studies))}, not only {study!r}")
        bad = {r.get("source") for r in records} - set(SOURCES)
        if bad:
            raise StoreError(f"unknown source {sorted(map(str, bad))}; use one of {SOURCES}")
        run_id = run_id or new_run_id()
        name = f"{run_id}.parquet" if part is None else f"{run_id}.part-{part:06d}.parquet"
        return _publish(_to_table(records), self._study_dir(study, create=True) / name)

    def compact_run(self, study: str, run_id: str) -> Path | None:
        """Merge a run's part files into RUN_ID.parquet, then delete the parts. Safe to repeat after a
        crash at any step: readers prefer the compacted file and ignore leftover parts."""
        folder = self._study_dir(study)
        final = folder / f"{run_id}.parquet"
        parts = sorted(folder.glob(f"{glob_escape(run_id)}.part-*.parquet"))
        if not parts:
            return final if final.exists() else None
        if not final.exists():
            try:
                tables = [pq.read_table(p) for p in parts]
            except (OSError, pa.ArrowException) as exc:
                # Leave the parts alone: readers still get every readable row, and the bad file is named.
                warnings.warn(f"run {run_id} left as parts, not compacted: {exc}", CorruptResultsWarning,
                              stacklevel=2)
                return None
            try:
                table = pa.concat_tables(tables, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # Batches typed one parameter differently (e.g. ints, then strings): retype row by row.
                table = _to_table([r for t in tables for r in t.to_pylist()])
            _publish(table, final)
        for p in parts:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return final

    # ------------------------------------------------------------------ reading

    def studies(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name))

    def files(self, study: str | None = None) -> list[Path]:
        """The visible files holding rows: compacted runs, and parts of runs not yet compacted."""
        names = [study] if study is not None else self.studies()
        out: list[Path] = []
        for name in names:
            folder = self._study_dir(name)
            if not folder.is_dir():
                continue
            entries = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
            finished = {p.name[: -len(".parquet")] for p in entries if not _PART_RE.match(p.name)}
            for p in entries:
                m = _PART_RE.match(p.name)
                if m and m.group("run") in finished:
                    continue
                out.append(p)
        return out

    def _read(self, path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
        try:
            schema = pq.read_schema(path)
            cols = None if columns is None else [c for c in columns if c in schema.names]
            # Whole-number parameters stay whole numbers even where some points lack them (nullable Int64), so
            # `decode_steps` reads 100, not 100.0, in tables, CSV and DataFrames.
            frame = pq.read_table(path, columns=cols).to_pandas(types_mapper=_INT_AS_NULLABLE.get)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptResultsFile(path, reason) from None
        missing = [c for c in (columns or CORE_COLUMNS) if c in CORE_COLUMNS and c not in frame.columns]
        if missing:
            raise CorruptResultsFile(path, f"missing columns {missing}")
        return frame

    def load(
        self,
        study: str | None = None,
        source: str | None = None,
        *,
        include_failed: bool = True,
        strict: bool = False,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """All rows (optionally of one study and one source) as a DataFrame.

        A corrupted file raises :class:`CorruptResultsFile` naming it when `strict`; otherwise it is
        skipped with a :class:`CorruptResultsWarning` naming it and the other files' rows are returned.
        `include_failed=False` drops the error rows of failed points.
        """
        if source is not None and source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
        for _attempt in range(5):
            frames: list[pd.DataFrame] = []
            try:
                for path in self.files(study):
                    try:
                        frames.append(self._read(path, columns))
                    except CorruptResultsFile as exc:
                        if strict:
                            raise
                        warnings.warn(str(exc), CorruptResultsWarning, stacklevel=2)
            except FileNotFoundError:
                continue  # a run was compacted while we listed; list again
            break
        else:
            raise StoreError(f"store {self.root} kept changing while being read; try again")
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else object)
                                 for c in (columns or CORE_COLUMNS)})
        df = pd.concat(frames, ignore_index=True, sort=False)
        if source is not None:
            df = df[df["source"] == source]
        if not include_failed and "error" in df.columns:
            df = df[df["error"].isna()]
        for col in _STRING_COLUMNS:
            # One dtype whatever mix of files was read (an all-null column comes back typed differently).
            if col in df.columns:
                df[col] = df[col].astype(object).where(df[col].notna(), None)
        params = [c for c in df.columns if c not in _NOT_PARAMETERS]
        ordered = [c for c in ("study", "run_id", "point_id") if c in df.columns] + params
        ordered += [c for c in _TRAILING if c in df.columns]
        return df[ordered].reset_index(drop=True)

    def done_points(self, study: str, calibration_id: str, *, include_failed: bool = True) -> set[str]:
        """Ids of the simulated points of `study` already in the store (what `--resume` skips)."""
        df = self.load(study, "sim", columns=["point_id", "calibration_id", "source", "error"])
        if df.empty:
            return set()
        df = df[df["calibration_id"] == calibration_id]
        if not include_failed:
            df = df[df["error"].isna()]
        return set(df["point_id"])

    def summary(self) -> pd.DataFrame:
        """One line per study and source: runs, points, rows, failed points, newest row (`results ls`)."""
        cols = ["study", "run_id", "point_id", "source", "error", "created_at"]
        df = self.load(columns=cols)
        out_cols = ["study", "source", "runs", "points", "rows", "failed", "last"]
        if df.empty:
            return pd.DataFrame(columns=out_cols)
        g = df.groupby(["study", "source"], sort=True)
        failed = df[df["error"].notna()].groupby(["study", "source"])["point_id"].nunique()
        out = pd.DataFrame({
            "runs": g["run_id"].nunique(),
            "points": g["point_id"].nunique(),
            "rows": g.size(),
            "failed": failed,
            "last": g["created_at"].max(),
        })
        out["failed"] = out["failed"].fillna(0).astype(int)
        out = out.reset_index()
        return out[out_cols]


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (run ids are plain, but be safe)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def param_columns(df: pd.DataFrame) -> list[str]:
    """The flattened-parameter columns of a results frame (not the interval columns: a point's parameters must
    not vary with its metrics' intervals, or pivots split one point into many rows; nor `reason`)."""
    return [c for c in df.columns if c not in RESERVED_COLUMNS]


# What one stored value is a value of: a run writing rows with the same key again re-states it (`newest_runs`)
POINT_KEY = ("study", "point_id", "source", "metric", "calibration_id")


def newest_runs(df: pd.DataFrame, key: Sequence[str] = POINT_KEY) -> pd.DataFrame:
    """The rows of `df` from each (study, point, source, metric, calibration)'s newest run only (newest by
    `created_at`, then run id), in their order.

    Why: the store keeps every run (it never overwrites), so re-running a study, re-reporting a measurement
    (`fabricsim report` stores its measured rows each time) or importing the same measurements again adds rows
    that state the same values again; counted as more data, one measurement would be averaged with itself and
    `n_measured` would grow with every run. It is the rule `results show` applies (a point run twice shows its
    newest value), here per calibration so that predictions of several profiles stay side by side. A new
    measurement of the same point replaces the older one; repeated measurements that should be averaged are
    separate points (their own point ids), or rows of one run. Frames without `run_id` come back unchanged."""
    keys = [c for c in key if c in df.columns]
    if df.empty or "run_id" not in df.columns or "point_id" not in keys:
        return df
    order = ["created_at", "run_id"] if "created_at" in df.columns else ["run_id"]
    ranked = df.sort_values(order, kind="stable", na_position="first")
    newest = ranked.groupby(keys, dropna=False, sort=False)["run_id"].transform("last")
    return ranked[ranked["run_id"] == newest].sort_index()


def compare(df: pd.DataFrame, on: Iterable[str] | None = None) -> pd.DataFrame:
    """Join simulated and measured rows of the same scenario: one row per (study, topology, params, metric)
    with `predicted` (sim), `measured` (hw mean), `n_measured` and `rel_error` = predicted/measured - 1.

    Scenario keys are the parameters measured rows carry (or `on`); measured points of one scenario are averaged
    and counted in `n_measured`, predictions are kept per calibration (the column `calibration_id` says which
    one). A point stored by several runs counts once, by its newest run (`newest_runs`): re-running a report or
    a study, or importing the same measurements twice, leaves the table as it was.
    """
    ok = df[df["error"].isna()] if "error" in df.columns else df
    ok = newest_runs(ok)
    sim = ok[ok["source"] == "sim"]
    hw = ok[ok["source"] == "hw"]
    if on is None:
        # Without measured rows the join is empty, but keeps the study's parameter columns, so code that selects
        # them (a notebook run before any measurement) still runs.
        keys = [c for c in param_columns(ok) if (hw.empty or hw[c].notna().any()) and sim[c].notna().any()]
    else:
        keys = list(on)
        unknown = [k for k in keys if k not in ok.columns]
        if unknown:
            raise StoreError(f"cannot join on unknown columns {unknown}")
    base = ["study", "topology", *keys, "metric", "unit"]
    pred = (sim.groupby([*base, "calibration_id"], dropna=False)["value"].mean()
            .rename("predicted").reset_index())
    meas = hw.groupby(base, dropna=False)["value"].agg(measured="mean", n_measured="count").reset_index()
    out = pred.merge(meas, on=base, how="inner")
    out["rel_error"] = out["predicted"] / out["measured"] - 1.0
    return out.reset_index(drop=True)
