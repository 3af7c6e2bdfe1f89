"""The versioning protocol of `WeightPool`, as pure Python over an abstract memory.

The protocol is written as generators that yield the memory operations they need (`Load`, `Store`,
`CopySlot`, `WriteSlot`) and receive the results. A backend runs them: the CUDA backend of
`kernels.weightpool` turns each operation into stream-ordered GPU work, and `InMemoryBackend` below runs
them on Python lists, split into single-word steps, so tests can interleave a writer and readers
adversarially and check that no torn read is ever accepted.

Control words (64-bit, never wrapping in practice, so values never repeat: no ABA):

- single-slot mode: `seq[0]` is a seqlock. The writer makes it odd, writes the slot, makes it even;
  the published version is the even value. A reader loads `seq[0]` (v1), copies the slot, loads it again
  (v2) and accepts the copy only if v1 is even and v2 == v1.
- double-buffered mode: two slots, each with its own `seq[s]`, and `head = version | slot` (versions are
  even, so the low bit names the slot). Publishing version v into the idle slot t = 1 - (head & 1):
  `seq[t] = v - 1` (odd), write slot t, `seq[t] = v`, then the flip `head = v | t`, one word stored at
  once. A reader loads head (slot s, version v), checks `seq[s] == v`, copies slot s, and accepts if
  `seq[s]` still equals v. Readers copy a slot the writer is not touching, so they only retry when the
  writer publishes twice during one read.

Why an accepted read is one version (given the ordering the backend provides: the writer's operations
take effect in program order, and a reader's first load, copy and second load happen in that order): any
payload word the reader copied that was written by a later publish was written after that publish's odd
store, so the reader's second load, which comes after the copy, sees that odd value or a later one, and
the check fails. Any word written by an earlier publish was overwritten before the even store the first
load saw. So every accepted word belongs to exactly the version the first load named.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from fabricsim.kernels.errors import PoolError

HEAD, SEQ0, SEQ1 = 0, 1, 2
N_WORDS = 3


@dataclass(frozen=True)
class Load:
    """Load every control word (acquire, system scope); the result is a tuple (head, seq0, seq1)."""


@dataclass(frozen=True)
class Store:
    """Store one control word (release, system scope)."""

    index: int
    value: int


@dataclass(frozen=True)
class CopySlot:
    """Copy (part of) a payload slot out to the reader's destination."""

    slot: int


@dataclass(frozen=True)
class WriteSlot:
    """Write the new payload (of `version`) into a slot."""

    slot: int
    version: int


Op = Load | Store | CopySlot | WriteSlot


@dataclass(frozen=True)
class ReadAttempt:
    """The outcome of one read attempt: the version copied, or None where the copy must be retried."""

    version: int | None
    reason: str = ""


def published_version(words: Sequence[int], double: bool) -> int:
    """The newest completely published version, from the control words."""
    if double:
        return words[HEAD] & ~1
    return words[SEQ0] & ~1


def read_attempt(double: bool) -> Generator[Op, Any, ReadAttempt]:
    """One reader attempt: load, copy, load again, validate."""
    before = yield Load()
    if double:
        slot = before[HEAD] & 1
        version = before[HEAD] - slot
        if before[SEQ0 + slot] != version:
            return ReadAttempt(None, "slot already being rewritten")
    else:
        slot, version = 0, before[SEQ0]
        if version & 1:
            return ReadAttempt(None, "writer active")
    yield CopySlot(slot)
    after = yield Load()
    if after[SEQ0 + slot] != version:
        return ReadAttempt(None, "torn: slot rewritten during the copy")
    return ReadAttempt(version)


def publish(double: bool) -> Generator[Op, Any, int]:
    """One writer publish: returns the new version. Only one writer may run it at a time."""
    words = yield Load()
    if double:
        slot = 1 - (words[HEAD] & 1)
        version = (words[HEAD] & ~1) + 2
        yield Store(SEQ0 + slot, version - 1)
        yield WriteSlot(slot, version)
        yield Store(SEQ0 + slot, version)
        yield Store(HEAD, version | slot)
        return version
    version = words[SEQ0] + 2
    if words[SEQ0] & 1:
        raise PoolError("publish found the seqlock odd: an earlier publish did not finish (close the pool)")
    yield Store(SEQ0, version - 1)
    yield WriteSlot(0, version)
    yield Store(SEQ0, version)
    return version


def run(steps: Generator[Op, Any, Any], execute: Callable[[Op], Any]) -> Any:
    """Drive a protocol generator to the end with `execute` performing each operation."""
    try:
        op = next(steps)
        while True:
            op = steps.send(execute(op))
    except StopIteration as stop:
        return stop.value


class InMemoryBackend:
    """A fake pool on Python lists: control words plus two payload slots of `n_words` integers.

    `steps(op, pattern)` expands one protocol operation into single-word steps (a generator), so a test
    scheduler can run any interleaving of writers and readers. A slot written for version v holds
    `pattern(v, i)` at word i; a reader's copy lands in its own list.
    """

    def __init__(self, n_words: int, pattern: Callable[[int, int], int]) -> None:
        self.words = [0] * N_WORDS
        self.pattern = pattern
        self.slots = [[pattern(0, i) for i in range(n_words)] for _ in range(2)]

    def steps(self, op: Op, dst: list[int] | None = None) -> Generator[None, None, Any]:
        """The single-word steps of `op`; the generator's return value is the operation's result."""
        if isinstance(op, Load):
            return tuple(self.words)
        if isinstance(op, Store):
            self.words[op.index] = op.value
            return None
        if isinstance(op, WriteSlot):
            slot = self.slots[op.slot]
            for i in range(len(slot)):
                slot[i] = self.pattern(op.version, i)
                yield
            return None
        assert isinstance(op, CopySlot) and dst is not None
        slot = self.slots[op.slot]
        for i in range(len(slot)):
            dst[i] = slot[i]
            yield
        return None

    def execute(self, op: Op, dst: list[int] | None = None) -> Any:
        """Run `op` to completion with no interleaving."""
        return run_steps(self.steps(op, dst))


def run_steps(gen: Generator[None, None, Any]) -> Any:
    """Exhaust a step generator and return its value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


class Interleaving:
    """Runs protocol generators as threads of single-word steps, picking who steps next by `choose`.

    Each thread is a protocol generator plus its destination list; `choose(n)` returns the index of the
    runnable thread to advance by one step (a test passes a random or hypothesis-drawn schedule).
    """

    def __init__(self, mem: InMemoryBackend) -> None:
        self.mem = mem
        self._threads: list[dict[str, Any]] = []

    def spawn(self, proto: Generator[Op, Any, Any], dst: list[int] | None = None) -> int:
        """Add a thread; returns its id."""
        self._threads.append({"proto": proto, "dst": dst, "step": None, "send": None, "done": False,
                              "result": None, "started": False})
        return len(self._threads) - 1

    def runnable(self) -> list[int]:
        """Ids of threads that have not finished."""
        return [i for i, t in enumerate(self._threads) if not t["done"]]

    def step(self, tid: int) -> None:
        """Advance thread `tid` by one single-word step (a control word access, or one payload word)."""
        t = self._threads[tid]
        if t["step"] is not None:
            try:
                next(t["step"])
                return
            except StopIteration as stop:
                t["step"] = None
                t["send"] = stop.value
        try:
            op = t["proto"].send(t["send"]) if t["started"] else next(t["proto"])
            t["started"] = True
        except StopIteration as stop:
            t["done"], t["result"] = True, stop.value
            return
        t["send"] = None
        gen = self.mem.steps(op, t["dst"])
        try:
            next(gen)
            t["step"] = gen
        except StopIteration as stop:
            t["send"] = stop.value

    def result(self, tid: int) -> Any:
        """The protocol generator's return value once the thread is done."""
        return self._threads[tid]["result"]

    def run(self, choose: Callable[[int], int], max_steps: int = 1_000_000) -> None:
        """Step threads chosen by `choose` until all are done."""
        for _ in range(max_steps):
            ids = self.runnable()
            if not ids:
                return
            self.step(ids[choose(len(ids)) % len(ids)])
        raise RuntimeError("interleaving did not finish")
