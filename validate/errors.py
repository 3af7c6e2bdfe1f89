"""Typed errors of the validate stage (the CLI prints them as one line and exits 2)."""

from __future__ import annotations

from fabricsim.errors import CalibrationError, FabricsimError


class MeasurementError(FabricsimError):
    """A measurement file is malformed, truncated, of an unknown version, or does not fit the request."""


class ValidateRunError(FabricsimError):
    """A validate run cannot start or finish (output folder exists, no preset for the machine, ...)."""


__all__ = ["CalibrationError", "MeasurementError", "ValidateRunError"]
