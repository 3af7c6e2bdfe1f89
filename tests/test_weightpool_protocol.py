"""The seqlock protocol on the CPU: versions, retries, torn-read detection under adversarial interleavings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.kernels import seqlock
from fabricsim.kernels.errors import PoolError
from fabricsim.kernels.seqlock import InMemoryBackend, Interleaving, publish, published_version, read_attempt

N = 6


def pattern(v: int, i: int) -> int:
    return v * 1000 + i


def _is_one_version(dst: list[int], v: int) -> bool:
    return dst == [pattern(v, i) for i in range(N)]


@pytest.mark.parametrize("double", [False, True])
def test_versions_advance_by_two_and_reads_see_the_latest(double: bool) -> None:
    mem = InMemoryBackend(N, pattern)

    def execute(op: seqlock.Op, dst: list[int] | None = None):
        return mem.execute(op, dst)

    for k in range(1, 6):
        assert seqlock.run(publish(double), execute) == 2 * k
        assert published_version(mem.words, double) == 2 * k
        dst = [None] * N
        res = seqlock.run(read_attempt(double), lambda op, d=dst: mem.execute(op, d))
        assert res.version == 2 * k and _is_one_version(dst, 2 * k)
    if double:
        assert mem.words[seqlock.HEAD] & 1 == 1  # five flips from slot 0 end in slot 1


def test_single_slot_reader_retries_while_writer_is_active() -> None:
    mem = InMemoryBackend(N, pattern)
    il = Interleaving(mem)
    w = il.spawn(publish(False))
    il.step(w)  # load
    il.step(w)  # odd store
    dst = [None] * N
    r = il.spawn(read_attempt(False), dst)
    il.run(lambda n: n - 1)  # reader first, to completion
    assert il.result(r).version is None and "writer" in il.result(r).reason


def test_torn_read_is_detected_when_writer_overlaps_the_copy() -> None:
    mem = InMemoryBackend(N, pattern)
    il = Interleaving(mem)
    dst = [None] * N
    r = il.spawn(read_attempt(False), dst)
    for _ in range(4):  # load, then copy three words of version 0
        il.step(r)
    w = il.spawn(publish(False))
    while w in il.runnable():
        il.step(w)  # a whole publish of version 2 lands mid-copy
    il.run(lambda n: 0)
    assert dst != [pattern(0, i) for i in range(N)] and not _is_one_version(dst, 2)  # really torn
    assert il.result(r).version is None and "torn" in il.result(r).reason


def test_double_buffer_reader_survives_one_publish_during_its_copy() -> None:
    mem = InMemoryBackend(N, pattern)
    seqlock.run(publish(True), mem.execute)
    il = Interleaving(mem)
    dst = [None] * N
    r = il.spawn(read_attempt(True), dst)
    for _ in range(3):
        il.step(r)
    w = il.spawn(publish(True))
    while w in il.runnable():
        il.step(w)  # the writer fills the other slot and flips
    il.run(lambda n: 0)
    assert il.result(r).version == 2 and _is_one_version(dst, 2)
    assert published_version(mem.words, True) == 4


def _schedule_run(double: bool, schedule: list[int], publishes: int, readers: int):
    mem = InMemoryBackend(N, pattern)
    il = Interleaving(mem)

    def writer():
        for _ in range(publishes):
            yield from publish(double)

    il.spawn(writer())
    dsts = []
    for _ in range(readers):
        dst = [None] * N
        dsts.append(dst)
        il.spawn(read_attempt(double), dst)
    it = iter(schedule)
    il.run(lambda n: next(it, 0))
    return [(il.result(k + 1), dsts[k]) for k in range(readers)]


@settings(max_examples=300, deadline=None)
@given(double=st.booleans(), publishes=st.integers(1, 4), schedule=st.lists(st.integers(0, 3), max_size=200))
def test_no_accepted_read_is_torn(double: bool, publishes: int, schedule: list[int]) -> None:
    for res, dst in _schedule_run(double, schedule, publishes, 3):
        if res.version is not None:
            assert res.version % 2 == 0
            assert _is_one_version(dst, res.version), (res, dst)


@pytest.mark.parametrize("double", [False, True])
def test_random_interleavings_accept_some_and_reject_torn(double: bool) -> None:
    accepted = rejected = torn_copies = 0
    rng = random.Random(1)
    for _ in range(400):
        schedule = [rng.randrange(4) for _ in range(300)]
        for res, dst in _schedule_run(double, schedule, rng.randint(1, 3), 2):
            one = any(_is_one_version(dst, v) for v in range(0, 20, 2))
            if res.version is None:
                rejected += 1
                torn_copies += dst[0] is not None and not one
            else:
                accepted += 1
                assert _is_one_version(dst, res.version)
    assert accepted > 0 and rejected > 0 and torn_copies > 0  # the adversary did tear copies


def test_double_buffer_rejects_a_slot_being_rewritten() -> None:
    mem = InMemoryBackend(N, pattern)
    seqlock.run(publish(True), mem.execute)  # v2 in slot 1
    seqlock.run(publish(True), mem.execute)  # v4 in slot 0
    # A writer that has started v6 into slot 1 while the head still names slot 0 does not disturb readers.
    il = Interleaving(mem)
    w = il.spawn(publish(True))
    il.step(w)
    il.step(w)
    dst = [None] * N
    r = il.spawn(read_attempt(True), dst)
    while r in il.runnable():
        il.step(r)
    assert il.result(r).version == 4 and _is_one_version(dst, 4)


def test_publish_refuses_an_unfinished_seqlock() -> None:
    mem = InMemoryBackend(N, pattern)
    mem.words[seqlock.SEQ0] = 3
    with pytest.raises(PoolError):
        seqlock.run(publish(False), mem.execute)
