"""The shared pool's versioning protocol as the simulator runs it: the seqlock of `kernels/seqlock.py`.

The real pool (`kernels.WeightPool`) versions its payload with a seqlock, and the simulated pool must follow
the same rules, or its retries and staleness mean nothing: the writer never waits for readers; a reader loads
the control words, copies, loads them again, and retries unless the copy was one version; double buffering
lets readers copy one slot while the writer fills the other. The workload layer may not import `kernels`, so
the protocol is written here once more, operation for operation (`tests/test_pool_protocol.py` runs both under
the same adversarial interleavings of `kernels.seqlock.Interleaving` and requires identical outcomes).

Operations are tuples: `("load",)` -> the words (head, seq0, seq1); `("store", index, value)`;
`("copy", slot)` (the reader's payload copy: a timed transfer in the simulator); `("write", slot, version)`
(the writer's payload write). `SimPool.drive` runs a protocol generator on a simulation, charging each
operation the time the caller gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import WorkloadError

HEAD, SEQ0, SEQ1 = 0, 1, 2
N_WORDS = 3
Op = tuple


class PoolProtocolError(WorkloadError):
    """A pool operation that breaks the protocol (a publish that finds an unfinished one)."""


@dataclass(frozen=True)
class ReadOutcome:
    """A read attempt's result: the version copied, or None and why it must be retried."""

    version: int | None
    reason: str = ""


def published_version(words: tuple[int, ...] | list[int], double: bool) -> int:
    """The newest completely published version, from the control words."""
    return (words[HEAD] if double else words[SEQ0]) & ~1


def read_attempt(double: bool) -> Generator[Op, Any, ReadOutcome]:
    """One reader attempt: load, copy, load again, validate (the rules of `kernels.seqlock.read_attempt`)."""
    before = yield ("load",)
    if double:
        slot = before[HEAD] & 1
        version = before[HEAD] - slot
        if before[SEQ0 + slot] != version:
            return ReadOutcome(None, "slot already being rewritten")
    else:
        slot, version = 0, before[SEQ0]
        if version & 1:
            return ReadOutcome(None, "writer active")
    yield ("copy", slot)
    after = yield ("load",)
    if after[SEQ0 + slot] != version:
        return ReadOutcome(None, "torn: slot rewritten during the copy")
    return ReadOutcome(version)


def publish(double: bool) -> Generator[Op, Any, int]:
    """One writer publish (single writer): returns the new version. The writer never waits for readers."""
    words = yield ("load",)
    if double:
        slot = 1 - (words[HEAD] & 1)
        version = (words[HEAD] & ~1) + 2
        yield ("store", SEQ0 + slot, version - 1)
        yield ("write", slot, version)
        yield ("store", SEQ0 + slot, version)
        yield ("store", HEAD, version | slot)
        return version
    if words[SEQ0] & 1:
        raise PoolProtocolError("publish found the seqlock odd: an earlier publish did not finish")
    version = words[SEQ0] + 2
    yield ("store", SEQ0, version - 1)
    yield ("write", 0, version)
    yield ("store", SEQ0, version)
    return version


class SimPool:
    """The control words of one simulated pool, and a driver that runs protocol generators on a simulation.

    `drive(gen, cost)` is a simpy process body: for each operation it applies loads and stores to the words at
    the simulated instant they complete and yields whatever event `cost(op)` returns for it (a delay, a
    transfer, a kernel; None = instantaneous). So a reader's copy that spans a publish sees the words the
    publish left, and retries exactly when the kernel's reader would.
    """

    def __init__(self, double: bool) -> None:
        self.double = double
        self.words = [0] * N_WORDS
        self.attempts = 0
        self.retries = 0
        self.publishes = 0

    def version(self) -> int:
        return published_version(self.words, self.double)

    def drive(self, gen: Generator[Op, Any, Any], cost: Callable[[Op], Any]) -> Generator[Any, Any, Any]:
        result: Any = None
        try:
            op = next(gen)
            while True:
                ev = cost(op)
                if ev is not None:
                    yield ev
                if op[0] == "load":
                    result = tuple(self.words)
                elif op[0] == "store":
                    self.words[op[1]] = op[2]
                    result = None
                else:
                    result = None
                op = gen.send(result)
        except StopIteration as stop:
            return stop.value

    def read(self, cost: Callable[[Op], Any], poll: Callable[[], Any], max_attempts: int = 10_000
             ) -> Generator[Any, Any, int]:
        """Read attempts until one is accepted; returns the version. `poll()` is the pause between attempts."""
        for _ in range(max_attempts):
            self.attempts += 1
            out = yield from self.drive(read_attempt(self.double), cost)
            if out.version is not None:
                return out.version
            self.retries += 1
            ev = poll()
            if ev is not None:
                yield ev
        raise PoolProtocolError(f"no consistent read in {max_attempts} attempts (the writer publishes faster than "
                                "a reader copies: use double buffering)")

    def publish(self, cost: Callable[[Op], Any]) -> Generator[Any, Any, int]:
        v = yield from self.drive(publish(self.double), cost)
        self.publishes += 1
        return v
