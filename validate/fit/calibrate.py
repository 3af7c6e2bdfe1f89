"""`fabricsim calibrate MEASURED PROFILE`: fit a calibration profile from the calibration subset only.

What is fitted, in order, each step on the cases that expose exactly that mechanism:

1. per path class (lone copy-engine copies, pinned host memory): latency = time of the smallest copy less
   its bytes at full rate; bandwidth = largest size over its time less latency; a size-efficiency point
   at every calibration size so that latency + bytes / (bandwidth x efficiency) reproduces it;
   link capacities: where one copy of a class runs faster than the preset's narrowest link on its route,
   that link kind's capacity is raised to the best such rate (`links`); a slower copy only sets its
   class's per-flow rate (one copy measures its DMA engine, not the link, so it cannot lower a link);
2. shared caps, each only where the profile so far predicts the case faster than measured (by > 3%), its
   capacity found by bisection on the simulated makespan: the host's aggregate per direction (every GPU
   at once), a per-GPU duplex cap (H2D and D2H together on one GPU), a host duplex cap (every GPU, both
   directions), an NVLink duplex cap;
3. engine discipline per class: two equal copies of one class on one GPU are simulated both ways, with the
   caps, and the discipline whose finish and service times (by rank) are closer wins (fair sharing
   finishes both together; FIFO one after the other);
4. NCCL, per collective with two calibration sizes or more: a fixed cost, a bus-bandwidth ceiling on its
   ring transfers and a size-efficiency point at every calibration size (`collectives`, `fit_collective`);
   a collective without its own sizes borrows broadcast's fit, and its `fitted_on` says so;
5. CUDA IPC: open and close cost as a + b x bytes (`software_costs`).

Held-out cases are never read. The split is today's case list's by default (`split="current"`, see
`validate.measurements.with_split`); `split="file"` keeps the one recorded at measuring time. The
profile records what it was fitted on, from which file, with which split, and the machine facts
(provenance), so a report can say exactly what was predicted and what was fitted.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabricsim.errors import CalibrationError, FabricsimError
from fabricsim.hwmodels.calibration import CalibrationProfile, CapSpec, CollectiveParams, PathParams, SoftwareCost
from fabricsim.hwmodels.presets import DEFAULT_PROFILES
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore.collectives import ring_schedule
from fabricsim.validate.cases import CALIBRATION, NCCL_OPS, Case
from fabricsim.validate.gpu.measure import IPC_CLOSE_TIMING
from fabricsim.validate.measurements import Measurements, load_measurements, with_split

from .simulate import base_topology, measured_makespan, measured_order, predicted_order, simulate_case

SLOWER_BY = 0.03
LINK_ABOVE_BY = 0.001
EFF_TOLERANCE = 0.001  # a lone copy this much faster than its route's narrowest link raises that link
CAP_MIN_BYTES = 64 << 20  # a cap is added only where the model so far is this much faster than measured


def _lone_ce(case: Case) -> bool:
    return case.group == "copies" and len(case.xfers) == 1 and not case.kernels and case.xfers[0].mech == "ce"


def fit_path(points: list[tuple[int, float]]) -> PathParams:
    """Latency, bandwidth and size efficiency from (bytes, seconds) of lone copies of one class."""
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
        eff.append((float(s), float(min(1.0, max(1e-3, e)))))
    return PathParams(latency_s=lat, bandwidth_Bps=bw, size_efficiency=tuple(eff), discipline="fair")


def _profile(base: CalibrationProfile, **kw: Any) -> CalibrationProfile:
    return replace(base, **kw)


def _err_order(case: Case, m: dict[str, Any], topo: Topology) -> float:
    """Mean relative error of the k-th earliest finish and of the k-th shortest service time.

    Finish times alone cannot tell FIFO from fair when measured order varies; service times (own-stream
    durations: a queued copy's clock starts when its engine takes it) can.
    """
    fin_p, own_p = predicted_order(simulate_case(case, topo))
    fin_m, own_m = measured_order(case, m)
    errs = [abs(p / q - 1) for p, q in zip(fin_p, fin_m, strict=True)]
    errs += [abs(p / q - 1) for p, q in zip(own_p, own_m, strict=True)]
    return statistics.fmean(errs)


def _bisect_cap(case: Case, measured_s: float, make: Callable[[float], Topology], hi: float) -> float:
    """Largest cap (bytes/s) for which the simulated makespan still reaches the measured one."""
    lo = hi / 100
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if simulate_case(case, make(mid)).makespan_s > measured_s:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def calibrate(m: Measurements, *, profile_id: str | None = None, source_sha256: str = "",
              split: str = "current") -> CalibrationProfile:
    """Fit a profile on `m`'s calibration cases (see the module docstring for what and how)."""
    m, resplit = with_split(m, split)
    base_topo = base_topology(m)
    cal = m.split(CALIBRATION)
    meas = m.measured
    notes: list[str] = []
    name = DEFAULT_PROFILES.get(m.preset or "", m.preset or "custom")
    date = str(m.doc.get("created_at", ""))[:10].replace("-", "")
    profile = CalibrationProfile(
        id=profile_id or f"{name}-{date or 'undated'}", machine=str(m.machine.get("kind") or m.preset),
        gpu_model=str(m.machine["gpu_model"]), gpus=int(m.machine["gpus"]),
    )

    # 1. path classes from lone copy-engine copies
    by_class: dict[str, list[tuple[int, float]]] = {}
    for c in cal:
        if _lone_ce(c):
            x = c.xfers[0]
            cls = base_topo.path(x.src, x.dst, x.bytes).path_class
            by_class.setdefault(cls, []).append((x.bytes, meas[c.id]["makespan_s"]))
    if not by_class:
        raise CalibrationError(f"{m.source}: no lone copy-engine copies in the calibration subset")
    paths = {cls: fit_path(pts) for cls, pts in sorted(by_class.items())}
    links = fit_links(base_topo, paths)
    for kind, bps in sorted(links.items()):
        notes.append(f"links.{kind}: {bps / 1e9:.1f} GB/s per direction (preset "
                     f"{_widest_link(base_topo, kind) / 1e9:.1f} GB/s): one copy ran faster than the preset's link")
    profile = _profile(profile, paths=paths, links=links)

    # 2. shared caps, where the model so far is faster than measured. Every cap case puts at most one
    # copy on each engine, so caps do not depend on the discipline; the discipline cases do feel the caps.
    gpus = base_topo.gpus()
    for c in cal:
        if c.group != "copies" or c.kernels or len(c.xfers) < 2:
            continue
        classes = {base_topo.path(x.src, x.dst).path_class for x in c.xfers}
        issuers = {x.issuer for x in c.xfers}
        if len(issuers) == 1 and len(classes) == 1:
            continue  # an engine case: discipline, not a cap
        if min(x.bytes for x in c.xfers) < CAP_MIN_BYTES:
            continue  # caps are about bandwidth: fit them where latency does not matter
        kind = _cap_kind(classes, issuers, gpus)
        if kind is None:
            continue
        what, spec_of = kind
        if any(cap.name == spec_of(1.0)[0].name for cap in profile.caps):
            continue
        measured = measured_makespan(c, meas[c.id])
        topo_now = base_topo.with_calibration(profile)
        predicted = simulate_case(c, topo_now).makespan_s
        if predicted >= measured * (1 - SLOWER_BY):
            notes.append(f"{what}: no cap needed (case {c.id}: predicted {predicted * 1e3:.3f} ms, "
                         f"measured {measured * 1e3:.3f} ms)")
            continue
        total = sum(x.bytes for x in c.xfers)

        def make(bps: float, spec_of: Callable = spec_of, before: CalibrationProfile = profile) -> Topology:
            return base_topo.with_calibration(_profile(before, caps=before.caps + tuple(spec_of(bps))))

        bps = _bisect_cap(c, measured, make, hi=2 * total / predicted)
        profile = _profile(profile, caps=profile.caps + tuple(spec_of(bps)))
        notes.append(f"{what}: cap {bps / 1e9:.1f} GB/s (case {c.id})")

    # 3. engine discipline, from two equal copies of one class on one GPU
    for c in cal:
        if c.group != "copies" or len(c.xfers) < 2 or c.kernels:
            continue
        classes = {base_topo.path(x.src, x.dst).path_class for x in c.xfers}
        issuers = {x.issuer for x in c.xfers}
        if len(classes) != 1 or len(issuers) != 1:
            continue
        cls = classes.pop()
        if cls not in paths:
            continue
        errs = {}
        for disc in ("fair", "fifo"):
            trial = _profile(profile, paths={**profile.paths, cls: replace(paths[cls], discipline=disc)})
            errs[disc] = _err_order(c, meas[c.id], base_topo.with_calibration(trial))
        best = min(errs, key=errs.get)
        paths[cls] = replace(paths[cls], discipline=best)
        profile = _profile(profile, paths=dict(paths))
        notes.append(f"{cls}: discipline {best} (finish+service error by rank: fair {errs['fair']:.1%}, "
                     f"fifo {errs['fifo']:.1%}; case {c.id})")

    # 4. NCCL: fixed cost and bus-bandwidth ceiling per collective
    collectives: dict[str, CollectiveParams] = {}
    topo_now = base_topo.with_calibration(profile)
    for op in NCCL_OPS:
        oc = [c for c in cal if c.group == "nccl" and c.op == op]
        if len(oc) >= 2:
            cp = fit_collective(oc, meas, topo_now)
            collectives[op] = cp
            effs = ", ".join(f"{e:.2f}" for _, e in cp.size_efficiency)
            notes.append(f"nccl {op}: fixed cost {cp.fixed_s * 1e6:.1f} us, bus bandwidth {cp.bus_Bps / 1e9:.1f} "
                         f"GB/s, size efficiency {effs} ({len(oc)} calibration sizes)")
    if "broadcast" in collectives:
        for op in NCCL_OPS:
            if op not in collectives and any(c.group == "nccl" and c.op == op for c in m.cases):
                collectives[op] = collectives["broadcast"]
                notes.append(f"nccl {op}: no calibration sizes; borrows broadcast's fit (its fitted_on says so)")
    profile = _profile(profile, collectives=collectives)

    # 5. CUDA IPC software costs
    ipc = [c for c in cal if c.group == "ipc"]
    if len(ipc) >= 2:
        costs = {}
        keys = ["open_s"]
        if (m.doc.get("settings") or {}).get("ipc_close_timing") == IPC_CLOSE_TIMING:
            keys.append("close_s")
        else:
            notes.append("cuda ipc: close not fitted (this file timed close with a garbage collection inside)")
        for key in keys:
            a, b = _linear_fit(sorted((c.bytes, meas[c.id][key]) for c in ipc), rate=False)
            costs[key.removesuffix("_s")] = SoftwareCost(a, max(0.0, b))
        profile = _profile(profile, software_costs={"cuda_ipc": costs})

    facts = {k: m.machine.get(k) for k in ("kind", "preset", "gpu_name", "gpus", "torch", "cuda", "nccl", "triton",
                                           "CUDA_DEVICE_MAX_CONNECTIONS")}
    prov = {
        "fitted_by": "fabricsim calibrate",
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "measured_at": m.doc.get("created_at"),
        "measurements": Path(m.source).name,
        "measurements_sha256": source_sha256,
        "machine": facts,
        "calibration_cases": sorted(c.id for c in cal),
        "held_out_cases": len(m.cases) - len(cal),
        "split": split,
        "split_changed_from_file": resplit,
        "notes": notes,
    }
    return _profile(profile, provenance=prov)


def _cap_kind(classes: set[str], issuers: set[str],
              all_gpus: list[str]) -> tuple[str, Callable[[float], list[CapSpec]]] | None:
    """Which shared cap a concurrency case can reveal, and how to build it for a capacity."""
    if classes == {"p2p-nvlink"}:
        return "NVLink duplex", lambda bps: [CapSpec("nvlink-duplex", bps, ("p2p-nvlink",))]
    if not classes <= {"h2d", "d2h"}:
        return None
    cls = tuple(sorted(classes))
    if len(issuers) == 1:
        # Fitted on one GPU, applied to every GPU of the machine (the same hardware behind each).
        return "per-GPU duplex", lambda bps: [CapSpec(f"{g}.pcie-duplex", bps, cls, (g,)) for g in all_gpus]
    if len(cls) == 1:
        return f"host aggregate {cls[0]}", lambda bps: [CapSpec(f"host-{cls[0]}", bps, cls)]
    return "host duplex", lambda bps: [CapSpec("host-duplex", bps, cls)]


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


def _linear_fit(pts: list[tuple[int, float]], rate: bool = True) -> tuple[float, float]:
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


def _lone_route(topo: Topology, cls: str) -> tuple[str, str] | None:
    """One (src, dst) pair whose copy is of class `cls` on `topo`, or None."""
    for src in topo.endpoints():
        for dst in topo.endpoints():
            try:
                if topo.path(src, dst).path_class == cls:
                    return src, dst
            except FabricsimError:
                continue  # unreachable pairs simply do not qualify
    return None


def _widest_link(topo: Topology, kind: str) -> float:
    return max(max(d["bw"].values()) for _a, _b, d in topo.graph.edges(data=True) if d["kind"] == kind)


def fit_links(topo: Topology, paths: dict[str, PathParams]) -> dict[str, float]:
    """Link capacities (per direction, of the widest links of each kind) that lone copies show to be higher
    than the preset's: where a class's fitted rate exceeds the narrowest resource on its route and that
    resource is a link, the link's kind is raised to that rate (the best over classes, scaled to the kind's
    widest link). Rates below the preset's links set only per-flow caps (see the module docstring)."""
    caps = topo.resources()
    out: dict[str, float] = {}
    for cls, pp in paths.items():
        pair = _lone_route(topo, cls)
        if pair is None or pp.bandwidth_Bps is None:
            continue
        route = topo.path(*pair)
        res, coeff = min(route.resources, key=lambda rc: caps[rc[0]] / rc[1])
        if "->" not in res or pp.bandwidth_Bps <= caps[res] / coeff * (1 + LINK_ABOVE_BY):
            continue
        u, v = res.split("->")
        kind = topo.graph.edges[u, v]["kind"]
        want = pp.bandwidth_Bps * coeff * _widest_link(topo, kind) / caps[res]
        # The next resource on the route may bind once this link is raised; that is the copy's rate then.
        out[kind] = max(out.get(kind, 0.0), want)
    return out


def calibrate_file(measured: str | Path, out: str | Path, *, profile_id: str | None = None,
                   split: str = "current") -> CalibrationProfile:
    """Load, fit, write the profile atomically; returns it."""
    m = load_measurements(measured)
    path = Path(m.source)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    profile = calibrate(m, profile_id=profile_id, source_sha256=sha, split=split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)
    return profile
