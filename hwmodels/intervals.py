"""Prediction intervals: sample the calibration profile's parameters, re-run the prediction, read the spread.

`predict_interval(run, topo)` calls `run(topology)` once on `topo` (the point prediction, unless the caller hands
it over as `point`) and once on each of `samples` perturbed copies of it. A perturbed copy multiplies every
parameter group of `hwmodels.uncertainty` by one log-normal factor drawn with that group's spread: path
latencies, mid-size efficiencies, per-flow rates (with the link direction each class runs on, so a faster draw is
not clipped by the link), calibrated shared caps, HBM, collectives. Uncalibrated topologies perturb link
capacities and latencies per link kind with the wide a priori spread. Only topology objects change: any engine,
workload or study that takes a topology gets an interval without knowing how it was made.

The interval is the point prediction times exp(mean ± z·sd) of the log ratios sample / point (z for the
level), widened to contain the point itself: with a few dozen samples a log-normal summary is steadier than
empirical 5%/95% quantiles. Seeds are fixed, so the same call gives the same interval.

Sampling costs `samples` re-runs; sweeps use corner intervals instead (`corner_intervals`, `corner_topology`):
two re-runs, on the topologies where every group is moved by z·sigma toward slow and toward fast, which at
first order bound the sampled interval from outside (see `corner_intervals` for why, and where they do not;
on 24 study metrics their width was 0.83-1.38 times a 256-sample interval's, `benchmarks/corner_vs_sampled.py`).
"""

from __future__ import annotations

import argparse
import copy
import math
import numbers
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fabricsim.errors import CalibrationError

from .calibration import MECHANISMS, CollectiveParams, PathParams
from .topology import Topology
from .uncertainty import LARGE_BYTES, SMALL_BYTES, UNCALIBRATED, UNFITTED_MECHANISM_SIGMA, Uncertainty

LEVEL = 0.9
SAMPLES = 32
MAX_SAMPLES = 10_000  # each sample re-runs the whole simulation: beyond this a run looks like a hang


class IntervalError(CalibrationError, ValueError):
    """An interval asked for with a bad level, sample count or corner, or of a run that gave no number: a typed
    error (one line, exit 2 in the CLI), and still the ValueError these checks raised before."""


@dataclass(frozen=True)
class Interval:
    """A prediction with its interval: `lo <= value <= hi` at confidence `level`; `note` says what it rests on."""

    value: float
    lo: float
    hi: float
    level: float = LEVEL
    calibrated: bool = True
    note: str = ""

    def format(self, scale: float = 1e3, unit: str = "ms", digits: int = 1) -> str:
        """'54.3 ms [49.1, 60.2] (90%)', with '(90%, uncalibrated)' where no profile backs it."""
        tag = f"{self.level:.0%}" + ("" if self.calibrated else ", uncalibrated: datasheet defaults")
        v, lo, hi = (x * scale for x in (self.value, self.lo, self.hi))
        return f"{v:.{digits}f} {unit} [{lo:.{digits}f}, {hi:.{digits}f}] ({tag})"

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def to_dict(self) -> dict[str, float | str | bool]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "level": self.level,
                "calibrated": self.calibrated}


def uncertainty_of(topo: Topology) -> Uncertainty:
    """The spreads a topology's predictions carry: its profile's, or the wide a priori one."""
    if topo.calibration_id is None:
        return UNCALIBRATED
    return topo.uncertainty or Uncertainty({}, "profile without residuals: a priori spread")


def perturbed(topo: Topology, rng: np.random.Generator, unc: Uncertainty | None = None) -> Topology:
    """A copy of `topo` with one draw of every parameter group (see the module docstring)."""
    unc = unc or uncertainty_of(topo)
    factors: dict[str, float] = {}

    def f(key: str, group: str) -> float:
        if key not in factors:
            factors[key] = math.exp(rng.normal(0.0, unc.sigma(group)))
        return factors[key]

    t = _rescaled(topo, f)
    # Unfitted mechanisms draw from a child generator: the draws above stay what they were before they existed.
    side = rng.spawn(1)[0]
    for m in MECHANISMS:  # one-sided: the pinned copy engine is the fast way; the unknown one is as fast or slower
        lat, rate = np.abs(side.normal(0.0, UNFITTED_MECHANISM_SIGMA, 2))
        t.unfitted_mechanism_scale[m] = (math.exp(lat), math.exp(-rate))
    return t


def _rescaled(topo: Topology, factor: Callable[[str, str], float]) -> Topology:
    """A copy of `topo` with every parameter multiplied by `factor(key, group)`: `key` names the parameter (one
    factor per key), `group` the `Uncertainty` group whose spread it has. Keys are the group names except for
    shared caps (`cap:KIND`, one per kind of cap, all with the `concurrency` spread). `perturbed` draws the
    factors, `corner_topology` sets them; both walk the same parameters in the same order."""
    t = copy.deepcopy(topo)
    t._changed()  # the copy's parameters change below: nothing derived from the original carries over
    calibrated = topo.calibration_id is not None

    def f(group: str) -> float:
        return factor(group, group)

    for u, v, d in t.graph.edges(data=True):
        kind = d["kind"]
        if not calibrated:
            d["latency_s"] *= f(f"latency.{kind}")
            d["bw"] = {k: bw * f(f"rate.{kind}") for k, bw in d["bw"].items()}
            continue
        for a, b in ((u, v), (v, u)):
            cls = _class_of_direction(t, kind, a, b)
            if cls is not None:
                d["bw"][(a, b)] *= f(f"rate.{cls}")
    for name, cap in t.caps.items():
        if name.endswith(".hbm"):
            cap.Bps *= f("rate.d2d" if calibrated else "rate.hbm")
        elif name.endswith(".dram"):
            cap.Bps *= 1.0 if calibrated else f("rate.dram")
        else:
            # one factor per kind of cap (every GPU's duplex cap is the same hardware), all with one spread
            cap.Bps *= factor(f"cap:{name.rsplit('.', 1)[-1]}", "concurrency")
    t.path_params = {cls: _perturb_path(pp, cls, f) for cls, pp in t.path_params.items()}
    t.mechanisms = {m: {cls: _perturb_path(pp, f"{m}:{cls}", f) for cls, pp in v.items()}
                    for m, v in t.mechanisms.items()}
    t.collectives = {op: _perturb_collective(cp, op, f) for op, cp in t.collectives.items()}
    return t


def _class_of_direction(t: Topology, kind: str, a: str, b: str) -> str | None:
    """Which path class's rate a link direction carries: PCIe toward a GPU is H2D, away from it D2H; NVLink is
    peer traffic. Other links (DRAM, socket, network) keep their capacity."""
    if kind == "nvlink":
        return "p2p-nvlink"
    if kind != "pcie":
        return None
    if t.graph.nodes[b].get("kind") == "gpu":
        return "h2d"
    if t.graph.nodes[a].get("kind") == "gpu":
        return "d2h"
    return None


def _perturb_path(pp: PathParams, cls: str, f: Callable[[str], float]) -> PathParams:
    eff = tuple((s, e * f(f"mid.{cls}")) if SMALL_BYTES <= s < LARGE_BYTES else (s, e) for s, e in pp.size_efficiency)
    return replace(pp, latency_s=None if pp.latency_s is None else pp.latency_s * f(f"latency.{cls}"),
                   bandwidth_Bps=None if pp.bandwidth_Bps is None else pp.bandwidth_Bps * f(f"rate.{cls}"),
                   size_efficiency=eff)


def _perturb_collective(cp: CollectiveParams, op: str, f: Callable[[str], float]) -> CollectiveParams:
    g = f"collective.{op}"
    eff = tuple((s, e * f(f"{g}.mid")) if SMALL_BYTES <= s < LARGE_BYTES else (s, e) for s, e in cp.size_efficiency)
    return replace(cp, bus_Bps=cp.bus_Bps * f(f"{g}.bus"), fixed_s=cp.fixed_s * f(f"{g}.fixed"), size_efficiency=eff)


def interval_from_samples(point: float, samples: list[float], level: float = LEVEL, *, calibrated: bool = True,
                          note: str = "") -> Interval:
    """The interval around `point` that the sampled predictions give (see the module docstring)."""
    z = z_of(level)
    xs = [math.log(s / point) for s in samples if s > 0 and point > 0]
    if len(xs) < 2:
        return Interval(point, point, point, level, calibrated, note)
    mu, sd = statistics.fmean(xs), statistics.stdev(xs)
    return Interval(point, point * math.exp(min(0.0, mu - z * sd)), point * math.exp(max(0.0, mu + z * sd)), level,
                    calibrated, note)


def predict_interval(run: Callable[[Topology], float], topo: Topology, *, samples: int = SAMPLES,
                     level: float = LEVEL, seed: int = 0, point: float | None = None) -> Interval:
    """`run(topo)` with its interval: `run` re-run on `samples` perturbed copies of `topo`. `point`: `run(topo)`,
    when the caller has it (see `intervals_over`). `run` must return a finite number: a NaN made a NaN interval."""
    _check_samples(samples)
    z_of(level)  # before the re-runs: a level outside (0, 1) once failed after them, or printed "0%"
    point = _run_value(run(topo) if point is None else point, topo, "the point")
    rng = np.random.default_rng(seed)
    unc = uncertainty_of(topo)
    draws = [_run_value(run(perturbed(topo, rng, unc)), topo, f"perturbed sample {i}") for i in range(samples)]
    return interval_from_samples(point, draws, level, calibrated=topo.calibration_id is not None,
                                 note=topo.calibration_note)


def _run_value(value: Any, topo: Topology, which: str) -> float:
    """What `predict_interval`'s (or `corner_interval`'s) run returned, as a float: a finite number, else an error
    naming the value and the run (a NaN made a NaN interval, a string a TypeError deep in the arithmetic)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise IntervalError(f"interval on '{topo.name}': the run returned {value!r} for {which}; it must return a "
                            "finite number (a time in seconds, a rate)")
    return float(value)


def _check_samples(samples: int) -> None:
    """An interval needs a spread: at least two re-runs (one gave the point itself, labelled 90%)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise IntervalError(f"an interval needs at least 2 perturbed re-runs, got samples={samples!r}")


def intervals_over(run: Callable[[Topology], dict[str, float]], topo: Topology, *, samples: int = SAMPLES,
                   level: float = LEVEL, seed: int = 0, point: dict[str, float] | None = None) -> dict[str, Interval]:
    """Like `predict_interval` for several metrics of one run (one re-run per sample serves them all). `point`:
    `run(topo)`, when the caller has it already (a simulation is deterministic, so running it again gives the same
    numbers: on a 1,024-GPU sync that was one more whole sync per interval asked for). A metric that `run` gives as
    an int at the point and in every draw (a count: `ReportsMetrics.metrics()` gives whole-unit metrics as ints)
    gets whole-number ends (`whole_interval`): `serve` printed `steps 1163 [1160.9, 1165.36]`."""
    _check_samples(samples)
    z_of(level)
    point = run(topo) if point is None else point
    rng = np.random.default_rng(seed)
    unc = uncertainty_of(topo)
    draws = [run(perturbed(topo, rng, unc)) for _ in range(samples)]
    cal = topo.calibration_id is not None
    out = {}
    for k, v in point.items():
        got = [d[k] for d in draws if k in d]
        iv = interval_from_samples(v, got, level, calibrated=cal, note=topo.calibration_note)
        out[k] = whole_interval(iv) if all(isinstance(x, numbers.Integral) for x in (v, *got)) else iv
    return out


def whole_interval(iv: Interval) -> Interval:
    """The interval of a count: its low end floored and its high end ceiled (the point, a whole number, stays).

    The log-normal summary of the draws is continuous, so its ends fall between whole numbers. Rounding outward
    keeps every count the continuous interval reaches and so covers at least its level; rounding inward would
    name the same counts when the ends are read strictly, but could hide a spread the draws had (draws of 1162,
    1163 and 1164 summarised as [1162.6, 1163.4] would read [1163, 1163], no interval at all). The price is at
    most one count of width at each end."""
    return replace(iv, lo=math.floor(iv.lo), hi=math.ceil(iv.hi))


# --------------------------------------------------------------------------------------------- corners

CORNERS = ("slow", "fast")


def z_of(level: float) -> float:
    """The two-sided normal quantile of `level` (1.645 at 90%); a level outside (0, 1) has none (0 once made a
    zero-width interval labelled 0%, 1.5 a StatisticsError)."""
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise IntervalError(f"interval level must lie in (0, 1), got {level!r}")
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def slows_when_larger(key: str) -> bool:
    """Whether a larger factor on parameter `key` makes a prediction slower: fixed latencies and call costs do;
    rates, efficiencies, caps and bus bandwidths do the opposite."""
    return key.startswith("latency.") or key.endswith(".fixed")


def corner_topology(topo: Topology, corner: str = "slow", level: float = LEVEL,
                    unc: Uncertainty | None = None) -> Topology:
    """A copy of `topo` with every parameter group moved by z·sigma (z for `level`) in the direction that slows
    (`corner="slow"`) or speeds (`"fast"`) a prediction: latencies x exp(±z·sigma), rates / exp(±z·sigma).
    A mechanism without any fit (drawn one-sided by `perturbed`) is `UNFITTED_MECHANISM_SIGMA` slower at the
    slow corner and as fast as the copy engine at the fast one. Deterministic: no draws."""
    if corner not in CORNERS:
        raise IntervalError(f"corner must be one of {', '.join(CORNERS)}, got {corner!r}")
    unc = unc or uncertainty_of(topo)
    z = z_of(level)
    toward = 1.0 if corner == "slow" else -1.0

    def factor(key: str, group: str) -> float:
        return math.exp(toward * (1.0 if slows_when_larger(key) else -1.0) * z * unc.sigma(group))

    t = _rescaled(topo, factor)
    if corner == "slow":
        far = math.exp(z * UNFITTED_MECHANISM_SIGMA)
        for m in MECHANISMS:
            t.unfitted_mechanism_scale[m] = (far, 1.0 / far)
    return t


def interval_from_corners(point: float, corners: list[float], level: float = LEVEL, *, calibrated: bool = True,
                          note: str = "") -> Interval:
    """The interval the corner runs span, the point included: a metric that falls when times grow (a
    throughput) takes its low end from the slow corner. A single corner is mirrored in log space (`mirror`)."""
    vals = [point, *(c for c in corners if math.isfinite(c))]
    return Interval(point, min(vals), max(vals), level, calibrated, note)


def _mirrored(point: float, corner: float) -> float:
    """The other side of a one-corner interval: `corner` reflected around `point` in log space."""
    if point > 0 and corner > 0:
        return point * point / corner
    return point


def corner_runs(run: Callable[[Topology], Mapping[str, Any]], topo: Topology, *, level: float = LEVEL,
                mirror: bool = False) -> dict[str, Mapping[str, Any]]:
    """`run` on `topo` ("point") and on its corner topologies ("slow", "fast"; only "slow" with `mirror`)."""
    out: dict[str, Mapping[str, Any]] = {"point": run(topo)}
    unc = uncertainty_of(topo)
    for corner in CORNERS[:1] if mirror else CORNERS:
        out[corner] = run(corner_topology(topo, corner, level, unc))
    return out


def intervals_from_corner_runs(runs: Mapping[str, Mapping[str, Any]], metrics: Iterable[str] | None = None, *,
                               level: float = LEVEL, calibrated: bool = True, note: str = ""
                               ) -> dict[str, Interval]:
    """Per metric (all of the point run's, or `metrics`), the interval its corner runs span. Values may be
    numbers or (value, unit, ...) tuples; a metric missing or not finite at the point gets none."""
    def num(v: Any) -> float:
        return float(v[0] if isinstance(v, tuple) else v)

    point = runs["point"]
    out = {}
    for k in point if metrics is None else metrics:
        if k not in point or not math.isfinite(num(point[k])):
            continue
        p = num(point[k])
        cs = [num(r[k]) for c, r in runs.items() if c != "point" and k in r]
        cs = [c for c in cs if math.isfinite(c)]
        if set(runs) == {"point", "slow"}:
            cs += [_mirrored(p, c) for c in cs]
        elif len(cs) >= 2 and p > 0 and all(c > 0 for c in cs) and (all(c >= p for c in cs)
                                                                      or all(c <= p for c in cs)):
            # Not monotone: both corners on one side of the point (a slower latency that staggers copies
            # and so eases contention). The direction is unknown, the size is not: as far on both sides.
            d = max(abs(math.log(c / p)) for c in cs)
            cs = [p * math.exp(d), p * math.exp(-d)]
        out[k] = interval_from_corners(p, cs, level, calibrated=calibrated, note=note)
    return out


def attach_corner_intervals(runs: Mapping[str, Mapping[str, Any]], metrics: Iterable[str], *, level: float = LEVEL,
                            calibrated: bool = True, note: str = "") -> dict[str, Any]:
    """The point run's metrics (`runs["point"]`), each of `metrics` it has as `(value, unit, interval)` with the
    interval its corner runs span: the form a study's point function returns (`harness.study.metric_intervals`)."""
    ivs = intervals_from_corner_runs(runs, list(metrics), level=level, calibrated=calibrated, note=note)
    return {k: with_interval(v, ivs[k]) if k in ivs else v for k, v in runs["point"].items()}


def with_interval(value: Any, iv: Interval) -> tuple[float, str, Interval]:
    """A metric `value` or `(value, unit)` as `(value, unit, interval)`."""
    if isinstance(value, tuple):
        return (float(value[0]), str(value[1]), iv)
    return (float(value), "", iv)


def corner_intervals(run: Callable[[Topology], Mapping[str, float]], topo: Topology, *, level: float = LEVEL,
                     mirror: bool = False) -> dict[str, Interval]:
    """Like `intervals_over`, for two (or, with `mirror`, one) re-runs instead of dozens: every metric's interval
    from the point run and the runs on the slow and fast corner topologies (`corner_topology`).

    Why it stands in for the sampled interval: at first order a prediction's log time is a weighted sum of the
    groups' log factors, log T ≈ Σ s_g·x_g with x_g ~ N(0, sigma_g). Sampling gives a half-width z·sqrt(Σ
    (s_g·sigma_g)²); the corner moves every group by z·sigma_g in the slowing direction at once and gives
    z·Σ |s_g|·sigma_g, which is never smaller (an L1 norm bounds the L2 norm) and equal when one group carries
    the prediction (a lone copy: its latency or its rate). So the corner interval is conservative: at most
    sqrt(k) times as wide when k groups weigh equally. What it does not see: the spread and shift of the
    sampled values where the prediction bends (two links near a tie for the bottleneck: the slower of two
    independent draws spreads further than one common move), and a prediction that is not monotone in a
    parameter (a longer latency that staggers copies and eases contention). The interval spans the point and
    both corners; when both corners land on one side of the point, the direction is unknown and it spans the
    larger deviation on both sides. `benchmarks/corner_vs_sampled.py` compares the two on study points."""
    z_of(level)  # before the point run, which the corners' own check came after
    runs = corner_runs(run, topo, level=level, mirror=mirror)
    return intervals_from_corner_runs(runs, level=level, calibrated=topo.calibration_id is not None,
                                      note=topo.calibration_note)


def corner_interval(run: Callable[[Topology], float], topo: Topology, *, level: float = LEVEL,
                    mirror: bool = False) -> Interval:
    """`run(topo)` with its corner interval (`corner_intervals` for a single number); `run` must return a finite
    number (a NaN point had no interval and gave a bare KeyError)."""
    return corner_intervals(lambda t: {"value": _run_value(run(t), t, "a run (the point or a corner)")}, topo,
                            level=level, mirror=mirror)["value"]


def sample_count(text: str) -> int:
    """`--samples N` (argparse type for every command that prints intervals): how many perturbed re-runs make
    an interval, 0 for none; a negative count once ran the default number instead of refusing."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of re-runs, got {text!r}") from None
    if not (n == 0 or 2 <= n <= MAX_SAMPLES):
        # one re-run has no spread to read: its "interval" was the point itself, labelled 90%
        raise argparse.ArgumentTypeError(f"expected 0 (no interval) or 2 to {MAX_SAMPLES} re-runs, got {n}")
    return n


def say_calibration_note(topo: Topology) -> None:
    """Print `topo.calibration_note` (a profile fitted on another GPU count), if any, for every command that loads a
    topology: on stderr in every mode, like the other notes, since stdout holds the answer (JSON included)."""
    if topo.calibration_note:
        print(f"note: {topo.calibration_note}", file=sys.stderr)
