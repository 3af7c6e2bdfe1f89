"""Checking a KV policy's parameters: the one error type and the range checks every policy uses."""

from __future__ import annotations

import math
from typing import Any

from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.units import real_number

from .. import counts
from ..errors import WorkloadError
from ..requests import MAX_TOKENS


class PolicyError(WorkloadError):
    """A KV policy that does not exist, or a parameter it does not take or cannot accept."""


def _number(policy: str, what: str, value: Any) -> float:
    """`value` as a finite float. The CLI's parser refuses NaN and infinities before a policy sees them; a policy
    built from Python gets the same refusal here. What counts as a number is `simcore.units.real_number`'s rule
    (NumPy scalars yes, bools no, nothing past a float's range)."""
    try:
        value = real_number(value, f"policy '{policy}': {what}")
    except ScenarioError as exc:
        raise PolicyError(str(exc)) from None
    if not math.isfinite(value):
        raise PolicyError(f"policy '{policy}': {what} must be a finite number, got {value!r}")
    return float(value)


def check_fraction(policy: str, what: str, value: float, *, lo_open: bool = False) -> float:
    """A parameter that must lie in [0, 1] (or (0, 1] with `lo_open`)."""
    value = _number(policy, what, value)
    ok = (0 < value <= 1) if lo_open else (0 <= value <= 1)
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be in {'(0' if lo_open else '[0'}, 1], got {value}")
    return float(value)


def check_positive(policy: str, what: str, value: float, *, allow_zero: bool = False) -> float:
    """A parameter that must be a finite number > 0 (>= 0 with `allow_zero`), as a float."""
    value = _number(policy, what, value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_count(policy: str, what: str, value: Any, *, allow_zero: bool = False, most: int | None = None) -> int:
    """A parameter that counts things: a whole number >= 1 (>= 0 with `allow_zero`), at most `most` (2^53 if
    not given), as an int; the rule is `workloads.counts.check_count`."""
    return counts.check_count(value, f"policy '{policy}': {what}", lo=0 if allow_zero else 1,
                              most=MAX_TOKENS if most is None else most, error=PolicyError)


def check_ratio(policy: str, what: str, value: float) -> float:
    """A compression ratio: a finite number >= 1, as a float (1 keeps the KV as it is; below 1 the compressed
    KV would be larger than the original, which no compression does)."""
    value = _number(policy, what, value)
    if not value >= 1:
        raise PolicyError(f"policy '{policy}': {what} must be >= 1, got {value}")
    return value
