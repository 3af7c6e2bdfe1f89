"""Calibration profiles: fitted parameters that replace datasheet defaults for one machine kind.

A profile says, per *path class* (how a copy travels: `h2d`, `d2h`, `d2d`, `p2p-nvlink`, `p2p-pcie`, `h2h`,
`rdma`, `nvme`), the fixed latency, the best rate one flow reaches, a size-efficiency curve for mid-size
copies, and whether copies of that class share bandwidth fairly or run one after another on their engine.
It can also add shared caps (e.g. the host's aggregate H2D ceiling, which does not scale with GPU count).
Profiles are versioned JSON/YAML files written by `validate` and loaded by a topology; the engine never
sees them, only the topology they configure.

Format version 1, top-level fields (the optional ones may be absent; older version-1 files lack them):

- `id`, `machine`, `gpu_model`, `gpus`, `format_version` (= 1): what the profile is and what it fits;
- `paths`: {path class: {latency_s, bandwidth_Bps, size_efficiency, discipline}} (see `PathParams`);
- `caps`: [{name, Bps, classes, endpoints}] shared ceilings (see `CapSpec`);
- `links` (optional): {link kind: Bps}, the fitted capacity per direction of the widest links of that kind
  (`pcie`, `nvlink`, ...). A per-flow rate in `paths` can only lower what a copy reaches; this field raises
  (or lowers) the links themselves, for when one copy measurably runs faster than the datasheet link.
  Links of that kind narrower than the widest (another generation or width) are scaled by the same ratio;
- `collectives` (optional): {collective: {bus_Bps, fixed_s, size_efficiency, fitted_on}}: NCCL's fitted bus
  bandwidth (the ceiling on each ring transfer's rate, which for ring algorithms is what nccl-tests calls
  busbw), fixed cost per call and size-efficiency curve, per collective (`broadcast`, `all_gather`, ...);
  see `CollectiveParams`;
- `software_costs` (optional): {mechanism: {operation: {fixed_s, per_byte_s}}}, e.g. CUDA IPC handle
  `open`/`close` cost as fixed + per-byte of the allocation; see `SoftwareCost`;
- `uncertainty` (optional): per group of parameters, the spread that prediction intervals sample (see
  `hwmodels.uncertainty`); profiles without it get an a priori spread;
- `provenance`: free-form record of where the fit came from (machine facts, cases, notes). Files written
  before `collectives`/`software_costs` existed kept them at `provenance.collectives.nccl` and
  `provenance.software_costs`; those are still read (into the proper fields) when the fields are absent.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fabricsim.errors import CalibrationError

from .fileio import atomic_write_text, read_yaml
from .uncertainty import Uncertainty, uncertainty_from_dict

FORMAT_VERSION = 1
PATH_CLASSES = ("d2d", "h2d", "d2h", "p2p-nvlink", "p2p-pcie", "h2h", "rdma", "nvme")
DISCIPLINES = ("fair", "fifo")
# Link kinds of topologies (topology imports this module, not the other way round, so the names live here).
LINK_KINDS = ("pcie", "nvlink", "dram", "socket", "net", "nvme")
# Copy mechanisms besides the copy engine on pinned memory, each fitted per path class (`mechanisms` field).
MECHANISMS = ("pageable", "sm")
COLLECTIVES = ("broadcast", "all_gather", "all_reduce", "reduce_scatter", "reduce", "all_to_all")


@dataclass(frozen=True)
class PathParams:
    """Fitted behaviour of one path class.

    latency_s: fixed cost per copy (replaces the sum of link latencies when set).
    bandwidth_Bps: rate one flow reaches alone (a per-flow cap; links may be wider than one DMA stream).
    size_efficiency: (bytes, factor) points; the rate cap is scaled by the factor, interpolated in log(bytes).
    discipline: 'fair' (concurrent copies share max-min fairly) or 'fifo' (copies issued by one GPU's engine for
    this class run one after another).
    """

    latency_s: float | None = None
    bandwidth_Bps: float | None = None
    size_efficiency: tuple[tuple[float, float], ...] = ()
    discipline: str = "fair"

    def efficiency(self, nbytes: float) -> float:
        return interpolate_efficiency(self.size_efficiency, nbytes)


def interpolate_efficiency(pts: tuple[tuple[float, float], ...], nbytes: float) -> float:
    """The factor at `nbytes` from sorted (bytes, factor) points, linear in log(bytes), flat beyond the ends."""
    if not pts or nbytes <= 0:
        return 1.0
    if nbytes <= pts[0][0]:
        return pts[0][1]
    if nbytes >= pts[-1][0]:
        return pts[-1][1]
    x = math.log(nbytes)
    for (b0, e0), (b1, e1) in zip(pts, pts[1:], strict=False):
        if b0 <= nbytes <= b1:
            w = (x - math.log(b0)) / (math.log(b1) - math.log(b0))
            return e0 + w * (e1 - e0)
    return pts[-1][1]


@dataclass(frozen=True)
class CapSpec:
    """A shared ceiling: every flow of the given classes touching one of `endpoints` (any, if empty) draws on it."""

    name: str
    Bps: float
    classes: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectiveParams:
    """One collective's fitted behaviour on this machine.

    bus_Bps: ceiling on the rate of each transfer of the collective's ring schedule. For ring algorithms each
    ring link carries the bytes nccl-tests divides by time to get "busbw", so this is the bus bandwidth the
    collective reaches at large sizes (NCCL tunes channels and protocol per collective, hence per name).
    fixed_s: cost of one call before any byte moves (launch, handshakes, protocol start-up).
    size_efficiency: (bytes one ring transfer carries, factor) points; bus_Bps is scaled by the factor,
    interpolated in log(bytes) — NCCL changes protocol and channel count with size, so mid sizes reach less
    than the large-size bus bandwidth beyond what the fixed cost explains.
    fitted_on: the measured cases it came from; a collective that borrows another's fit says so here.
    """

    bus_Bps: float
    fixed_s: float = 0.0
    size_efficiency: tuple[tuple[float, float], ...] = ()
    fitted_on: tuple[str, ...] = ()

    def rate_cap(self, transfer_bytes: float) -> float:
        """The ceiling on one ring transfer of `transfer_bytes`."""
        return self.bus_Bps * interpolate_efficiency(self.size_efficiency, transfer_bytes)


@dataclass(frozen=True)
class SoftwareCost:
    """A software operation's cost against the size it works on: fixed_s + per_byte_s x bytes."""

    fixed_s: float
    per_byte_s: float = 0.0

    def cost(self, nbytes: float) -> float:
        return self.fixed_s + self.per_byte_s * nbytes


@dataclass(frozen=True)
class CalibrationProfile:
    id: str
    machine: str
    gpu_model: str
    gpus: int
    paths: dict[str, PathParams] = field(default_factory=dict)
    caps: tuple[CapSpec, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    links: dict[str, float] = field(default_factory=dict)
    collectives: dict[str, CollectiveParams] = field(default_factory=dict)
    software_costs: dict[str, dict[str, SoftwareCost]] = field(default_factory=dict)
    # The spread of the fitted parameters, for prediction intervals (see hwmodels.uncertainty).
    uncertainty: Uncertainty | None = None
    # Copies by another mechanism: {mechanism: {path class: PathParams}} (see `mechanism_params`).
    mechanisms: dict[str, dict[str, PathParams]] = field(default_factory=dict)

    def collective(self, name: str) -> CollectiveParams | None:
        """The fitted parameters of collective `name`, or None where the profile has none."""
        return self.collectives.get(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["uncertainty"] = self.uncertainty.to_dict() if self.uncertainty is not None else None
        d["caps"] = [asdict(c) for c in self.caps]
        for p in [*d["paths"].values(), *(q for m in d["mechanisms"].values() for q in m.values())]:
            p["size_efficiency"] = [list(x) for x in p["size_efficiency"]]
        for c in d["collectives"].values():
            c["fitted_on"] = list(c["fitted_on"])
            c["size_efficiency"] = [list(x) for x in c["size_efficiency"]]
        # Optional fields stay out of the file when empty, so a profile without them reads as before.
        for key in ("links", "collectives", "software_costs", "uncertainty", "mechanisms"):
            if not d[key]:
                del d[key]
        return d

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so an interrupted run leaves no half profile."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _num(where: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CalibrationError(f"{where}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise CalibrationError(f"{where}: must be > 0, got {value!r}")
    return float(value)


def profile_from_dict(d: Any, where: str = "calibration") -> CalibrationProfile:
    """Validate and build a profile; every error names the offending field."""
    if not isinstance(d, dict):
        raise CalibrationError(f"{where}: expected a mapping at the top level")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise CalibrationError(
            f"{where}: unknown profile format_version {version!r} (this fabricsim reads version {FORMAT_VERSION})")
    for key in ("id", "machine", "gpu_model", "gpus"):
        if key not in d:
            raise CalibrationError(f"{where}: missing field '{key}'")
    paths = _paths(d.get("paths"), f"{where}: paths")
    caps = []
    for i, c in enumerate(d.get("caps") or []):
        w = f"{where}: caps[{i}]"
        if not isinstance(c, dict) or "name" not in c or "Bps" not in c:
            raise CalibrationError(f"{w}: expected a mapping with 'name' and 'Bps'")
        for cls in c.get("classes") or ():
            if cls not in PATH_CLASSES:
                raise CalibrationError(f"{w}.classes: unknown path class '{cls}'")
        caps.append(CapSpec(str(c["name"]), _num(f"{w}.Bps", c["Bps"]), tuple(c.get("classes") or ()),
                            tuple(c.get("endpoints") or ())))
    provenance = d.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise CalibrationError(f"{where}: provenance: expected a mapping")
    return CalibrationProfile(
        id=str(d["id"]), machine=str(d["machine"]), gpu_model=str(d["gpu_model"]),
        gpus=int(_num(f"{where}: gpus", d["gpus"])), paths=paths, caps=tuple(caps),
        provenance=dict(provenance), format_version=FORMAT_VERSION,
        links=_links(d.get("links"), where),
        collectives=_collectives(d["collectives"] if "collectives" in d else _legacy_nccl(provenance), where,
                                 "collectives" if "collectives" in d else "provenance.collectives.nccl"),
        software_costs=_software_costs(d["software_costs"] if "software_costs" in d
                                       else provenance.get("software_costs"), where,
                                       "software_costs" if "software_costs" in d else "provenance.software_costs"),
        uncertainty=uncertainty_from_dict(d.get("uncertainty"), where),
        mechanisms=mechanism_params(d.get("mechanisms"), where),
    )


def _paths(value: Any, where: str) -> dict[str, PathParams]:
    """{path class: PathParams} from its file form; errors name the class and field."""
    paths: dict[str, PathParams] = {}
    for cls, p in _mapping(where, value).items():
        w = f"{where}.{cls}"
        if cls not in PATH_CLASSES:
            raise CalibrationError(f"{w}: unknown path class (known: {', '.join(PATH_CLASSES)})")
        if not isinstance(p, dict):
            raise CalibrationError(f"{w}: expected a mapping")
        disc = p.get("discipline", "fair")
        if disc not in DISCIPLINES:
            raise CalibrationError(f"{w}.discipline: '{disc}' is not one of {', '.join(DISCIPLINES)}")
        lat = p.get("latency_s")
        bw = p.get("bandwidth_Bps")
        eff = _efficiency_points(p.get("size_efficiency"), f"{w}.size_efficiency")
        paths[cls] = PathParams(
            latency_s=None if lat is None else _num(f"{w}.latency_s", lat, positive=False),
            bandwidth_Bps=None if bw is None else _num(f"{w}.bandwidth_Bps", bw),
            size_efficiency=tuple(eff),
            discipline=disc,
        )
    return paths


def mechanism_params(value: Any, where: str) -> dict[str, dict[str, PathParams]]:
    """The `mechanisms` field: per mechanism (pageable host memory staged by the driver; SM-driven load/store
    copies), per path class, the same parameters as `paths` (a copy by that mechanism uses them instead)."""
    out = {}
    for mech, paths in _mapping(f"{where}: mechanisms", value).items():
        if mech not in MECHANISMS:
            raise CalibrationError(f"{where}: mechanisms.{mech}: unknown mechanism (known: {', '.join(MECHANISMS)})")
        out[str(mech)] = _paths(paths, f"{where}: mechanisms.{mech}")
    return out


def _efficiency_points(value: Any, w: str) -> tuple[tuple[float, float], ...]:
    if value is not None and not isinstance(value, list | tuple):
        raise CalibrationError(f"{w}: expected a list of [bytes, factor]")
    eff = []
    for i, pt in enumerate(value or []):
        if not isinstance(pt, list | tuple) or len(pt) != 2:
            raise CalibrationError(f"{w}[{i}]: expected [bytes, factor]")
        eff.append((_num(f"{w}[{i}]", pt[0]), _num(f"{w}[{i}]", pt[1])))
    if eff != sorted(eff):
        raise CalibrationError(f"{w}: points must be sorted by size")
    return tuple(eff)


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CalibrationError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _links(value: Any, where: str) -> dict[str, float]:
    out = {}
    for kind, bps in _mapping(f"{where}: links", value).items():
        if kind not in LINK_KINDS:
            raise CalibrationError(f"{where}: links.{kind}: unknown link kind (known: {', '.join(LINK_KINDS)})")
        out[str(kind)] = _num(f"{where}: links.{kind}", bps)
    return out


def _collectives(value: Any, where: str, field_name: str) -> dict[str, CollectiveParams]:
    out = {}
    for name, c in _mapping(f"{where}: {field_name}", value).items():
        w = f"{where}: {field_name}.{name}"
        if name not in COLLECTIVES:
            raise CalibrationError(f"{w}: unknown collective (known: {', '.join(COLLECTIVES)})")
        if not isinstance(c, dict) or "bus_Bps" not in c:
            raise CalibrationError(f"{w}: expected a mapping with 'bus_Bps' (and optionally 'fixed_s')")
        fitted_on = c.get("fitted_on") or ()
        if not isinstance(fitted_on, list | tuple) or not all(isinstance(x, str) for x in fitted_on):
            raise CalibrationError(f"{w}.fitted_on: expected a list of case ids")
        out[str(name)] = CollectiveParams(_num(f"{w}.bus_Bps", c["bus_Bps"]),
                                          _num(f"{w}.fixed_s", c.get("fixed_s", 0.0), positive=False),
                                          _efficiency_points(c.get("size_efficiency"), f"{w}.size_efficiency"),
                                          tuple(fitted_on))
        if out[name].fixed_s < 0:
            raise CalibrationError(f"{w}.fixed_s: must be >= 0, got {out[name].fixed_s!r}")
    return out


def _legacy_nccl(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """Version-1 files written before `collectives` existed: provenance.collectives.nccl held a broadcast fit
    ({fixed_cost_s, rate_cap_Bps, fitted_on}) used for every collective, plus per_op overrides."""
    old = provenance.get("collectives")
    nccl = old.get("nccl") if isinstance(old, dict) else None
    if not isinstance(nccl, dict) or "rate_cap_Bps" not in nccl:
        return None
    base = {"bus_Bps": nccl["rate_cap_Bps"], "fixed_s": nccl.get("fixed_cost_s", 0.0),
            "fitted_on": list(nccl.get("fitted_on") or ())}
    out = {op: dict(base) for op in ("broadcast", "all_gather", "all_reduce")}
    for op, p in (nccl.get("per_op") or {}).items():
        out[op] = {"bus_Bps": p.get("rate_cap_Bps"), "fixed_s": p.get("fixed_cost_s", 0.0),
                   "fitted_on": list(p.get("fitted_on") or ())}
    return out


def _software_costs(value: Any, where: str, field_name: str) -> dict[str, dict[str, SoftwareCost]]:
    out: dict[str, dict[str, SoftwareCost]] = {}
    for mech, ops in _mapping(f"{where}: {field_name}", value).items():
        out[str(mech)] = {}
        for op, c in _mapping(f"{where}: {field_name}.{mech}", ops).items():
            w = f"{where}: {field_name}.{mech}.{op}"
            if not isinstance(c, dict) or "fixed_s" not in c:
                raise CalibrationError(f"{w}: expected a mapping with 'fixed_s' (and optionally 'per_byte_s')")
            fixed = _num(f"{w}.fixed_s", c["fixed_s"], positive=False)
            per_byte = _num(f"{w}.per_byte_s", c.get("per_byte_s", 0.0), positive=False)
            if fixed < 0 or per_byte < 0:
                raise CalibrationError(f"{w}: costs must be >= 0, got fixed_s={fixed!r}, per_byte_s={per_byte!r}")
            out[str(mech)][str(op)] = SoftwareCost(fixed, per_byte)
    return out


def load_profile(path: str | os.PathLike[str]) -> CalibrationProfile:
    """Read a profile file (JSON or YAML), or a bundled profile by name (`profile_file`), with errors that name the
    file."""
    path = profile_file(path)
    return profile_from_dict(read_yaml(path, CalibrationError, "calibration profile"), where=str(path))


def profile_file(ref: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None) -> Path:
    """The file profile `ref` is read from: the file `ref` (relative to `base_dir`: a scenario's folder) where there
    is one, else the bundled profile of that name (`h200x2`). Why here: every way a profile is named (`calibrate
    --base`, `report --profile`, `--calibration`, a scenario's `calibration:`, `presets.get(..., calibration=...)`)
    ends here, so a bundled name works in all of them, not only where one command looked it up itself; a file of
    that name still wins (a file: `validate/data/h200x2` is a folder of measurements, not the profile)."""
    if not isinstance(ref, str | os.PathLike):
        raise CalibrationError(f"calibration: expected a profile file's path or a bundled profile's name "
                               f"({', '.join(bundled_names())}), got {ref!r}")
    path = Path(base_dir or ".") / ref
    if path.is_file():
        return path
    if isinstance(ref, str) and ref in bundled_names():
        return bundled_profile_path(ref)
    raise CalibrationError(f"{path}: cannot read calibration profile: not a file or a bundled profile name "
                           f"(bundled: {', '.join(bundled_names())})")


def bundled_names() -> list[str]:
    """The names of the profiles shipped with the package (hwmodels/profiles/NAME.json), sorted."""
    return sorted(p.stem for p in bundled_profile_path("").parent.glob("*.json"))


def bundled_profile_path(name: str) -> Path:
    """Path of a profile shipped with the package (hwmodels/profiles/NAME.json)."""
    return Path(__file__).with_name("profiles") / f"{name}.json"
