"""The pool's shared page of control words, on the CPU: what readers see, what they cannot do, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kernels._hostwords import PREFIX, HostWords, sweep_stale
from kernels.errors import KernelInputError, PoolGoneError


@pytest.fixture
def shm(tmp_path):
    return str(tmp_path)


def test_a_reader_sees_the_writers_stores_in_its_own_mapping(shm) -> None:
    w = HostWords.create(8, shm)
    assert os.path.basename(w.path).startswith(f"{PREFIX}{os.getpid()}-")
    r = HostWords.attach(w.path, 8)
    assert r.load() == (0,) * 8
    w.store_now(1, 7)
    w.store_now(6, -3)
    assert r.load() == (0, 7, 0, 0, 0, 0, -3, 0)
    assert all(type(x) is int for x in r.load())


def test_a_reader_has_no_write_path(shm) -> None:
    w = HostWords.create(8, shm)  # kept alive: a collected writer removes its page
    r = HostWords.attach(w.path, 8)
    with pytest.raises(KernelInputError, match="read-only"):
        r.store_now(0, 1)
    with pytest.raises(KernelInputError, match="read-only"):
        r.tensor()
    with pytest.raises(ValueError):  # the mapping itself is read-only
        r.words[0] = 1


def test_removed_page_is_gone_for_new_readers_but_not_for_mapped_ones(shm) -> None:
    w = HostWords.create(8, shm)
    r = HostWords.attach(w.path, 8)
    w.store_now(6, 2)
    w.remove()
    assert not os.path.exists(w.path)
    assert r.load()[6] == 2
    with pytest.raises(PoolGoneError, match="gone"):
        HostWords.attach(w.path, 8)


def test_pages_of_dead_writers_are_swept_and_live_ones_kept(shm) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = os.path.join(shm, f"{PREFIX}{dead}-abc")
    open(stale, "wb").close()
    mine = HostWords.create(8, shm)  # creating sweeps
    assert not os.path.exists(stale) and os.path.exists(mine.path)
    assert sweep_stale(shm) == 0
    path = mine.path
    del mine  # a writer collected without closing removes its page too
    assert not os.path.exists(path)


def test_too_many_words_or_no_shared_memory_are_clear_errors(shm) -> None:
    with pytest.raises(KernelInputError, match="page"):
        HostWords.create(513, shm)
    with pytest.raises(KernelInputError, match="shared memory"):
        HostWords.create(8, os.path.join(shm, "missing"))
