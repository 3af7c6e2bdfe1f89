"""Calibration profiles: fitted parameters that replace datasheet defaults for one machine kind.

A profile says, per *path class* (how a copy travels: `h2d`, `d2h`, `d2d`, `p2p-nvlink`, `p2p-pcie`, `h2h`,
`rdma`, `nvme`), the fixed latency, the best rate one flow reaches, a size-efficiency curve for mid-size
copies, and whether copies of that class share bandwidth fairly or run one after another on their engine.
It can also add shared caps (e.g. the host's aggregate H2D ceiling, which does not scale with GPU count).
Profiles are versioned JSON/YAML files written by `validate` and loaded by a topology; the engine never
sees them, only the topology they configure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CalibrationError
from .fileio import atomic_write_text, read_yaml

FORMAT_VERSION = 1
PATH_CLASSES = ("d2d", "h2d", "d2h", "p2p-nvlink", "p2p-pcie", "h2h", "rdma", "nvme")
DISCIPLINES = ("fair", "fifo")


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
        pts = self.size_efficiency
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
class CalibrationProfile:
    id: str
    machine: str
    gpu_model: str
    gpus: int
    paths: dict[str, PathParams] = field(default_factory=dict)
    caps: tuple[CapSpec, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["caps"] = [asdict(c) for c in self.caps]
        for p in d["paths"].values():
            p["size_efficiency"] = [list(x) for x in p["size_efficiency"]]
        return d

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so an interrupted run leaves no half profile."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _num(where: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
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
    paths: dict[str, PathParams] = {}
    for cls, p in (d.get("paths") or {}).items():
        w = f"{where}: paths.{cls}"
        if cls not in PATH_CLASSES:
            raise CalibrationError(f"{w}: unknown path class (known: {', '.join(PATH_CLASSES)})")
        if not isinstance(p, dict):
            raise CalibrationError(f"{w}: expected a mapping")
        disc = p.get("discipline", "fair")
        if disc not in DISCIPLINES:
            raise CalibrationError(f"{w}.discipline: '{disc}' is not one of {', '.join(DISCIPLINES)}")
        lat = p.get("latency_s")
        bw = p.get("bandwidth_Bps")
        eff = []
        for i, pt in enumerate(p.get("size_efficiency") or []):
            if not isinstance(pt, list | tuple) or len(pt) != 2:
                raise CalibrationError(f"{w}.size_efficiency[{i}]: expected [bytes, factor]")
            eff.append((_num(f"{w}.size_efficiency[{i}]", pt[0]), _num(f"{w}.size_efficiency[{i}]", pt[1])))
        if eff != sorted(eff):
            raise CalibrationError(f"{w}.size_efficiency: points must be sorted by size")
        paths[cls] = PathParams(
            latency_s=None if lat is None else _num(f"{w}.latency_s", lat, positive=False),
            bandwidth_Bps=None if bw is None else _num(f"{w}.bandwidth_Bps", bw),
            size_efficiency=tuple(eff),
            discipline=disc,
        )
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
    return CalibrationProfile(
        id=str(d["id"]), machine=str(d["machine"]), gpu_model=str(d["gpu_model"]),
        gpus=int(_num(f"{where}: gpus", d["gpus"])), paths=paths, caps=tuple(caps),
        provenance=dict(d.get("provenance") or {}), format_version=FORMAT_VERSION,
    )


def load_profile(path: str | Path) -> CalibrationProfile:
    """Read a profile file (JSON or YAML) with errors that name the file."""
    return profile_from_dict(read_yaml(path, CalibrationError, "calibration profile"), where=str(path))


def bundled_profile_path(name: str) -> Path:
    """Path of a profile shipped with the package (hwmodels/profiles/NAME.json)."""
    return Path(__file__).with_name("profiles") / f"{name}.json"
