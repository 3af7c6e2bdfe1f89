"""The last step of `calibrate`: how far off each fitted mechanism is where it was not fitted.

Only calibration cases are read (held-out cases stay for `report` to judge the intervals by):

- path classes: leave one size out. Each calibration size of a lone-copy sweep is predicted by the path
  fitted on the other sizes (`fit_path`), the way a held-out size between two calibration sizes is; the log
  residual goes to the group of its size (`latency.CLASS` < 1 MiB, `mid.CLASS`, `rate.CLASS` >= 64 MiB);
- shared caps: the caps reproduce each cap case's makespan by construction, so what is left is how far the
  k-th earliest finish of each calibration concurrency case stays off (`concurrency`);
- collectives: leave one size out through `fit_collective` (`collective.OP.fixed|mid|bus`).

Each group's residuals become a spread (`hwmodels.uncertainty.spread_from_residuals`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.calibration import MECHANISMS, CollectiveParams, PathParams
from fabricsim.hwmodels.uncertainty import Uncertainty, size_group, spread_from_residuals
from fabricsim.validate.cases import NCCL_OPS, Case

from .mechanisms import MECHANISM_MAX_EFFICIENCY, fit_collective, fit_path, lone_ce, lone_copies
from .simulate import measured_order, predicted_order, simulate_case

if TYPE_CHECKING:
    from .state import FitState

METHOD = ("leave-one-size-out residuals of the calibration split (path classes, collectives); per-copy finish "
          "residuals of the calibration concurrency cases (caps)")


def lone_copy_time(pp: PathParams, nbytes: float) -> float:
    """What a lone copy takes under `pp` alone: latency + bytes / (rate x efficiency)."""
    return (pp.latency_s or 0.0) + nbytes / ((pp.bandwidth_Bps or math.inf) * pp.efficiency(nbytes))


def path_residuals(points: list[tuple[int, float]], max_efficiency: float = 1.0) -> list[tuple[int, float]]:
    """(bytes, log(predicted / measured)) for each size, predicted by the path fitted on the other sizes."""
    sizes = sorted({s for s, _ in points})
    out = []
    if len(sizes) < 3:
        return out
    for s in sizes:
        rest = [(b, t) for b, t in points if b != s]
        pp = fit_path(rest, max_efficiency)
        for b, t in points:
            if b == s:
                out.append((s, math.log(lone_copy_time(pp, s) / t)))
    return out


def fit_spreads(st: FitState) -> Uncertainty:
    """The profile's `uncertainty` from the calibration cases of `st` (see the module docstring)."""
    groups: dict[str, list[float]] = {}
    by_class: dict[str, list[tuple[int, float]]] = {}
    for c in st.cal:
        if lone_ce(c):
            x = c.xfers[0]
            cls = st.base_topo.path(x.src, x.dst, x.bytes).path_class
            by_class.setdefault(cls, []).append((x.bytes, st.meas[c.id]["makespan_s"]))
    for cls, pts in by_class.items():
        for s, e in path_residuals(pts):
            groups.setdefault(f"{size_group(s)}.{cls}", []).append(e)
    for mech in MECHANISMS:
        for cls, pts in lone_copies(st.cal, st.meas, st.base_topo, mech).items():
            for s, e in path_residuals(pts, MECHANISM_MAX_EFFICIENCY):
                groups.setdefault(f"{size_group(s)}.{mech}:{cls}", []).append(e)
    topo = st.topo()
    for c in st.cal:
        if c.group != "copies" or len(c.xfers) < 2 or c.kernels:
            continue
        fin_m, _ = measured_order(c, st.meas[c.id])
        fin_p, _ = predicted_order(simulate_case(c, topo))
        groups.setdefault("concurrency", []).extend(math.log(p / q) for p, q in zip(fin_p, fin_m, strict=True))
    for op in NCCL_OPS:
        for c, e in _collective_residuals([c for c in st.cal if c.group == "nccl" and c.op == op], st):
            groups.setdefault(f"collective.{op}.{size_group(c.bytes).replace('latency', 'fixed')}"
                              .replace(".rate", ".bus"), []).append(e)
    return Uncertainty({g: spread_from_residuals(es) for g, es in groups.items()}, METHOD)


def _collective_residuals(cases: list[Case], st: FitState) -> list[tuple[Case, float]]:
    if len(cases) < 3:
        return []
    topo = st.topo()
    out = []
    for c in cases:
        rest = [x for x in cases if x is not c]
        try:
            cp = fit_collective(rest, st.meas, topo)
        except FabricsimError:
            continue
        pred = simulate_case(c, topo, {c.op: CollectiveParams(cp.bus_Bps, cp.fixed_s, cp.size_efficiency)})
        out.append((c, math.log(pred.makespan_s / float(st.meas[c.id]["makespan_s"]))))
    return out
