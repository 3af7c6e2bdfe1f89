"""A `WeightPool`'s control words in one shared host page: the writer's GPU stores them, readers' CPUs load them.

Why they live here and not in the pool's GPU memory: a reader that loads a word from GPU memory needs a
copy-engine round trip and a stream synchronisation (about 40 us in the device VMs), and the seqlock loads
twice per read, which made a local `read_consistent` of 1 GiB 10-30 % slower than a plain copy. A page of
`/dev/shm`, mapped by every process of the pool, costs a reader one CPU load (well under a microsecond)
per look at the words, and polling `version()` no longer touches the GPU at all.

- The writer creates the file, maps it read-write and registers the mapping with CUDA (pinned, mapped into
  the GPU's unified address space, portable across contexts), so a kernel on the pool's GPU stores the
  words with system-scope atomics in stream order with the payload writes (see `kernels._control_jit`).
- Readers map it read-only: a reader process has no way to store to it (a stray write faults).
- The file is named after the writer's pid; it is removed when the writer closes the pool or is
  collected, and a new writer removes the files of writers that died without closing.
"""

from __future__ import annotations

import contextlib
import glob
import mmap
import os
import secrets
import weakref

import numpy as np

from kernels.errors import KernelInputError, PoolGoneError

SHM_DIR = "/dev/shm"
PREFIX = "fabricsim-wpool-"
PAGE = 4096
# cudaHostRegisterPortable | cudaHostRegisterMapped: pinned for every CUDA context, addressable by kernels
_REGISTER_FLAGS = 1 | 2


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a process we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(shm_dir: str = SHM_DIR) -> int:
    """Remove the control pages of writers that exited without closing their pool; returns how many."""
    removed = 0
    for path in glob.glob(os.path.join(shm_dir, PREFIX + "*")):
        try:
            pid = int(os.path.basename(path)[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    return removed


class HostRegisterError(RuntimeError):
    """CUDA would not pin and map the page (some sandboxed runtimes refuse); the writer then stores from the CPU."""


class HostWords:
    """`n` int64 words in a shared page; `load()` reads them all, in index order, with plain CPU loads."""

    def __init__(self, path: str, mm: mmap.mmap, n: int, writable: bool) -> None:
        self.path = path
        self._mm = mm
        self.words = np.frombuffer(mm, dtype=np.int64, count=n)  # read-only for readers (ACCESS_READ)
        self.writable = writable
        self._registered = 0  # the registered address, once pinned for the GPU
        self._tensor = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def create(cls, n: int, shm_dir: str = SHM_DIR) -> HostWords:
        """A new zeroed page for a writer (stale pages of dead writers are swept first)."""
        if n * 8 > PAGE:
            raise KernelInputError(f"{n} control words do not fit one {PAGE}-byte page")
        if not os.path.isdir(shm_dir):
            raise KernelInputError(f"{shm_dir} is missing: a WeightPool needs shared memory (Linux tmpfs) for its "
                                   "control words")
        sweep_stale(shm_dir)
        path = os.path.join(shm_dir, f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, PAGE)
            mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        words = cls(path, mm, n, writable=True)
        words._finalizer = weakref.finalize(words, _release, path, [0])
        return words

    @classmethod
    def attach(cls, path: str, n: int) -> HostWords:
        """Map a writer's page read-only; `PoolGoneError` if the writer has removed it."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise PoolGoneError(f"the pool's control page {path} is gone: its writer closed the pool or "
                                "exited") from None
        try:
            mm = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        return cls(path, mm, n, writable=False)

    def load(self) -> tuple[int, ...]:
        """Every word, each read once with an aligned 8-byte (single-copy atomic) load, in index order."""
        return tuple(self.words.tolist())

    def store_now(self, index: int, value: int) -> None:
        """A CPU store (the writer's path when no kernel can store; the caller orders it after GPU work)."""
        if not self.writable:
            raise KernelInputError("a reader's control page is read-only")
        np.frombuffer(self._mm, dtype=np.int64, count=index + 1)[index] = value

    def tensor(self):  # -> torch.Tensor, pinned and addressable by kernels on any GPU
        """The page as a pinned int64 CPU tensor, registered with CUDA on first use (writer only).

        Kernels store to it through unified addressing; `cudaHostRegister` pins the shared pages and maps
        them into every CUDA context of this process.
        """
        import torch

        if not self.writable:
            raise KernelInputError("a reader's control page is read-only")
        if self._tensor is not None:
            return self._tensor
        t = torch.frombuffer(self._mm, dtype=torch.int64, count=self.words.shape[0])
        if not self._registered:
            rc = int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), PAGE, _REGISTER_FLAGS))
            if rc != 0:
                raise HostRegisterError(f"cudaHostRegister of the control page failed (cudaError {rc})")
            self._registered = t.data_ptr()
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _release, self.path, [self._registered])
        self._tensor = t
        return t

    def remove(self) -> None:
        """Unpin and delete the page (writer); readers that mapped it keep their mapping."""
        if self._finalizer is not None:
            self._finalizer()


def _release(path: str, registered: list[int]) -> None:
    if registered[0]:
        with contextlib.suppress(Exception):  # CUDA may already be shut down at interpreter exit
            import torch

            torch.cuda.cudart().cudaHostUnregister(registered[0])
        registered[0] = 0
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
