"""Typed errors shared by every layer.

`FabricsimError` lives in `hwmodels` because it is the bottom of the dependency stack: every other package
may import it, and the CLI turns any subclass into one line on stderr and exit status 2.
"""

from __future__ import annotations


class FabricsimError(Exception):
    """A user mistake (bad input, impossible configuration): reported in one line, never as a traceback."""


class TopologyError(FabricsimError):
    """A topology, preset or topology file is invalid, or a route does not exist."""


class CalibrationError(FabricsimError):
    """A calibration profile is malformed, of an unknown version, or made for another machine."""
