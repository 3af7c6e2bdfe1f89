"""Typed errors of the workload layer (model specs, placement, weight sync, decode).

All subclass `FabricsimError`, so the CLI reports them in one line and a study records the point as failed
with a message that names the problem (unknown model, degrees that don't divide, a layout that doesn't fit).
"""

from __future__ import annotations

from fabricsim.errors import FabricsimError


class WorkloadError(FabricsimError):
    """A workload request is malformed (bad numbers, unknown names)."""


class UnknownModelError(WorkloadError):
    """A model preset name that does not exist, or an HF config missing a required field."""


class PlacementError(WorkloadError):
    """A trainer or rollout layout that cannot exist: degrees that don't divide, too few GPUs, ..."""


class UnknownStrategyError(WorkloadError):
    """A weight-sync strategy name that is not registered."""


class InfeasibleError(WorkloadError):
    """A configuration that cannot run on the hardware, e.g. a rollout layout whose weights, buffers and
    KV reserve do not fit in HBM. Studies report it as `feasible = 0` instead of running it."""
