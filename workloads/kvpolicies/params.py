"""Checking a KV policy's parameters: the one error type and the range checks every policy uses."""

from __future__ import annotations

from typing import Any

from ..errors import WorkloadError


class PolicyError(WorkloadError):
    """A KV policy that does not exist, or a parameter it does not take or cannot accept."""


def _number(policy: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise PolicyError(f"policy '{policy}': {what} must be a number, got {value!r}")
    return value


def check_fraction(policy: str, what: str, value: float, *, lo_open: bool = False) -> float:
    """A parameter that must lie in [0, 1] (or (0, 1] with `lo_open`)."""
    value = _number(policy, what, value)
    ok = (0 < value <= 1) if lo_open else (0 <= value <= 1)
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be in {'(0' if lo_open else '[0'}, 1], got {value}")
    return float(value)


def check_positive(policy: str, what: str, value: float, *, allow_zero: bool = False) -> float:
    value = _number(policy, what, value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value
