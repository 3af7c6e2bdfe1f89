"""Studies: a parameter grid plus a function from one point to metrics.

A study is a plain Python file (``studies/NAME.py``) loaded by path. It defines one module-level name,
``STUDY``, built like this::

    from fabricsim.harness.study import Figure, Grid, PointContext, Study

    def run_point(point: dict, ctx: PointContext | None = None) -> dict:
        ...                                   # build a topology, run a Simulation
        if ctx is not None and ctx.trace_path is not None:
            result.write_trace(ctx.trace_path)  # `fabricsim sweep --perfetto-point POINT_ID` asks for this
        return {"makespan_s": (result.makespan_s, "s"), "gpus": 8.0}

    STUDY = Study(
        name="h2d_fanout",
        grid=Grid.product(topology=["hgx-h200-8"], size_bytes=[1 << 20, 1 << 30], fanout=[1, 2, 4, 8]),
        run=run_point,
        figures=[Figure("makespan", x="size_bytes", y="makespan_s", hue="fanout", logx=True)],
    )

The point function takes the point's parameters (a flat ``dict`` of JSON scalars) and, if it accepts a
second argument, a :class:`PointContext`. It returns ``{metric: value}`` or ``{metric: (value, unit)}``
with float-convertible values, or ``(value, unit, interval)`` for a prediction interval (stored as the row's
``lo``, ``hi``, ``level``): :func:`with_intervals` gives a function of the topology's metrics their corner
intervals in one call. One key is not a metric: ``"reason"`` (:data:`REASON`), text saying why the point has no
result for some metrics (an infeasible configuration: ``{"feasible": 0.0, "reason": str(exc)}``), stored on each
of its rows (the ``reason`` column) for ``results show --infeasible``; empty text means none. Raising is fine: the
sweep records the point as failed with the error and carries on. It must be deterministic and must not depend on
which process runs it — the local and Ray backends promise identical rows.

Grids compose: ``Grid.product`` (every combination), ``Grid.zipped`` (axes advanced together),
``Grid.points`` (an explicit list), ``Grid.random`` (seeded samples); ``a * b`` is the product of two
grids, ``a + b`` their concatenation, ``g.when(pred, **axes)`` adds axes only to the points where
``pred(point)`` holds (conditional axes, e.g. a bucket size that only one strategy has), and
``g.where(pred)`` drops points.

Every point has a stable id: a hash of its parameters (canonical JSON, so key order does not matter, but
``1`` and ``1.0`` differ) and of the study's calibration id. The same point run under another calibration
profile is another point; re-running the same point is a no-op under ``--resume``.

Why a module-level object rather than a registry or a config file: studies are scripts people edit; a
plain file they can run, import in a notebook or hand to ``fabricsim sweep`` keeps one obvious way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.fileio import read_text

from .store import NAME_RE, REASON_COLUMN, RESERVED_COLUMNS

Scalar = bool | int | float | str | None
Point = dict[str, Scalar]
MetricValue = float | int | tuple[float, str]
PointFn = Callable[..., Mapping[str, MetricValue]]

# Parameters become extra columns beside a results row's own (DESIGN.md; `store.RESERVED_COLUMNS`), so they must
# not collide. A parameter named `topology` is the exception: it fills the `topology` column.
UNCALIBRATED = "uncalibrated"
# The key of a point function's result that holds why the point has no result for some metrics (text, not a metric).
REASON = REASON_COLUMN


class StudyError(FabricsimError):
    """A study file or grid is malformed: missing STUDY, bad axes, empty grid, bad metrics."""


# --------------------------------------------------------------------------------------------- grids


def _check_scalar(name: str, value: Any) -> Scalar:
    """Parameters must be JSON scalars so ids are stable and Parquet columns typed; numpy scalars convert."""
    if hasattr(value, "item") and not isinstance(value, bool | int | float | str):
        value = value.item()  # numpy scalar -> python
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise StudyError(f"parameter {name!r} = {value!r} does not fit in 64 bits (the results store's integers)")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StudyError(f"parameter {name!r} = {value!r} is not finite")
        return value
    raise StudyError(f"parameter {name!r} = {value!r}: values must be bool, int, float, str or None")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> Point:
    """Nested dicts become dotted names ({"model": {"layers": 2}} -> {"model.layers": 2})."""
    out: Point = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise StudyError(f"parameter names must be non-empty strings, got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{name}."))
        else:
            out[name] = _check_scalar(name, value)
    return out


def _axis_values(name: str, values: Any) -> list[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise StudyError(f"axis {name!r} must be a list of values, got {values!r}")
    return list(values)


class Grid:
    """An ordered, finite list of points, built lazily from composable parts.

    Order matters only for `--limit N` (the first N points) and progress; ids never depend on it.
    """

    def __init__(self, generate: Callable[[], Iterator[Point]], describe: str) -> None:
        self._generate = generate
        self._describe = describe

    def __iter__(self) -> Iterator[Point]:
        for point in self._generate():
            yield _flatten(point)

    def __len__(self) -> int:
        return sum(1 for _ in self._generate())

    def __repr__(self) -> str:
        return f"Grid({self._describe})"

    # -- constructors

    @classmethod
    def product(cls, **axes: Iterable[Any]) -> Grid:
        """Every combination of the axes; the last axis varies fastest."""
        names = list(axes)
        lists = [_axis_values(n, v) for n, v in axes.items()]

        def gen() -> Iterator[Point]:
            for combo in itertools.product(*lists):
                yield dict(zip(names, combo, strict=True))

        sizes = ", ".join(f"{n}×{len(v)}" for n, v in zip(names, lists, strict=True))
        return cls(gen, f"product({sizes})")

    @classmethod
    def zipped(cls, **axes: Iterable[Any]) -> Grid:
        """Axes advanced together (all must have the same length): point i takes element i of each."""
        names = list(axes)
        lists = [_axis_values(n, v) for n, v in axes.items()]
        lengths = {len(v) for v in lists}
        if len(lengths) > 1:
            detail = ", ".join(f"{n}={len(v)}" for n, v in zip(names, lists, strict=True))
            raise StudyError(f"zipped axes must have equal lengths, got {detail}")

        def gen() -> Iterator[Point]:
            for combo in zip(*lists, strict=True):
                yield dict(zip(names, combo, strict=True))

        return cls(gen, "zipped(" + ", ".join(names) + ")")

    @classmethod
    def points(cls, points: Iterable[Mapping[str, Any]]) -> Grid:
        """An explicit list of points."""
        items = [dict(p) for p in points]
        return cls(lambda: iter([dict(p) for p in items]), f"points×{len(items)}")

    @classmethod
    def random(cls, n: int, seed: int, **dists: Distribution | Sequence[Any]) -> Grid:
        """`n` points sampled with a fixed seed: same seed, same points, on any machine.

        Each axis is a :class:`Uniform`, :class:`LogUniform`, :class:`IntUniform` or a list to choose from.
        """
        if n < 0:
            raise StudyError(f"random grid needs n >= 0, got {n}")
        samplers = {name: d if isinstance(d, Distribution) else Choice(d) for name, d in dists.items()}

        def gen() -> Iterator[Point]:
            import numpy as np

            rng = np.random.default_rng(seed)
            for _ in range(n):
                yield {name: s.sample(rng) for name, s in samplers.items()}

        return cls(gen, f"random(n={n}, seed={seed}, {', '.join(samplers)})")

    # -- composition

    def __mul__(self, other: Grid) -> Grid:
        """Product of two grids: every point of `self` merged with every point of `other`."""
        if not isinstance(other, Grid):
            return NotImplemented

        def gen() -> Iterator[Point]:
            right = list(other._generate())
            for a in self._generate():
                for b in right:
                    clash = set(a) & set(b)
                    if clash:
                        raise StudyError(f"grid product repeats axes {sorted(clash)}")
                    yield {**a, **b}

        return Grid(gen, f"{self._describe} * {other._describe}")

    def __add__(self, other: Grid) -> Grid:
        """Concatenation: the points of `self`, then those of `other`."""
        if not isinstance(other, Grid):
            return NotImplemented
        return Grid(lambda: itertools.chain(self._generate(), other._generate()),
                    f"{self._describe} + {other._describe}")

    def when(self, predicate: Callable[[Point], bool], **axes: Iterable[Any]) -> Grid:
        """Conditional axes: points where `predicate(point)` holds are expanded by the product of `axes`;
        the others pass through unchanged (they have no such parameter)."""
        extra = Grid.product(**axes)

        def gen() -> Iterator[Point]:
            rows = list(extra._generate())
            for p in self._generate():
                if predicate(_flatten(p)):
                    for r in rows:
                        yield {**p, **r}
                else:
                    yield p

        return Grid(gen, f"{self._describe}.when({', '.join(axes)})")

    def where(self, predicate: Callable[[Point], bool]) -> Grid:
        """Keep only the points for which `predicate(point)` holds."""
        return Grid(lambda: (p for p in self._generate() if predicate(_flatten(p))),
                    f"{self._describe}.where(...)")


class Distribution:
    """A one-dimensional distribution for :meth:`Grid.random`."""

    def sample(self, rng: Any) -> Scalar:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Uniform(Distribution):
    lo: float
    hi: float

    def sample(self, rng: Any) -> float:
        return float(rng.uniform(self.lo, self.hi))


@dataclass(frozen=True)
class LogUniform(Distribution):
    """Uniform in log space: the right prior for sizes and bandwidths spanning decades."""

    lo: float
    hi: float

    def sample(self, rng: Any) -> float:
        if self.lo <= 0 or self.hi <= 0:
            raise StudyError(f"LogUniform needs positive bounds, got ({self.lo}, {self.hi})")
        return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))


@dataclass(frozen=True)
class IntUniform(Distribution):
    """Integers in [lo, hi], both ends included."""

    lo: int
    hi: int

    def sample(self, rng: Any) -> int:
        return int(rng.integers(self.lo, self.hi + 1))


@dataclass(frozen=True)
class Choice(Distribution):
    values: Sequence[Any]

    def sample(self, rng: Any) -> Scalar:
        if not self.values:
            raise StudyError("random choice from an empty list")
        return _check_scalar("choice", self.values[int(rng.integers(0, len(self.values)))])


# --------------------------------------------------------------------------------------------- ids


def canonical_params(params: Mapping[str, Any]) -> str:
    """The one text form of a point's parameters that ids are computed from."""
    return json.dumps(_flatten(params), sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_id(params: Mapping[str, Any], calibration_id: str = UNCALIBRATED) -> str:
    """Stable id of a point: 16 hex digits of sha256(canonical params, calibration id)."""
    text = canonical_params(params) + "\x00" + calibration_id
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibration_id_of(calibration: str | Path | None) -> str:
    """Id of the calibration a study runs under, part of every point id.

    `None` -> ``uncalibrated``; ``"default"`` (each preset's bundled profile) -> ``default-`` plus a hash
    of the bundled profile files; a path -> the file's stem plus a hash of its bytes. Hashing contents
    means a refitted profile, even under the same name, makes new points instead of passing for old ones.
    """
    if calibration is None:
        return UNCALIBRATED
    if str(calibration) == "default":
        from fabricsim import hwmodels

        folder = Path(hwmodels.__file__).resolve().parent / "profiles"
        digest = hashlib.sha256()
        for f in sorted(folder.glob("*")) if folder.is_dir() else []:
            if f.is_file() and f.suffix in (".json", ".yaml", ".yml"):
                digest.update(f.name.encode() + b"\x00" + f.read_bytes())
        return f"default-{digest.hexdigest()[:12]}"
    path = Path(calibration)
    try:
        digest_hex = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise StudyError(f"calibration profile {path}: {exc.strerror or exc}") from None
    return f"{path.stem}-{digest_hex}"


# --------------------------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class PointContext:
    """What the runner tells a point function besides its parameters.

    `trace_path` is set only when the user asked for a trace of this point (`sweep --perfetto-point POINT_ID`);
    the function should then write a Perfetto trace there (e.g. ``Result.write_trace(ctx.trace_path)``).
    """

    study: str
    point_id: str
    calibration: str | None = None
    trace_path: Path | None = None


@dataclass(frozen=True)
class Figure:
    """A standard figure of a study: metric `y` against parameter `x`, one line per value of `hue`, one
    panel per value of `facet`. Measured (hw) points are drawn beside the predicted (sim) lines."""

    name: str
    x: str
    y: str
    hue: str | None = None
    facet: str | None = None
    logx: bool = False
    logy: bool = False
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    # Fix other parameters, e.g. {"topology": "h100-1"}.
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A named grid plus the function that turns one point into metrics (see the module docstring)."""

    name: str
    grid: Grid
    run: PointFn
    figures: Sequence[Figure | Callable[..., Any]] = ()
    calibration: str | None = None  # None, "default" (each preset's bundled profile) or a profile path
    # The `topology` column when no point parameter names one: a name, or a function of the point for studies
    # whose axes pick the machine indirectly (a layout, a link kind).
    topology: str | Callable[[Point], str] | None = None
    description: str = ""
    path: Path | None = None  # set by load_study: where the study came from (the runner re-loads it)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise StudyError(f"study name {self.name!r} must be letters, digits, '_', '-', '.' only")
        if not isinstance(self.grid, Grid):
            kind = type(self.grid).__name__
            raise StudyError(f"study {self.name!r}: grid must be a fabricsim.harness.study.Grid, got {kind}")
        if not callable(self.run):
            raise StudyError(f"study {self.name!r}: run must be a function point -> metrics")

    @property
    def calibration_id(self) -> str:
        return calibration_id_of(self.calibration)

    @property
    def takes_context(self) -> bool:
        """Whether the point function accepts a second (context) argument."""
        try:
            params = list(inspect.signature(self.run).parameters.values())
        except (TypeError, ValueError):
            return False
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def topology_of(self, params: Point) -> str:
        """What a point's rows carry in the `topology` column ("" when the study does not say): a preset by the
        name its topology carries (`presets.canonical_name`: one machine, one name, however the grid spells it)."""
        from fabricsim.hwmodels.presets import canonical_name

        given = params.get("topology") or (self.topology(params) if callable(self.topology) else self.topology)
        return canonical_name(str(given or ""))

    def points(self) -> list[tuple[str, Point]]:
        """The grid as (point id, params), duplicates dropped (first kept), in grid order.

        Raises StudyError for an empty grid or a parameter that collides with a results column.
        """
        cal = self.calibration_id
        seen: set[str] = set()
        out: list[tuple[str, Point]] = []
        for params in self.grid:
            clash = [k for k in params if k in RESERVED_COLUMNS and k != "topology"]
            if clash:
                raise StudyError(
                    f"study {self.name!r}: parameter {clash[0]!r} collides with a results column"
                )
            # a machine by the name its topology carries (`topology_of`): two spellings of one machine are one point
            named = {**params, "topology": self.topology_of(params)} if params.get("topology") else params
            pid = point_id(named, cal)
            if pid not in seen:
                seen.add(pid)
                out.append((pid, params))
        if not out:
            raise StudyError(f"study {self.name!r}: the grid is empty (no points to run)")
        return out

    def evaluate(self, params: Point, ctx: PointContext | None = None) -> dict[str, tuple[float, str]]:
        """Run one point and normalise its metrics to {metric: (float value, unit)}."""
        return self.result(params, ctx).metrics

    def result(self, params: Point, ctx: PointContext | None = None) -> PointResult:
        """Run one point: its metrics, the (lo, hi, level) of those it gave an interval for, and its reason."""
        raw = self.run(params, ctx) if self.takes_context else self.run(params)
        return PointResult(normalise_metrics(raw), metric_intervals(raw), point_reason(raw))


class PointResult(NamedTuple):
    """One point's result, normalised: {metric: (value, unit)}, {metric: (lo, hi, level)} of the metrics that have
    an interval, and why it has no result for some metrics (`REASON`; None when it gave none)."""

    metrics: dict[str, tuple[float, str]]
    intervals: dict[str, tuple[float, float, float]]
    reason: str | None


def point_reason(raw: Any) -> str | None:
    """The text a point function gave under `REASON` (one line), or None for none or empty text."""
    reason = raw.get(REASON) if isinstance(raw, Mapping) else None
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise StudyError(f"{REASON!r} is why the point has no result, as text; got {reason!r}")
    return " ".join(reason.split()) or None


def metric_intervals(raw: Any) -> dict[str, tuple[float, float, float]]:
    """The prediction intervals a point function gave, as (lo, hi, level) per metric: a metric's value may be
    `(value, unit, interval)` with an interval that has `lo`, `hi`, `level` (`hwmodels.intervals.Interval`)."""
    out = {}
    for metric, value in raw.items() if isinstance(raw, Mapping) else ():
        if isinstance(value, tuple) and len(value) == 3:
            iv = value[2]
            try:
                out[metric] = (float(iv.lo), float(iv.hi), float(iv.level))
            except (AttributeError, TypeError, ValueError):
                raise StudyError(f"metric {metric!r}: the third element must be an interval (lo, hi, level), "
                                 f"got {iv!r}") from None
    return out


INTERVAL_METHODS = ("corner", "sampled")


def attach_intervals(runs: Mapping[str, Mapping[str, MetricValue]], metrics: Iterable[str], *,
                     level: float | None = None, calibrated: bool = True, note: str = "") -> dict[str, Any]:
    """The point run's metrics (`runs["point"]`) with `(value, unit, interval)` for each of `metrics` it has,
    the interval spanned by the corner runs (`runs["slow"]`, `runs["fast"]`; see
    `hwmodels.intervals.corner_runs`). For studies that cache or combine runs before attaching intervals
    (weight_sync derives `gen_time_s` from each corner's stall and decode step)."""
    from fabricsim.hwmodels.intervals import LEVEL, attach_corner_intervals

    return attach_corner_intervals(runs, metrics, level=LEVEL if level is None else level, calibrated=calibrated,
                                   note=note)


def with_intervals(run: Callable[[Any], Mapping[str, MetricValue]], topo: Any, metrics: Iterable[str], *,
                   method: str = "corner", level: float | None = None, samples: int | None = None,
                   mirror: bool = False) -> dict[str, Any]:
    """`run(topo)`'s metrics, with a prediction interval on each of `metrics` (`(value, unit, interval)`, which
    the sweep stores as the row's `lo`, `hi`, `level`): one call turns a point function's result into one
    that carries intervals.

    `run` takes a `Topology` and returns `{metric: value | (value, unit)}`; it is re-run on other topologies
    built from `topo` and its calibration profile's spreads (`hwmodels.intervals`). `method="corner"` (the
    default, for sweeps) re-runs it twice, on the slow and the fast corner (once with `mirror`);
    `method="sampled"` re-runs it `samples` times (32 by default) on randomly perturbed topologies, the
    interval `fabricsim simulate` prints, too slow for most sweeps. Name only metrics an interval means
    something for (times, rates): counts and byte totals do not move with the hardware's parameters."""
    from fabricsim.hwmodels import intervals as hi

    level = hi.LEVEL if level is None else level
    metrics = list(metrics)
    if method == "corner":
        runs = hi.corner_runs(run, topo, level=level, mirror=mirror)
        return attach_intervals(runs, metrics, level=level, calibrated=topo.calibration_id is not None,
                                note=topo.calibration_note)
    if method != "sampled":
        raise StudyError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    point = dict(run(topo))

    def values(got: dict) -> dict[str, float]:
        return {k: float(v[0] if isinstance(v, tuple) else v) for k, v in got.items() if k in metrics}

    ivs = hi.intervals_over(lambda t: values(run(t)), topo, samples=hi.SAMPLES if samples is None else samples,
                            level=level, point=values(point))
    return {k: hi.with_interval(v, ivs[k]) if k in ivs and math.isfinite(ivs[k].value) else v
            for k, v in point.items()}


def normalise_metrics(raw: Any) -> dict[str, tuple[float, str]]:
    """{metric: value | (value, unit) | (value, unit, interval)} -> {metric: (float, unit)}; anything else is a
    StudyError (intervals: `metric_intervals`)."""
    if not isinstance(raw, Mapping) or not set(raw) - {REASON}:
        raise StudyError(f"point function must return a non-empty dict of metrics, got {type(raw).__name__}"
                         + (f" with {REASON!r} alone (say it beside a metric, e.g. feasible = 0)"
                            if isinstance(raw, Mapping) and raw else ""))
    out: dict[str, tuple[float, str]] = {}
    for metric, value in raw.items():
        if metric == REASON:
            continue
        if not isinstance(metric, str) or not metric:
            raise StudyError(f"metric names must be non-empty strings, got {metric!r}")
        unit = ""
        if isinstance(value, tuple):
            if len(value) not in (2, 3) or not isinstance(value[1], str):
                raise StudyError(f"metric {metric!r}: expected value or (value, unit) (or (value, unit, interval)), "
                                 f"got {value!r}")
            value, unit = value[:2]
        try:
            out[metric] = (float(value), unit)
        except (TypeError, ValueError, OverflowError):
            raise StudyError(f"metric {metric!r}: value {value!r} is not a number") from None
        if math.isinf(out[metric][0]):  # a division by a zero time, say: a failed point, not a result to plot
            raise StudyError(f"metric {metric!r} is {out[metric][0]}: infinite, not a result")
    return out


# --------------------------------------------------------------------------------------------- loading

def _study_dirs() -> tuple[Path, ...]:
    """Where a study NAME is looked up: ./studies first (a user's own), then the bundled studies. Those ship as
    the package `fabricsim.studies`; its folder is found through the import system (installed, editable or a
    checkout) without importing it: studies are files the harness loads by path, not code it depends on."""
    spec = importlib.util.find_spec("fabricsim.studies")
    bundled = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    return (Path("studies"), *(Path(p) for p in bundled))


def study_files() -> list[tuple[Path, bool]]:
    """Every study `fabricsim sweep NAME` can run, one file per NAME (a study in ./studies hides the bundled one
    of the same name, as the lookup does), sorted by name, each with whether it is a bundled study."""
    local, *bundled = _study_dirs()
    bundled_dirs = {folder.resolve() for folder in bundled}
    found: dict[str, Path] = {}
    for folder in (local, *bundled):
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                if not path.name.startswith("_"):
                    found.setdefault(path.stem, path)
    return [(found[name], found[name].parent.resolve() in bundled_dirs) for name in sorted(found)]


STUDY_ACCEPTED = "a study is a .py file or a study's name (`fabricsim sweep --list` lists them)"


def resolve_study_path(spec: str | Path) -> Path:
    """A study argument is a path to a .py file, or a NAME looked up as studies/NAME.py (in the current
    directory, then beside the installed package). Any other file is refused before it is run: a study file is
    executed as Python, and `sweep requests.csv` said 'failed to load: NameError: name 'arrival_s' is not
    defined'."""
    path = Path(spec)
    if path.suffix == ".py":
        if not path.is_file():
            raise StudyError(f"study file {path} does not exist")
        return path
    for folder in _study_dirs():
        candidate = folder / f"{spec}.py"
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise StudyError(f"{path} is a folder: {STUDY_ACCEPTED}")
    if path.exists():
        raise StudyError(f"{path}: not a study file: {STUDY_ACCEPTED}")
    raise StudyError(
        f"no study named {str(spec)!r} (looked for studies/{spec}.py); pass a path to a study file"
    )


def load_study_source(source: str, path: str | Path) -> Study:
    """Execute a study file's text and return its STUDY (used by workers that receive the source, so a
    remote Ray worker need not have the file)."""
    path = Path(path)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    mod_name = f"_fabricsim_study_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    if mod_name in sys.modules:
        module = sys.modules[mod_name]
    else:
        spec = importlib.util.spec_from_loader(mod_name, loader=None, origin=str(path))
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(path)
        # Registered before exec so dataclasses and pickling by reference can find the module.
        sys.modules[mod_name] = module
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)
        except FabricsimError:
            del sys.modules[mod_name]
            raise
        except Exception as exc:
            del sys.modules[mod_name]
            raise StudyError(f"study file {path} failed to load: {type(exc).__name__}: {exc}") from exc
    study = getattr(module, "STUDY", None)
    if study is None:
        raise StudyError(
            f"study file {path} defines no STUDY (expected STUDY = Study(name=..., grid=Grid(...), run=fn))"
        )
    if not isinstance(study, Study):
        kind = type(study).__name__
        raise StudyError(f"study file {path}: STUDY must be a fabricsim.harness.study.Study, got {kind}")
    if study.path is None:
        object.__setattr__(study, "path", path)
    return study


def load_study(spec: str | Path) -> Study:
    """Load `studies/NAME.py` or a path to a study file; StudyError says what is missing."""
    path = resolve_study_path(spec)
    source = read_text(path, StudyError, "study file")
    return load_study_source(source, path)
