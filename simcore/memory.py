"""Memory accounting per device (HBM, host DRAM): named allocations against a capacity, with a clear OOM."""

from __future__ import annotations

from .errors import OutOfMemory, ScenarioError


class MemoryPool:
    """Allocations on one device; `peak_bytes` and the (time, used) timeline are kept for reports."""

    def __init__(self, device: str, capacity_bytes: int, clock=lambda: 0.0) -> None:
        self.device = device
        self.capacity_bytes = int(capacity_bytes)
        self._clock = clock
        self._allocs: dict[str, int] = {}
        self.used_bytes = 0
        self.peak_bytes = 0
        self.timeline: list[tuple[float, int]] = [(0.0, 0)]

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.free_bytes

    def alloc(self, nbytes: int, tag: str) -> None:
        """Reserve `nbytes` under `tag`; raises `OutOfMemory` (nothing changes) when it does not fit."""
        if nbytes < 0:
            raise ScenarioError(f"allocation '{tag}' on {self.device}: size must be >= 0, got {nbytes}")
        if tag in self._allocs:
            raise ScenarioError(f"allocation '{tag}' on {self.device} already exists")
        if nbytes > self.free_bytes:
            raise OutOfMemory(self.device, nbytes, self.free_bytes, self.capacity_bytes, tag)
        self._allocs[tag] = int(nbytes)
        self._set(self.used_bytes + int(nbytes))

    def free(self, tag: str) -> int:
        try:
            nbytes = self._allocs.pop(tag)
        except KeyError:
            raise ScenarioError(f"free of unknown allocation '{tag}' on {self.device}") from None
        self._set(self.used_bytes - nbytes)
        return nbytes

    def _set(self, used: int) -> None:
        self.used_bytes = used
        self.peak_bytes = max(self.peak_bytes, used)
        self.timeline.append((self._clock(), used))
