"""The state the steps of `calibrate` pass along (and `uncertainty` reads): its own module so that both
import it and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fabricsim.hwmodels.calibration import CalibrationProfile
from fabricsim.hwmodels.topology import Topology
from fabricsim.validate.cases import Case
from fabricsim.validate.measurements import Measurements


@dataclass
class FitState:
    """What the steps of `calibrate` share: the measurements, the uncalibrated preset, the profile fitted so
    far (each step returns a new one) and the notes that end up in its provenance."""

    m: Measurements
    base_topo: Topology
    cal: list[Case]
    profile: CalibrationProfile
    base: CalibrationProfile | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def meas(self) -> dict[str, Any]:
        return self.m.measured

    def topo(self, profile: CalibrationProfile | None = None) -> Topology:
        return self.base_topo.with_calibration(profile or self.profile)
