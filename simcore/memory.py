"""Memory accounting per device (HBM, host DRAM): named allocations against a capacity, with a clear OOM."""

from __future__ import annotations

import bisect
from operator import itemgetter

from .errors import OutOfMemory, ScenarioError


class MemoryPool:
    """Allocations on one device; `peak_bytes` and the (time, used) timeline are kept for reports."""

    def __init__(self, device: str, capacity_bytes: int, clock=lambda: 0.0) -> None:
        self.device = device
        self.capacity_bytes = int(capacity_bytes)
        self._clock = clock
        # tag -> (bytes, when it was allocated: a release is never dated before it)
        self._allocs: dict[str, tuple[int, float]] = {}
        self.used_bytes = 0
        self.peak_bytes = 0
        self.timeline: list[tuple[float, int]] = [(0.0, 0)]

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.free_bytes

    def holds(self, tag: str) -> bool:
        """Whether `tag` is allocated here now."""
        return tag in self._allocs

    def alloc(self, nbytes: int, tag: str) -> None:
        """Reserve `nbytes` under `tag`; raises `OutOfMemory` (nothing changes) when it does not fit."""
        if nbytes < 0:
            raise ScenarioError(f"allocation '{tag}' on {self.device}: size must be >= 0, got {nbytes}")
        if tag in self._allocs:
            raise ScenarioError(f"allocation '{tag}' on {self.device} already exists")
        if nbytes > self.free_bytes:
            raise OutOfMemory(self.device, nbytes, self.free_bytes, self.capacity_bytes, tag)
        self._allocs[tag] = (int(nbytes), self._clock())
        self._set(self.used_bytes + int(nbytes))

    def free(self, tag: str, at: float | None = None) -> int:
        """Release `tag`; returns its bytes. `at`: when it was released, if earlier than the clock (a compiled run
        is over before its declared items' callbacks could run: `SyncContext.free_after`): levels recorded after
        `at` held the bytes no more, so they drop by them, and the peak is their maximum again."""
        if tag not in self._allocs:
            raise ScenarioError(f"free of unknown allocation '{tag}' on {self.device}")
        nbytes, since = self._allocs[tag]
        if at is not None and not since <= at <= self._clock():
            raise ScenarioError(f"free of '{tag}' on {self.device} dated {at!r} s: not between its allocation "
                                f"({since!r} s) and now ({self._clock()!r} s)")
        del self._allocs[tag]
        if at is None:
            self._set(self.used_bytes - nbytes)
            return nbytes
        self.used_bytes -= nbytes
        line = self.timeline
        k = bisect.bisect_right(line, at, key=itemgetter(0))
        line[k:] = [(at, line[k - 1][1] - nbytes), *((t, used - nbytes) for t, used in line[k:])]
        self.peak_bytes = max(used for _, used in line)
        return nbytes

    def _set(self, used: int) -> None:
        self.used_bytes = used
        self.peak_bytes = max(self.peak_bytes, used)
        self.timeline.append((self._clock(), used))
