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

import math
import statistics
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabricsim.errors import CalibrationError, FabricsimError
from fabricsim.hwmodels.calibration import (
    MECHANISMS,
    CalibrationProfile,
    CapSpec,
    PathParams,
    SoftwareCost,
    load_profile,
)
from fabricsim.hwmodels.presets import DEFAULT_PROFILES
from fabricsim.hwmodels.topology import Topology
from fabricsim.validate.cases import CALIBRATION, NCCL_OPS, Case
from fabricsim.validate.gpu.measure import IPC_CLOSE_TIMING
from fabricsim.validate.measurements import Measurements, measurements_sha256, with_split

from .imports import load_any, merge
from .mechanisms import MECHANISM_MAX_EFFICIENCY, fit_collective, fit_path, linear_fit, lone_ce, lone_copies
from .simulate import base_topology, measured_makespan, measured_order, predicted_order, simulate_case
from .state import FitState

SLOWER_BY = 0.03
LINK_ABOVE_BY = 0.001
CAP_MIN_BYTES = 64 << 20  # a cap is added only where the model so far is this much faster than measured


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
              split: str = "current", base: CalibrationProfile | None = None) -> CalibrationProfile:
    """Fit a profile on `m`'s calibration cases (see the module docstring for what and how).

    `base`: a profile of the same GPU model to derive from; what `m` measures is refitted, the rest (path
    classes, caps, collectives, software costs it does not cover) is kept from `base`, and the notes say which.
    Without a base, `m` must hold lone copies of at least one path class at two sizes or more."""
    m, resplit = with_split(m, split)
    st = start_fit(m, profile_id, base)
    st.profile = fit_path_classes(st)
    st.profile = fit_mechanisms(st)
    st.profile = fit_shared_caps(st)
    st.profile = transfer_host_duplex(st)
    st.profile = fit_disciplines(st)
    st.profile = fit_collectives(st)
    st.profile = fit_software_costs(st)
    st.profile = fit_uncertainty(st)
    return with_provenance(st, source_sha256, split, resplit)


def start_fit(m: Measurements, profile_id: str | None, base: CalibrationProfile | None) -> FitState:
    """The empty profile (or `base`'s parameters under a new id) and the calibration cases."""
    base_topo = base_topology(m)
    name = DEFAULT_PROFILES.get(m.preset or "", m.preset or "custom")
    date = str(m.doc.get("created_at", ""))[:10].replace("-", "")
    profile = CalibrationProfile(
        id=profile_id or f"{name}-{date or 'undated'}", machine=str(m.machine.get("kind") or m.preset),
        gpu_model=str(m.machine["gpu_model"]), gpus=int(m.machine["gpus"]),
    )
    notes: list[str] = []
    if base is not None:
        if base.gpu_model != profile.gpu_model:
            raise CalibrationError(f"{m.source}: base profile '{base.id}' is for {base.gpu_model}, these measurements "
                                   f"are of {profile.gpu_model}")
        caps = _caps_for(base.caps, base_topo.gpus())
        if base.gpus != profile.gpus:
            # A host-wide cap (no endpoints) measured with another number of GPUs says nothing of this host's.
            dropped = [c.name for c in caps if not c.endpoints]
            caps = tuple(c for c in caps if c.endpoints)
            if dropped:
                notes.append(f"base caps {', '.join(dropped)} not carried over: fitted on a host with {base.gpus} "
                             f"GPUs, this one has {profile.gpus}")
        profile = _profile(profile, paths=dict(base.paths), links=dict(base.links),
                           caps=caps, collectives=dict(base.collectives),
                           software_costs={k: dict(v) for k, v in base.software_costs.items()},
                           mechanisms={k: dict(v) for k, v in base.mechanisms.items()})
        notes.append(f"derived from profile '{base.id}' ({base.gpus}x {base.gpu_model}, {base.machine}): what "
                     "these measurements do not cover is kept from it")
    return FitState(m, base_topo, m.split(CALIBRATION), profile, base, notes)


def _caps_for(caps: tuple[CapSpec, ...], gpus: list[str]) -> tuple[CapSpec, ...]:
    """A base profile's caps on this machine: a per-GPU cap (one endpoint, named after its GPU) is the same
    hardware behind every GPU, so it is repeated for each GPU here; caps naming GPUs this machine lacks go."""
    out: list[CapSpec] = []
    per_gpu: dict[str, CapSpec] = {}
    for c in caps:
        if len(c.endpoints) == 1 and c.name.startswith(f"{c.endpoints[0]}."):
            per_gpu.setdefault(c.name.split(".", 1)[1], c)
        elif all(e in gpus or not e.startswith("gpu") for e in c.endpoints):
            out.append(c)
    for suffix, c in per_gpu.items():
        out += [replace(c, name=f"{g}.{suffix}", endpoints=(g,)) for g in gpus]
    return tuple(out)


def fit_path_classes(st: FitState) -> CalibrationProfile:
    """Step 1: latency, per-flow rate and size efficiency per path class from lone copy-engine copies; link
    capacities where one copy outruns the preset's link. A class measured at one size only keeps a base
    profile's latency and size efficiency and takes its rate from that size."""
    by_class: dict[str, list[tuple[int, float]]] = {}
    for c in st.cal:
        if lone_ce(c):
            x = c.xfers[0]
            cls = st.base_topo.path(x.src, x.dst, x.bytes).path_class
            by_class.setdefault(cls, []).append((x.bytes, st.meas[c.id]["makespan_s"]))
    paths = dict(st.profile.paths)
    for cls, pts in sorted(by_class.items()):
        if len({s for s, _ in pts}) >= 2:
            # sizes say nothing of the discipline: a base profile's stays unless step 3 finds cases for it
            disc = paths[cls].discipline if cls in paths else "fair"
            paths[cls] = replace(fit_path(pts), discipline=disc)
        elif cls in paths:
            paths[cls] = rate_from_one_size(paths[cls], pts)
            st.notes.append(f"{cls}: rate from one size ({pts[0][0] >> 20} MiB); latency and size efficiency kept "
                            f"from the base profile")
        else:
            s, t = pts[0][0], statistics.median(t for _, t in pts)
            paths[cls] = PathParams(bandwidth_Bps=s / t)
            st.notes.append(f"{cls}: rate only, from one size ({s >> 20} MiB) and no base profile (latency from the "
                            "preset's links, no size efficiency)")
    if not by_class and st.base is None:
        raise CalibrationError(f"{st.m.source}: no lone copy-engine copies in the calibration subset")
    fitted = {cls: pp for cls, pp in paths.items() if cls in by_class}
    links = {**st.profile.links, **fit_links(st.base_topo, fitted)}
    for kind, bps in sorted(fit_links(st.base_topo, fitted).items()):
        st.notes.append(f"links.{kind}: {bps / 1e9:.1f} GB/s per direction (preset "
                        f"{_widest_link(st.base_topo, kind) / 1e9:.1f} GB/s): one copy ran faster than the preset's "
                        "link")
    return _profile(st.profile, paths=paths, links=links)


def fit_mechanisms(st: FitState) -> CalibrationProfile:
    """Step 1b: copies by other mechanisms, per path class, fitted like a path class (`fit_path`) on their lone
    size sweeps: pageable host memory (the driver stages it through pinned buffers: the CPU copy sets the rate,
    and the staging adds latency) and SM-driven copies (a load/store kernel: its own latency and rate on the
    same links). Both run on the copy engine's route and share its links (`Topology.path`)."""
    mechanisms = {m: dict(v) for m, v in st.profile.mechanisms.items()}
    for mech in MECHANISMS:
        for cls, pts in sorted(lone_copies(st.cal, st.meas, st.base_topo, mech).items()):
            if len({s for s, _ in pts}) < 2:
                continue
            pp = fit_path(pts, max_efficiency=MECHANISM_MAX_EFFICIENCY)
            mechanisms.setdefault(mech, {})[cls] = pp
            st.notes.append(f"{mech} {cls}: latency {pp.latency_s * 1e6:.1f} us, rate "
                            f"{pp.bandwidth_Bps / 1e9:.1f} GB/s ({len({s for s, _ in pts})} sizes)")
    return _profile(st.profile, mechanisms=mechanisms)


def rate_from_one_size(pp: PathParams, pts: list[tuple[int, float]]) -> PathParams:
    """A class's per-flow rate from copies of one size, keeping its latency and size-efficiency curve."""
    s = pts[0][0]
    t = statistics.median(t for _, t in pts)
    lat = pp.latency_s or 0.0
    return replace(pp, bandwidth_Bps=s / max(t - lat, 1e-12) / pp.efficiency(s))


def fit_shared_caps(st: FitState) -> CalibrationProfile:
    """Step 2: shared caps, where the model so far is faster than measured. Every cap case puts at most one
    copy on each engine, so caps do not depend on the discipline; the discipline cases do feel the caps."""
    profile = st.profile
    gpus = st.base_topo.gpus()
    added: set[str] = set()
    for c in st.cal:
        if c.group != "copies" or c.kernels or len(c.xfers) < 2:
            continue
        classes = {st.base_topo.path(x.src, x.dst).path_class for x in c.xfers}
        issuers = {x.issuer for x in c.xfers}
        if len(issuers) == 1 and len(classes) == 1:
            continue  # an engine case: discipline, not a cap
        if min(x.bytes for x in c.xfers) < CAP_MIN_BYTES:
            continue  # caps are about bandwidth: fit them where latency does not matter
        kind = _cap_kind(classes, issuers, gpus)
        if kind is None:
            continue
        what, spec_of = kind
        names = {cap.name for cap in spec_of(1.0)}
        if names & added:
            continue  # fitted on an earlier case of this run
        # Measured here: a cap of that name from the base profile gives way to what this case says.
        profile = _profile(profile, caps=tuple(cap for cap in profile.caps if cap.name not in names))
        measured = measured_makespan(c, st.meas[c.id])
        predicted = simulate_case(c, st.topo(profile)).makespan_s
        if predicted >= measured * (1 - SLOWER_BY):
            st.notes.append(f"{what}: no cap needed (case {c.id}: predicted {predicted * 1e3:.3f} ms, "
                            f"measured {measured * 1e3:.3f} ms)")
            continue
        total = sum(x.bytes for x in c.xfers)

        def make(bps: float, spec_of: Callable = spec_of, before: CalibrationProfile = profile) -> Topology:
            return st.topo(_profile(before, caps=before.caps + tuple(spec_of(bps))))

        bps = _bisect_cap(c, measured, make, hi=2 * total / predicted)
        profile = _profile(profile, caps=profile.caps + tuple(spec_of(bps)))
        added |= names
        st.notes.append(f"{what}: cap {bps / 1e9:.1f} GB/s (case {c.id})")
    return profile


def transfer_host_duplex(st: FitState) -> CalibrationProfile:
    """Step 2b, only for a profile derived from one of fewer GPUs: the host's duplex ceiling (both
    directions together), when not measured here, scaled from the base machine's. The base's ratio of duplex
    ceiling to its one-direction aggregate (every GPU at its per-flow rate, or its aggregate cap) is applied to
    this host's larger one-direction aggregate. A transfer, not a measurement: the notes say so."""
    base, profile = st.base, st.profile
    # Only up: a host with fewer GPUs than the base never reaches the base's host ceiling before its GPUs' own.
    if base is None or base.gpus >= profile.gpus or any(c.name == "host-duplex" for c in profile.caps):
        return profile
    old = next((c for c in base.caps if c.name == "host-duplex"), None)
    if old is None:
        return profile

    def one_way(p: CalibrationProfile, cls: str) -> float:
        per_gpu = p.gpus * ((p.paths.get(cls) or PathParams()).bandwidth_Bps or math.inf)
        return min([per_gpu] + [c.Bps for c in p.caps if c.name == f"host-{cls}"])

    ratio = old.Bps / max(one_way(base, "h2d"), one_way(base, "d2h"))
    bps = ratio * max(one_way(profile, "h2d"), one_way(profile, "d2h"))
    st.notes.append(f"host duplex: cap {bps / 1e9:.1f} GB/s transferred from '{base.id}' (its duplex ceiling is "
                    f"{ratio:.2f}x its one-direction aggregate), not measured on this host")
    return _profile(profile, caps=profile.caps + (replace(old, Bps=bps),))


def fit_disciplines(st: FitState) -> CalibrationProfile:
    """Step 3: engine discipline per class, from two equal copies of one class on one GPU."""
    profile = st.profile
    paths = dict(profile.paths)
    for c in st.cal:
        if c.group != "copies" or len(c.xfers) < 2 or c.kernels:
            continue
        classes = {st.base_topo.path(x.src, x.dst).path_class for x in c.xfers}
        issuers = {x.issuer for x in c.xfers}
        if len(classes) != 1 or len(issuers) != 1:
            continue
        cls = classes.pop()
        if cls not in paths:
            continue
        errs = {}
        for disc in ("fair", "fifo"):
            trial = _profile(profile, paths={**profile.paths, cls: replace(paths[cls], discipline=disc)})
            errs[disc] = _err_order(c, st.meas[c.id], st.topo(trial))
        best = min(errs, key=errs.get)
        paths[cls] = replace(paths[cls], discipline=best)
        profile = _profile(profile, paths=dict(paths))
        st.notes.append(f"{cls}: discipline {best} (finish+service error by rank: fair {errs['fair']:.1%}, "
                        f"fifo {errs['fifo']:.1%}; case {c.id})")
    return profile


def fit_collectives(st: FitState) -> CalibrationProfile:
    """Step 4: NCCL fixed cost, bus-bandwidth ceiling and size efficiency per collective (`fit_collective`)."""
    collectives = dict(st.profile.collectives)
    topo_now = st.topo()
    fitted = set()
    for op in NCCL_OPS:
        oc = [c for c in st.cal if c.group == "nccl" and c.op == op]
        if len(oc) >= 2:
            cp = fit_collective(oc, st.meas, topo_now)
            collectives[op] = cp
            fitted.add(op)
            effs = ", ".join(f"{e:.2f}" for _, e in cp.size_efficiency)
            st.notes.append(f"nccl {op}: fixed cost {cp.fixed_s * 1e6:.1f} us, bus bandwidth {cp.bus_Bps / 1e9:.1f} "
                            f"GB/s, size efficiency {effs} ({len(oc)} calibration sizes)")
    if "broadcast" in fitted:
        for op in NCCL_OPS:
            if op not in fitted and any(c.group == "nccl" and c.op == op for c in st.m.cases):
                collectives[op] = collectives["broadcast"]
                st.notes.append(f"nccl {op}: no calibration sizes; borrows broadcast's fit (its fitted_on says so)")
    kept = sorted(set(collectives) - fitted)
    if kept and st.base is not None:
        st.notes.append(f"nccl {', '.join(kept)}: kept from the base profile (not measured here)")
    return _profile(st.profile, collectives=collectives)


def fit_software_costs(st: FitState) -> CalibrationProfile:
    """Step 5: CUDA IPC handle open and close cost as a + b x bytes (`software_costs.cuda_ipc`)."""
    ipc = [c for c in st.cal if c.group == "ipc"]
    if len(ipc) < 2:
        return st.profile
    costs = dict(st.profile.software_costs.get("cuda_ipc") or {})
    keys = ["open_s"]
    if (st.m.doc.get("settings") or {}).get("ipc_close_timing") == IPC_CLOSE_TIMING:
        keys.append("close_s")
    else:
        st.notes.append("cuda ipc: close not fitted (this file timed close with a garbage collection inside)")
    for key in keys:
        a, b = linear_fit(sorted((c.bytes, st.meas[c.id][key]) for c in ipc), rate=False)
        costs[key.removesuffix("_s")] = SoftwareCost(a, max(0.0, b))
    return _profile(st.profile, software_costs={**st.profile.software_costs, "cuda_ipc": costs})


def fit_uncertainty(st: FitState) -> CalibrationProfile:
    """Step 6: the spread of each mechanism's parameters, from leave-one-out residuals of the calibration
    cases (`validate.fit.uncertainty`); prediction intervals sample it."""
    from .uncertainty import fit_spreads

    return _profile(st.profile, uncertainty=fit_spreads(st))


def with_provenance(st: FitState, source_sha256: str, split: str, resplit: list[str]) -> CalibrationProfile:
    """The machine facts, the cases fitted on, the split and the notes, recorded in the profile."""
    m = st.m
    facts = {k: m.machine.get(k) for k in ("kind", "preset", "gpu_name", "gpus", "torch", "cuda", "nccl", "triton",
                                           "CUDA_DEVICE_MAX_CONNECTIONS")}
    prov = {
        "fitted_by": "fabricsim calibrate",
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "measured_at": m.doc.get("created_at"),
        "measurements": Path(m.source).name,
        "measurements_sha256": source_sha256,
        "machine": facts,
        "calibration_cases": sorted(c.id for c in st.cal),
        "held_out_cases": len(m.cases) - len(st.cal),
        "split": split,
        "split_changed_from_file": resplit,
        "notes": st.notes,
    }
    if st.base is not None:
        prov["base_profile"] = st.base.id
    if m.doc.get("imported_from"):
        prov["imported_from"] = m.doc["imported_from"]
    return _profile(st.profile, provenance=prov)


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


def load_base(ref: str | Path | None) -> CalibrationProfile | None:
    """A base profile by path or bundled name (`h200x2`), as every calibration argument is read (`load_profile`:
    a file of that name in the working folder wins)."""
    return None if ref is None else load_profile(ref)


def calibrate_file(measured: str | Path | list[str | Path], out: str | Path, *, profile_id: str | None = None,
                   split: str = "current", base: str | Path | None = None,
                   note: str | None = None) -> CalibrationProfile:
    """Load (any format `validate.fit.imports` reads; several files of one machine merge), fit, write the
    profile atomically; returns it. `note` goes into the provenance as said."""
    paths = [Path(p) for p in (measured if isinstance(measured, list) else [measured])]
    m = merge([load_any(p) for p in paths])
    profile = calibrate(m, profile_id=profile_id, source_sha256=measurements_sha256(paths), split=split,
                        base=load_base(base))
    if note:
        profile = _profile(profile, provenance={**profile.provenance, "note": note})
    out = Path(out)
    profile.save(out)  # into a folder that exists (`fileio.check_parent_folder`): none is made for a typo
    return profile
