"""Errors raised by the engine and scenario loader (all `FabricsimError`, so the CLI reports them in one line)."""

from __future__ import annotations

from fabricsim.errors import FabricsimError


class ScenarioError(FabricsimError):
    """A scenario file or a simulation request is malformed: the message names the field."""


class OutOfMemory(FabricsimError):
    """An allocation does not fit in a device's memory."""

    def __init__(self, device: str, requested: int, free: int, capacity: int, tag: str = "") -> None:
        self.device, self.requested, self.free, self.capacity, self.tag = device, requested, free, capacity, tag
        what = f" for '{tag}'" if tag else ""
        super().__init__(
            f"out of memory on {device}: {requested / 2**30:.3f} GiB requested{what}, "
            f"{free / 2**30:.3f} GiB free of {capacity / 2**30:.3f} GiB")
