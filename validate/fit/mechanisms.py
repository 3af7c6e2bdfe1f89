"""The fits of single mechanisms, each from the cases that expose it: a path class from lone copies at
several sizes (`fit_path`), a collective from its calibration sizes (`fit_collective`), a software cost as a
line (`linear_fit`). `calibrate` composes them; `uncertainty` re-runs them leaving one size out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import CollectiveParams, PathParams
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore.collectives import ring_schedule
from fabricsim.validate.cases import Case

from .simulate import simulate_case

MECHANISM_MAX_EFFICIENCY = 20.0  # a mechanism's mid sizes may outrun its largest (see fit_path)
EFF_TOLERANCE = 0.001  # a collective already this close to measured at full bus bandwidth has efficiency 1


def lone_ce(case: Case) -> bool:
    return case.group == "copies" and len(case.xfers) == 1 and not case.kernels and case.xfers[0].mech == "ce"


def lone_copies(cases: list[Case], meas: dict[str, Any], topo: Topology,
                mech: str) -> dict[str, list[tuple[int, float]]]:
    """(bytes, seconds) of the lone copies by mechanism `mech` among `cases`, per path class on `topo`."""
    out: dict[str, list[tuple[int, float]]] = {}
    for c in cases:
        if c.group == "copies" and len(c.xfers) == 1 and not c.kernels and c.xfers[0].mech == mech:
            x = c.xfers[0]
            out.setdefault(topo.path(x.src, x.dst, x.bytes).path_class, []).append((x.bytes, meas[c.id]["makespan_s"]))
    return out


def fit_path(points: list[tuple[int, float]], max_efficiency: float = 1.0) -> PathParams:
    """Latency, bandwidth and size efficiency from (bytes, seconds) of lone copies of one class.

    `max_efficiency` above 1 lets mid sizes run faster than the largest (pageable staging: the largest copies
    are the slowest per byte); the links still cap the rate."""
    by_size: dict[int, list[float]] = {}
    for s, t in points:
        by_size.setdefault(int(s), []).append(float(t))
    pts = sorted((s, statistics.median(ts)) for s, ts in by_size.items())
    if len(pts) < 2:
        raise CalibrationError(f"need lone copies at two sizes or more to fit a path class, got {len(pts)}")
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    bw = s1 / t1
    lat = 0.0
    for _ in range(3):  # latency and bandwidth refer to each other; three rounds converge
        lat = max(0.0, t0 - s0 / bw)
        bw = s1 / max(t1 - lat, 1e-12)
    eff = []
    for s, t in pts:
        e = s / (max(t - lat, 1e-12) * bw)
        eff.append((float(s), float(min(max_efficiency, max(1e-3, e)))))
    return PathParams(latency_s=lat, bandwidth_Bps=bw, size_efficiency=tuple(eff), discipline="fair")


def fit_collective(cases: list[Case], meas: dict[str, Any], topo: Topology) -> CollectiveParams:
    """One collective's fixed cost, bus bandwidth and size efficiency, the way `fit_path` fits a path class:
    the fixed cost is the largest one all calibration sizes allow, the bus bandwidth comes from the largest
    size (each given the other, a few rounds), then at every calibration size the efficiency that makes the
    simulated time the measured one.

    Everything is solved on the simulator (path latency, links, caps included), so the parameters mean what
    `simulate_case` does with them; held-out sizes are predicted by interpolating the efficiency in log size.
    """
    op = cases[0].op
    n = len(topo.gpus())
    pts = sorted(cases, key=lambda c: c.bytes)
    large = pts[-1]

    def ring_bytes(c: Case) -> int:
        return max(t["bytes"] for t in ring_schedule(c.op, c.bytes, [f"gpu{i}" for i in range(n)]))

    def sim(c: Case, bus: float, fixed: float, eff: tuple[tuple[float, float], ...] = ()) -> float:
        return simulate_case(c, topo, {op: CollectiveParams(bus, fixed, eff)}).makespan_s

    def t(c: Case) -> float:
        return float(meas[c.id]["makespan_s"])

    def solve(f: Callable[[float], float], lo: float, hi: float) -> float:
        """x in [lo, hi] (log-bisection) where the decreasing f(x) crosses 0; an end if it never does."""
        if f(hi) >= 0:
            return hi
        if f(lo) <= 0:
            return lo
        for _ in range(50):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return math.sqrt(lo * hi)

    # A ring transfer cannot outrun the links it crosses: above that the bus bandwidth would not show.
    route = topo.path("gpu0", "gpu1")
    link = min(topo.resources()[r] / k for r, k in route.resources)
    bus, fixed = ring_bytes(large) / t(large), 0.0
    for _ in range(4):  # fixed cost and bus bandwidth refer to each other; a few rounds converge
        # The fixed cost adds once to the makespan. It is the largest one every calibration size allows: the
        # least overhead over bytes / bus that the sizes below the largest show (the largest sets the bus
        # bandwidth), so each size is at least fixed + bytes / bus and an efficiency <= 1 explains the rest.
        fixed = max(0.0, min(t(c) - sim(c, bus, 0.0) for c in pts[:-1]))
        bus = solve(lambda b, f=fixed: sim(large, b, f) - t(large), min(bus, link) / 4, min(bus * 4, link))
    def efficiency(c: Case) -> float:
        # Where the full bus bandwidth already gives the measured time (within 0.1%), the factor is 1: below
        # it the path's own rate may bind for a while, and the time would not tell the factors apart.
        if sim(c, bus, fixed) >= t(c) * (1 - EFF_TOLERANCE):
            return 1.0
        return solve(lambda e: sim(c, bus, fixed, ((1.0, e),)) - t(c), 1e-3, 1.0)

    eff = tuple((float(ring_bytes(c)), efficiency(c)) for c in pts)
    return CollectiveParams(bus, fixed, eff, tuple(c.id for c in cases))


def linear_fit(pts: list[tuple[int, float]], rate: bool = True) -> tuple[float, float]:
    """t = a + s / b (rate=True) or t = a + b * s, least squares weighted by 1/t (relative error)."""
    xs = [float(s) for s, _ in pts]
    ys = [float(t) for _, t in pts]
    ws = [1.0 / (y * y) for y in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    sxy = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0
    a = max(0.0, my - slope * mx)
    if rate:
        return a, (1.0 / slope if slope > 0 else float("inf"))
    return a, slope


