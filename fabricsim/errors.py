"""Typed errors shared by every layer.

`FabricsimError` is the one root error: it lives at the top of the namespace (`from fabricsim import
FabricsimError`) and imports nothing, so every layer may use it, and the CLI turns any subclass into one line
on stderr and exit status 2. The hardware layer's two errors sit here beside it because hwmodels is the bottom
of the stack.
"""

from __future__ import annotations

INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


def os_error_line(exc: OSError) -> str:
    """An OS error as the CLI says it, in one line: the path the user gave, then why (no errno, no traceback)."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class FabricsimError(Exception):
    """A user mistake (bad input, impossible configuration): reported in one line, never as a traceback."""


class OutputExistsError(FabricsimError):
    """An output file or folder is already there and the user did not say `--force`: nothing is overwritten
    without a word (the same rule for every command that writes a named output)."""


class TopologyError(FabricsimError):
    """A topology, preset or topology file is invalid, or a route does not exist."""


class CalibrationError(FabricsimError):
    """A calibration profile is malformed, of an unknown version, or made for another machine."""
