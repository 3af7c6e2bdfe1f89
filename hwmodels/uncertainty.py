"""How sure a calibration profile is: the spread of each fitted mechanism's parameters.

A profile's `uncertainty` field holds, per *group* of parameters, the standard deviation (in log space) of a
multiplicative factor on them, learnt from residuals at calibration time (`validate.fit.uncertainty`):

- `latency.CLASS`: the fixed latency of path class CLASS (from its small copies, < 1 MiB);
- `mid.CLASS`: its size efficiency between 1 MiB and 64 MiB;
- `rate.CLASS`: its per-flow rate and the link direction it runs on (from copies >= 64 MiB);
- `latency.MECH:CLASS`, `mid.MECH:CLASS`, `rate.MECH:CLASS`: the same for copies by another mechanism
  (`pageable`, `sm`);
- `concurrency`: every calibrated shared cap (host aggregate, duplex), from how far the per-copy finish times
  of the calibration concurrency cases stay off after the fit;
- `collective.OP.fixed` / `.mid` / `.bus`: a collective's fixed cost, mid-size efficiency and bus bandwidth.

Prediction intervals (`hwmodels.intervals`) draw one factor per group and re-run the simulation; a group the
profile lacks (a mechanism it never measured) gets `UNMEASURED_SIGMA`, a topology without any profile
`UNCALIBRATED_SIGMA` on every group. Both are stated a priori, not fitted: they are what "not checked" means.

This module holds only the data and its file form (no topology, no profile), so the profile can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fabricsim.errors import CalibrationError

SMALL_BYTES = 1 << 20  # below: a copy's time is mostly its latency
LARGE_BYTES = 64 << 20  # at or above: mostly its rate
# a priori spreads (log-space standard deviations of the factor), not fitted: see the module docstring
UNCALIBRATED_SIGMA = 0.25  # datasheet defaults: a 90% interval of about x/÷ 1.5
UNMEASURED_SIGMA = 0.10  # a calibrated profile's mechanism with no residuals of its own
# A copy by a mechanism with no fit at all for its class borrows the copy engine's parameters; a pageable copy
# then comes out 6-9x too fast. Drawn one-sided (never faster than the copy engine), a spread of 1.3 puts the
# 90% interval's far end about 10x slower than the point (see hwmodels.intervals.perturbed).
UNFITTED_MECHANISM_SIGMA = 1.3
PRIOR_SIGMA, PRIOR_WEIGHT = 0.03, 2.0  # shrinks few residuals toward a 3% spread (worth two residuals)


def size_group(nbytes: float) -> str:
    """Which parameter group a copy of `nbytes` mostly depends on: 'latency', 'mid' or 'rate'."""
    if nbytes < SMALL_BYTES:
        return "latency"
    return "rate" if nbytes >= LARGE_BYTES else "mid"


@dataclass(frozen=True)
class Spread:
    """sigma: log-space standard deviation of the group's factor; n: residuals it was learnt from."""

    sigma: float
    n: int = 0


@dataclass(frozen=True)
class Uncertainty:
    """Per-group spreads of a profile's parameters, and how they were learnt."""

    spreads: dict[str, Spread] = field(default_factory=dict)
    method: str = ""
    default_sigma: float = UNMEASURED_SIGMA

    def sigma(self, group: str) -> float:
        s = self.spreads.get(group)
        return s.sigma if s is not None else self.default_sigma

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "default_sigma": self.default_sigma,
                "spreads": {g: {"sigma": s.sigma, "n": s.n} for g, s in sorted(self.spreads.items())}}


UNCALIBRATED = Uncertainty({}, "uncalibrated: datasheet defaults, a priori spread", UNCALIBRATED_SIGMA)


def spread_from_residuals(log_residuals: list[float]) -> Spread:
    """A group's spread from its log residuals (log(predicted / measured)), shrunk toward PRIOR_SIGMA so that
    two or three residuals cannot claim a spread of nearly zero."""
    n = len(log_residuals)
    ss = sum(e * e for e in log_residuals) + PRIOR_WEIGHT * PRIOR_SIGMA ** 2
    return Spread(math.sqrt(ss / (n + PRIOR_WEIGHT)), n)


def uncertainty_from_dict(value: Any, where: str) -> Uncertainty | None:
    """Read the profile's `uncertainty` field (None when absent); errors name the field."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("spreads", {}), dict):
        raise CalibrationError(f"{where}: uncertainty: expected a mapping with 'spreads'")
    spreads = {}
    for g, s in value.get("spreads", {}).items():
        sig = s.get("sigma") if isinstance(s, dict) else None
        if isinstance(sig, bool) or not isinstance(sig, int | float) or not math.isfinite(sig) or sig < 0:
            raise CalibrationError(f"{where}: uncertainty.spreads.{g}.sigma: expected a number >= 0, got {sig!r}")
        spreads[str(g)] = Spread(float(sig), int(s.get("n", 0)))
    default = value.get("default_sigma", UNMEASURED_SIGMA)
    if isinstance(default, bool) or not isinstance(default, int | float) or not default >= 0:
        raise CalibrationError(f"{where}: uncertainty.default_sigma: expected a number >= 0, got {default!r}")
    return Uncertainty(spreads, str(value.get("method", "")), float(default))
