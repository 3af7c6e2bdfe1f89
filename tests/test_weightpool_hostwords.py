"""The pool's shared page of control words, on the CPU: what readers see, what they cannot do, liveness, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from fabricsim.kernels._hostwords import PAGE, PREFIX, HostWords, sweep_stale
from fabricsim.kernels.errors import KernelInputError, LayoutMismatchError, PoolGoneError


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
    r.check_writer()  # the writer (this process, another open file) holds its lock


def test_a_reader_has_no_write_path(shm) -> None:
    w = HostWords.create(8, shm)  # kept alive: a collected writer removes its page
    r = HostWords.attach(w.path, 8)
    with pytest.raises(KernelInputError, match="read-only"):
        r.store_now(0, 1)
    with pytest.raises(KernelInputError, match="read-only"):
        r.tensor()
    with pytest.raises(ValueError):  # the mapping itself is read-only
        r.words[0] = 1
    assert not r.owned_here() and w.owned_here()


def test_removed_page_is_gone_for_new_readers_but_readable_by_mapped_ones(shm) -> None:
    w = HostWords.create(8, shm)
    r = HostWords.attach(w.path, 8)
    w.store_now(6, 2)
    w.remove()
    assert not os.path.exists(w.path)
    assert r.load()[6] == 2
    with pytest.raises(PoolGoneError, match="gone"):
        HostWords.attach(w.path, 8)
    with pytest.raises(PoolGoneError, match="writer is gone"):  # the lock went with the page
        r.check_writer()


def _hold_page(shm: str, q, stop) -> None:
    w = HostWords.create(8, shm)
    w.store_now(6, 1)
    q.put(w.path)
    stop.wait(30)
    os._exit(0)  # dies without cleaning up, like a killed writer


def test_liveness_follows_the_writers_lock_not_its_pid(shm) -> None:
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_hold_page, args=(shm, q, stop))
    p.start()
    path = q.get(timeout=60)
    r = HostWords.attach(path, 8)
    r.check_writer()
    assert sweep_stale(shm) == 0 and os.path.exists(path)  # a live writer's page is never swept
    stop.set()
    p.join(30)
    assert os.path.exists(path)  # os._exit: no cleanup ran
    with pytest.raises(PoolGoneError, match="writer is gone"):
        r.check_writer()
    with pytest.raises(PoolGoneError, match="writer is gone"):
        HostWords.attach(path, 8)
    assert sweep_stale(shm) == 1 and not os.path.exists(path)


def test_sweep_ignores_what_is_not_a_stale_page_of_ours(shm) -> None:
    os.mkdir(os.path.join(shm, PREFIX + "dir"))
    with open(os.path.join(shm, PREFIX + "99999999999999999999-x"), "wb"):
        pass  # an unlocked regular file of ours: stale, whatever its name says
    os.symlink("/etc/hostname", os.path.join(shm, PREFIX + "link"))
    assert sweep_stale(shm) == 1
    assert sorted(os.listdir(shm)) == [PREFIX + "dir", PREFIX + "link"]


def test_a_collected_writer_removes_its_page_but_a_forked_child_does_not(shm) -> None:
    w = HostWords.create(8, shm)
    path = w.path
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the object: the finalizer runs there, and must leave the page
        del w
        os._exit(0 if os.path.exists(path) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0 and os.path.exists(path)
    del w
    assert not os.path.exists(path)


def test_bad_pages_and_missing_shared_memory_are_clear_errors(shm) -> None:
    with pytest.raises(KernelInputError, match="page"):
        HostWords.create(513, shm)
    with pytest.raises(KernelInputError, match="shared memory"):
        HostWords.create(8, os.path.join(shm, "missing"))
    short = os.path.join(shm, "short")
    with open(short, "wb") as f:
        f.write(b"x" * (PAGE - 1))
    with pytest.raises(LayoutMismatchError, match="not a pool control page"):
        HostWords.attach(short, 8)
