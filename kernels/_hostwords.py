"""A `WeightPool`'s control words in one shared host page: the writer's GPU stores them, readers' CPUs load them.

Why they live here and not in the pool's GPU memory: a reader that loads a word from GPU memory needs a
copy-engine round trip and a stream synchronisation (about 40 us in the device VMs), and the seqlock loads
twice per read, which made a local `read_consistent` of 1 GiB 10-30 % slower than a plain copy. A page of
`/dev/shm`, mapped by every process of the pool, costs a reader one CPU load (well under a microsecond)
per look at the words, and polling `version()` no longer touches the GPU at all.

- The writer creates the file (space reserved up front: a full tmpfs is an error here, not a SIGBUS on
  the first store), maps it read-write and registers the mapping with CUDA through the driver API (pinned,
  mapped into the GPU's unified address space, portable across contexts), so a kernel on the pool's GPU
  stores the words in stream order with the payload writes (see `kernels._control_jit`).
- Readers map it read-only: a reader process has no way to store to it (a stray write faults).
- Liveness without pids: the writer holds an exclusive `flock` on the file for its lifetime and the
  kernel drops it when the process dies, however it dies. A reader whose shared lock succeeds knows the
  writer is gone; a new writer removes the pages whose lock it can take (pages of dead writers), and only
  its own user's regular files. Pids would mislead across pid namespaces (containers sharing
  `/dev/shm` through `--ipc=host`).
- The page is removed when the writer closes the pool or is collected (by the creating process only,
  not by a forked child).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import mmap
import os
import secrets
import stat
import weakref

import numpy as np

from fabricsim.kernels.errors import KernelInputError, LayoutMismatchError, PoolGoneError

SHM_DIR = "/dev/shm"
PREFIX = "fabricsim-wpool-"
PAGE = 4096
# CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP: pinned for every context, addressable by kernels
_REGISTER_FLAGS = 1 | 2


class HostRegisterError(RuntimeError):
    """CUDA would not pin and map the page (some sandboxed runtimes refuse); the writer then stores from the CPU."""


def sweep_stale(shm_dir: str = SHM_DIR) -> int:
    """Remove the control pages of writers that exited without closing their pool; returns how many.

    A page counts as stale when nobody holds its lock. Only regular files of this user are considered, and
    anything unexpected (odd names, files of others, races with their owners) is left alone.
    """
    removed = 0
    for path in glob.glob(os.path.join(shm_dir, PREFIX + "*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed


class HostWords:
    """`n` int64 words in a shared page; `load()` reads them all, in index order, with plain CPU loads."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, n: int, writable: bool) -> None:
        self.path = path
        self._fd = fd  # kept open: the writer's lock lives on it, a reader checks liveness through it
        self._mm = mm
        self.words = np.frombuffer(mm, dtype=np.int64, count=n)  # read-only for readers (PROT_READ)
        self.writable = writable
        self._tensor = None
        self._state = [0, os.getpid()]  # [registered address or 0, creating pid], shared with the finalizer
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def create(cls, n: int, shm_dir: str = SHM_DIR) -> HostWords:
        """A new zeroed page for a writer, locked by this process (stale pages of dead writers are swept)."""
        if n * 8 > PAGE:
            raise KernelInputError(f"{n} control words do not fit one {PAGE}-byte page")
        if not os.path.isdir(shm_dir):
            raise KernelInputError(f"{shm_dir} is missing: a WeightPool needs shared memory (Linux tmpfs) for its "
                                   "control words")
        sweep_stale(shm_dir)
        path = os.path.join(shm_dir, f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.posix_fallocate(fd, 0, PAGE)  # ENOSPC now rather than SIGBUS at the first store
            mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise KernelInputError(f"cannot create the pool's control page in {shm_dir}: {exc.strerror}") from None
        words = cls(path, fd, mm, n, writable=True)
        words._finalizer = weakref.finalize(words, _release, path, fd, words._state)
        return words

    @classmethod
    def attach(cls, path: str, n: int) -> HostWords:
        """Map a writer's page read-only; `PoolGoneError` if it is gone or its writer has died."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise PoolGoneError(f"the pool's control page {path} is gone: its writer closed the pool or exited, "
                                "or this process does not share the writer's /dev/shm") from None
        except OSError as exc:
            raise PoolGoneError(f"cannot open the pool's control page {path}: {exc.strerror} (readers must run "
                                "as the writer's user)") from None
        try:
            if os.fstat(fd).st_size < PAGE:
                raise LayoutMismatchError(f"{path} is not a pool control page (shorter than {PAGE} bytes)")
            mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        words = cls(path, fd, mm, n, writable=False)
        weakref.finalize(words, os.close, fd)
        words.check_writer()
        return words

    def load(self) -> tuple[int, ...]:
        """Every word, each read once with an aligned 8-byte (single-copy atomic) load, in index order."""
        return tuple(self.words.tolist())

    def check_writer(self) -> None:
        """`PoolGoneError` unless the writer still holds its lock (reader side; about a microsecond)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # the writer's exclusive lock: alive
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        raise PoolGoneError("the pool's writer is gone: it exited or closed the pool (it no longer holds its lock "
                            "on the control page)")

    def store_now(self, index: int, value: int) -> None:
        """A CPU store (the writer's path when no kernel can store; the caller orders it after GPU work)."""
        if not self.writable:
            raise KernelInputError("a reader's control page is read-only")
        self.words[index] = value  # the writer's view of its read-write mapping is writable

    def tensor(self):  # -> torch.Tensor, pinned and addressable by kernels on any GPU
        """The page as a pinned int64 CPU tensor, registered with CUDA on first use (writer only).

        Kernels store to it through unified addressing. Registration goes through the driver API
        (`cuMemHostRegister`), needing the caller's CUDA context current: a failure there leaves no sticky
        error in the CUDA runtime for the next torch kernel launch to trip over.
        """
        import torch

        if not self.writable:
            raise KernelInputError("a reader's control page is read-only")
        if self._tensor is None:
            t = torch.frombuffer(self._mm, dtype=torch.int64, count=self.words.shape[0])
            torch.cuda.init()
            rc = _driver().cuMemHostRegister_v2(ctypes.c_void_p(t.data_ptr()), ctypes.c_size_t(PAGE),
                                                ctypes.c_uint(_REGISTER_FLAGS))
            if rc != 0:
                raise HostRegisterError(f"cuMemHostRegister of the control page failed (CUresult {rc})")
            self._state[0] = t.data_ptr()
            self._tensor = t
        return self._tensor

    def owned_here(self) -> bool:
        """Whether this process created the page (a forked child inherits the object, not the ownership)."""
        return self.writable and os.getpid() == self._state[1]

    def remove(self) -> None:
        """Unpin and delete the page and drop the lock (writer); readers that mapped it keep their mapping."""
        if self._finalizer is not None:
            self._finalizer()


def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _release(path: str, fd: int, state: list[int]) -> None:
    if os.getpid() != state[1]:
        return  # a forked child exiting: the page belongs to its parent
    if state[0]:
        with contextlib.suppress(Exception):  # CUDA may already be shut down at interpreter exit
            _driver().cuMemHostUnregister(ctypes.c_void_p(state[0]))
        state[0] = 0
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: the mapping keeps the open file (and a lock) alive
        os.close(fd)
