"""`WeightPool`: versioned shared weights over CUDA IPC (one writer, many read-only readers).

The writer (a trainer) allocates ONE flat device allocation: a 4 KiB header (the pool's identity words), then
one payload slot (or two, double-buffered) holding every named tensor at 16-byte-aligned offsets. It
exports an IPC handle (`export()`, picklable); readers on the same GPU or another GPU of the node open it
(`PoolReader.open`) and get copies (`read_consistent`) or zero-copy views (`views`) of the weights.
Versioning is the seqlock of `kernels.seqlock` (see there for the protocol and the proof that an
accepted read is exactly one version); this module is its CUDA backend.

Where the control words live. The seqlock words, the pool's state and its identity words sit in one
shared page of pinned host memory (`kernels._hostwords`), mapped read-write by the writer (and
registered with CUDA, so its GPU can store to it) and read-only by every reader. A reader looks at them
with CPU loads, so a version check costs well under a microsecond and no GPU work; the pool's GPU
allocation keeps a copy of the identity words in its first 4 KiB, checked once when a reader opens it.

Memory ordering across processes and GPUs — what makes the backend correct:

- Writer. All writer operations (control-word stores, the payload copies, the user's fill) run on one
  writer stream, in order. A kernel (or copy) does not start before the previous one in its stream has
  finished, and a finished kernel's stores have been performed at the owning GPU's L2, the point of
  coherence for that GPU's memory: peer GPUs and copy engines read the payload through it. Control words
  are stored by a one-thread kernel with `atom.release.sys` (Triton `tl.atomic_xchg(sem="release",
  scope="sys")`) followed by `fence.sc.sys`. The release is cumulative: every payload write earlier in
  the stream is visible system-wide before the even word or the flip is. The fence orders the other way:
  the odd word is visible to the host before any later payload write of the stream happens. (The H100
  reports no native host atomics, so the exchange to host memory is not atomic there; one writer makes
  that irrelevant: it is a store with release semantics.) `publish()` synchronises its stream before
  returning, so a publish that returned is visible to every reader.
- Reader. An attempt is: load the words (CPU), enqueue the payload copy on the reader's stream,
  synchronise that stream, load the words again (CPU). The copy's reads happen after the first load (the
  copy is only enqueued after Python has branched on the loaded value, and that control dependency
  orders the load before the store that rings the GPU's doorbell, on Arm as on x86) and before the second
  (the synchronisation returns only after the copy completed, and the CPU's later load cannot be served
  before it). That is all the seqlock needs (proof in `kernels.seqlock`): a payload byte of a newer
  version was written after its odd word became visible, so the second load sees that odd word or a later
  one, and the attempt is retried. Loads of different words may be reordered with each other on weakly
  ordered CPUs; that can only turn an accepted read into a retry, never the other way, because every
  acceptance is decided by a load that comes after the copy.
- Zero-copy views give no such guarantee by themselves: a kernel reading them in place must bracket its
  reads with `version()` checks (or read a double-buffered slot it knows the writer is not filling).

Readers have no write path: `PoolReader` offers no method that stores to the pool and the ones a
writer has raise `ReadOnlyPoolError`. Errors are typed: `PoolGoneError` (the writer closed the pool,
exited or was collected; the handle or control page cannot be opened: readers need the writer's user and
`/dev/shm`), `LayoutMismatchError` (the reader expected other names/shapes/dtypes, or the header's format
or fingerprint differs from the handle's), `PeerAccessError` (reader GPU cannot address the pool's GPU),
`PoolTimeoutError`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fabricsim.kernels import seqlock
from fabricsim.kernels._hostwords import HostRegisterError, HostWords
from fabricsim.kernels.errors import (
    KernelInputError,
    LayoutMismatchError,
    PeerAccessError,
    PoolGoneError,
    PoolTimeoutError,
    ReadOnlyPoolError,
)

HEADER_BYTES = 4096
ALIGN = 16
MAGIC = 0x57504F4F4C5F5631  # "WPOOL_V1"
FORMAT_VERSION = 1
# header word indices (int64); 0..2 are the seqlock's control words
W_MAGIC, W_FORMAT, W_FINGERPRINT, W_STATE, W_PID = 3, 4, 5, 6, 7
N_HEADER_WORDS = 8
STATE_OPEN, STATE_CLOSED = 1, 2


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor in a pool slot."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "torch.bfloat16"
    offset: int  # bytes from the slot's start
    nbytes: int


@dataclass(frozen=True)
class PoolLayout:
    """Names, shapes, dtypes and offsets of a pool's tensors, and its slot count."""

    specs: tuple[TensorSpec, ...]
    slot_bytes: int
    double_buffered: bool

    @classmethod
    def build(cls, tensors: Mapping[str, tuple[Sequence[int], torch.dtype]], double_buffered: bool) -> PoolLayout:
        """Place `name -> (shape, dtype)` back to back at 16-byte offsets."""
        specs, off = [], 0
        for name, (shape, dtype) in tensors.items():
            n = 1
            for d in shape:
                n *= int(d)
            nbytes = n * torch.empty((), dtype=dtype).element_size()
            specs.append(TensorSpec(name, tuple(int(d) for d in shape), str(dtype), off, nbytes))
            off += (nbytes + ALIGN - 1) // ALIGN * ALIGN
        return cls(tuple(specs), max(off, ALIGN), double_buffered)

    @property
    def slots(self) -> int:
        return 2 if self.double_buffered else 1

    @property
    def total_bytes(self) -> int:
        return HEADER_BYTES + self.slots * self.slot_bytes

    def fingerprint(self) -> int:
        """A 63-bit hash of the layout, stored in the header and checked by readers."""
        blob = json.dumps([FORMAT_VERSION, self.double_buffered, self.slot_bytes,
                           [(s.name, s.shape, s.dtype, s.offset) for s in self.specs]]).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1

    @functools.cached_property
    def _index(self) -> dict[str, TensorSpec]:
        # cached_property writes __dict__ directly, which a frozen dataclass allows
        return {s.name: s for s in self.specs}

    def spec(self, name: str) -> TensorSpec:
        """The named tensor's place (a dict lookup: a read of n named tensors must not cost n^2 compares)."""
        try:
            return self._index[name]
        except KeyError:
            raise KernelInputError(f"pool has no tensor named {name!r}") from None

    def check_expected(self, expected: Mapping[str, tuple[Sequence[int], torch.dtype]]) -> None:
        """Raise `LayoutMismatchError` unless the pool holds exactly `expected`'s names, shapes, dtypes."""
        have = {s.name: (s.shape, s.dtype) for s in self.specs}
        want = {n: (tuple(int(d) for d in shape), str(dt)) for n, (shape, dt) in expected.items()}
        if have != want:
            diff = sorted(set(have.items()) ^ set(want.items()))[:4]
            raise LayoutMismatchError(f"pool layout differs from the expected one (first differences: {diff})")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _slot_views(mem: torch.Tensor, layout: PoolLayout, slot: int) -> dict[str, torch.Tensor]:
    base = HEADER_BYTES + slot * layout.slot_bytes
    return {
        s.name: mem[base + s.offset : base + s.offset + s.nbytes].view(_dtype(s.dtype)).view(s.shape)
        for s in layout.specs
    }


@dataclass(frozen=True)
class PoolHandle:
    """What a reader needs to open a pool: picklable, send it through any IPC channel."""

    layout: PoolLayout
    rebuild: Any  # torch.multiprocessing.reductions' rebuild function and its arguments
    device: int
    writer_pid: int
    key: int  # the writer object's id, to find the pool without IPC inside the writer's own process
    words_path: str  # the shared page of control words (kernels._hostwords)


@dataclass
class ReadStats:
    """Counters of a reader's `read_consistent` calls."""

    reads: int = 0
    attempts: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        return self.attempts - self.reads

    @property
    def retry_rate(self) -> float:
        return self.retries / self.attempts if self.attempts else 0.0


class WeightPool:
    """The writer side: one flat allocation, named views, seqlock publishing, IPC export."""

    def __init__(
        self,
        tensors: Mapping[str, tuple[Sequence[int], torch.dtype]],
        device: torch.device | int | str = 0,
        double_buffered: bool = False,
    ) -> None:
        self.device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if self.device.type != "cuda":
            raise KernelInputError("a WeightPool lives in GPU memory (CUDA IPC); give a CUDA device")
        self.layout = PoolLayout.build(tensors, double_buffered)
        self.double = double_buffered
        self.mem = torch.zeros(self.layout.total_bytes, dtype=torch.uint8, device=self.device)
        self.stream = torch.cuda.Stream(self.device)
        self._words = [0] * seqlock.N_WORDS
        identity = {W_MAGIC: MAGIC, W_FORMAT: FORMAT_VERSION, W_FINGERPRINT: self.layout.fingerprint(),
                    W_PID: os.getpid(), W_STATE: STATE_OPEN}
        header = self.mem[: N_HEADER_WORDS * 8].view(torch.int64)
        self.words = HostWords.create(N_HEADER_WORDS)
        for index, value in identity.items():  # before any reader can exist: plain stores will do
            header[index] = value
            self.words.store_now(index, value)
        torch.cuda.synchronize(self.device)
        with torch.cuda.device(self.device):
            self.store_path, self._store = _store_word_fn(self.words, self.stream)
        self._closed = False
        # a pool collected without close() still tells its readers: the stream drained, CLOSED, page removed
        self._finalizer = weakref.finalize(self, _shut_down, self.stream, self.words, id(self))
        self.last_flip_ns = 0  # host clock (perf_counter_ns) when the last publish's flip was enqueued
        self._views: dict[int, dict[str, torch.Tensor]] = {}
        _LOCAL_POOLS[id(self)] = self.mem

    def views(self, slot: int = 0) -> dict[str, torch.Tensor]:
        """Writable views of one slot (the writer fills them inside `publish`). Built once per slot: building
        a view per tensor costs about 10 us, which every publish paid for every tensor before."""
        if slot not in self._views:
            self._views[slot] = _slot_views(self.mem, self.layout, slot)
        return dict(self._views[slot])

    def version(self) -> int:
        """The newest completely published version (the writer keeps the control words itself)."""
        return seqlock.published_version(self._words, self.double)

    def publish(
        self,
        tensors: Mapping[str, torch.Tensor] | None = None,
        fill: Callable[[dict[str, torch.Tensor]], None] | None = None,
    ) -> int:
        """Write a new version and make it visible; returns the new version (even).

        Either copy `tensors` (name -> tensor, any subset) into the slot, or call `fill(views)`, which must
        enqueue its writes on the current stream (the pool's stream is current while it runs).
        In double-buffered mode the slot filled is the idle one: it holds the version before last, so
        `fill` should overwrite everything it wants to publish.
        """
        tensors = dict(tensors or {})
        for name, t in tensors.items():  # checked before the seqlock goes odd
            spec = self.layout.spec(name)
            if tuple(t.shape) != spec.shape or str(t.dtype) != spec.dtype:
                raise KernelInputError(f"{name!r} must be {spec.dtype}{list(spec.shape)}")
        with self.writing() as views:
            for name, t in tensors.items():
                views[name].copy_(t, non_blocking=True)
            if fill is not None:
                fill(views)
        return self.version()

    @contextlib.contextmanager
    def writing(self) -> Iterator[dict[str, torch.Tensor]]:
        """Publish in place: yields the slot's views; the new version is published when the block exits.

        The caller's writes must be enqueued on the current stream (the pool's, inside the block). If the
        block raises, the version is not published and the pool stays marked as being written (readers
        retry, later publishes are refused): close it.
        """
        self._check_open()
        gen = seqlock.publish(self.double)
        pending: list[tuple[int, int]] = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            op = next(gen)
            with contextlib.suppress(StopIteration):
                while True:
                    if isinstance(op, seqlock.Store):
                        pending.append((op.index, op.value))  # consecutive stores: one launch
                        op = gen.send(None)
                        continue
                    self._flush(pending)
                    if isinstance(op, seqlock.Load):
                        op = gen.send(tuple(self._words))
                    else:
                        yield self.views(op.slot)
                        op = gen.send(None)
            self._flush(pending)
            self.last_flip_ns = time.perf_counter_ns()
        self.stream.synchronize()

    def _flush(self, pending: list[tuple[int, int]]) -> None:
        """Store the pending control words, in order, with system-scope release stores (one launch)."""
        while pending:
            batch, pending[:] = pending[:2], pending[2:]
            self._store(batch)
            for index, value in batch:
                self._words[index] = value

    def export(self) -> PoolHandle:
        """The IPC handle readers open (picklable; valid while this writer keeps the pool open)."""
        from torch.multiprocessing.reductions import reduce_tensor

        self._check_open()
        return PoolHandle(self.layout, reduce_tensor(self.mem), self.device.index or 0, os.getpid(), id(self),
                          self.words.path)

    def close(self) -> None:
        """Mark the pool closed: readers get `PoolGoneError` from their next operation."""
        if not self._closed:
            self._closed = True
            self._finalizer()  # readers that mapped the page see CLOSED; new ones get PoolGoneError

    def _check_open(self) -> None:
        if self._closed:
            raise PoolGoneError("this pool was closed")


class PoolReader:
    """The reader side: opens a `PoolHandle` read-only. No method of it stores to the pool."""

    def __init__(self, handle: PoolHandle, mem: torch.Tensor, device: torch.device, words: HostWords) -> None:
        self.layout = handle.layout
        self.double = handle.layout.double_buffered
        self.mem = mem
        self.device = device
        self.writer_pid = handle.writer_pid
        self.stream = torch.cuda.Stream(mem.device)
        self.words = words
        self._writer_checked = float("-inf")  # when version() last probed the writer's lock
        self.stats = ReadStats()
        self._views: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(
        cls,
        handle: PoolHandle,
        device: torch.device | int | str | None = None,
        expected: Mapping[str, tuple[Sequence[int], torch.dtype]] | None = None,
    ) -> PoolReader:
        """Open a pool exported by a writer (in another process, or this one).

        `device` is the reader's GPU (default: the pool's); `expected` (name -> (shape, dtype)) makes a
        layout that differs an error rather than a silent misread.
        """
        if expected is not None:
            handle.layout.check_expected(expected)
        words = HostWords.attach(handle.words_path, N_HEADER_WORDS)  # PoolGoneError if gone or writer dead
        dev = torch.device("cuda", handle.device) if device is None else (
            torch.device("cuda", device) if isinstance(device, int) else torch.device(device))
        if dev.type != "cuda":
            raise KernelInputError(f"a pool reader runs on a CUDA device, got {dev}")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index != handle.device and not torch.cuda.can_device_access_peer(dev.index, handle.device):
            raise PeerAccessError(f"cuda:{dev.index} cannot access the pool's GPU cuda:{handle.device}")
        fn, args = handle.rebuild
        try:
            # CUDA cannot open an IPC handle in the process that exported it: use the pool directly there.
            local = _LOCAL_POOLS.get(handle.key) if handle.writer_pid == os.getpid() else None
            mem = local if local is not None else fn(*args)
        except (RuntimeError, OSError) as exc:
            raise PoolGoneError(f"cannot open the pool's IPC handle: {exc}") from exc
        reader = cls(handle, mem, dev, words)
        words = reader.words.load()
        header = tuple(mem[: N_HEADER_WORDS * 8].view(torch.int64).tolist())  # the GPU copy, read once
        for where, w in (("control page", words), ("GPU header", header)):
            if w[W_MAGIC] != MAGIC or w[W_FORMAT] != FORMAT_VERSION:
                raise LayoutMismatchError(f"not a pool of format {FORMAT_VERSION} (the {where}'s magic/format "
                                          "words differ)")
            if w[W_FINGERPRINT] != handle.layout.fingerprint():
                raise LayoutMismatchError(f"the {where}'s layout fingerprint differs from the handle's layout")
        reader._check_state(words)
        return reader

    def version(self) -> int:
        """The newest completely published version."""
        words = self.words.load()
        self._check_state(words)
        now = time.monotonic()
        if now - self._writer_checked > 1e-3:  # a lock probe is a syscall (~2 us in the VMs): at most once a ms
            self.words.check_writer()
            self._writer_checked = now
        return seqlock.published_version(words, self.double)

    def wait_for(self, version: int, timeout: float = 10.0) -> int:
        """Block until the published version is at least `version`; returns it."""
        deadline = time.monotonic() + timeout
        pause = 0.0
        while True:
            v = self.version()
            if v >= version:
                return v
            if time.monotonic() > deadline:
                raise PoolTimeoutError(f"version {version} not published within {timeout} s (have {v})")
            if pause:
                time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 1e-6)

    def views(self, slot: int | None = None) -> dict[str, torch.Tensor]:
        """Zero-copy views of a slot (default: the newest published one), on the pool's GPU.

        A kernel may read them in place (from the reader's GPU through peer access); the bytes are only
        one version while the writer does not rewrite that slot: bracket in-place reads with `version()`.
        """
        if slot is None:
            slot = self.words.load()[seqlock.HEAD] & 1 if self.double else 0
        if slot not in self._views:
            if self.device.index != self.mem.device.index:
                from fabricsim.kernels._runtime import enable_peer_access

                enable_peer_access(self.device.index, self.mem.device.index)
            self._views[slot] = _slot_views(self.mem, self.layout, slot)
        return dict(self._views[slot])

    def read_consistent(
        self,
        dst: Mapping[str, torch.Tensor] | torch.Tensor,
        names: Sequence[str] | None = None,
        max_attempts: int = 1_000_000,
        timeout: float = 10.0,
    ) -> int:
        """Copy one version of the pool into `dst`; returns that version.

        `dst` is either name -> tensor (all of `dst`'s names, or only `names`), or one flat uint8 tensor of
        `layout.slot_bytes` bytes receiving the whole slot in one copy. Retries until the copy was one
        version (seqlock), up to `max_attempts` or `timeout` seconds.
        """
        if isinstance(dst, torch.Tensor):
            if names is not None or dst.dtype != torch.uint8 or dst.numel() != self.layout.slot_bytes:
                raise KernelInputError(f"a flat dst must be uint8 with {self.layout.slot_bytes} elements")
            pairs: list[tuple[torch.Tensor, int, int]] = [(dst, 0, self.layout.slot_bytes)]
        else:
            wanted = list(names) if names is not None else list(dst)
            pairs = []
            for name in wanted:
                s = self.layout.spec(name)
                t = dst[name]
                if tuple(t.shape) != s.shape or str(t.dtype) != s.dtype:
                    raise KernelInputError(f"dst[{name!r}] must be {s.dtype}{list(s.shape)}")
                pairs.append((t, s.offset, s.nbytes))
        deadline = time.monotonic() + timeout
        for attempt in range(max_attempts):
            result = self._attempt(pairs)
            self.stats.attempts += 1
            if result.version is not None:
                self.stats.reads += 1
                return result.version
            self.stats.reasons[result.reason] = self.stats.reasons.get(result.reason, 0) + 1
            if attempt % 64 == 63:
                self.words.check_writer()  # a writer that died mid-publish leaves the seqlock odd for good
                if time.monotonic() > deadline:
                    break
        raise PoolTimeoutError(f"no consistent read after {self.stats.attempts} attempts")

    def _attempt(self, pairs: list[tuple[torch.Tensor, int, int]]) -> seqlock.ReadAttempt:
        # Loads are CPU loads of the shared page; the copy is synchronised before the second load.
        def execute(op: seqlock.Op) -> Any:
            if isinstance(op, seqlock.Load):
                words = self.words.load()
                self._check_state(words)
                return words
            assert isinstance(op, seqlock.CopySlot)
            base = HEADER_BYTES + op.slot * self.layout.slot_bytes
            with torch.cuda.stream(self.stream):
                for t, off, nbytes in pairs:
                    if nbytes:
                        t.view(-1).view(torch.uint8).copy_(self.mem[base + off : base + off + nbytes],
                                                           non_blocking=True)
            self.stream.synchronize()
            return None

        with torch.cuda.device(self.mem.device):
            return seqlock.run(seqlock.read_attempt(self.double), execute)

    def _check_state(self, words: Sequence[int]) -> None:
        if words[W_STATE] != STATE_OPEN:
            raise PoolGoneError("the pool was closed by its writer")

    # Readers hold no write path; the writer's entry points exist here only to fail clearly.
    def publish(self, *args: object, **kwargs: object) -> int:
        raise ReadOnlyPoolError("a PoolReader cannot publish: only the WeightPool that created the pool writes")

    def writing(self, *args: object, **kwargs: object) -> Iterator[dict[str, torch.Tensor]]:
        raise ReadOnlyPoolError("a PoolReader cannot write: only the WeightPool that created the pool writes")

    def __setitem__(self, name: str, value: object) -> None:
        raise ReadOnlyPoolError(f"a PoolReader cannot assign {name!r}: readers are read-only")


_LOCAL_POOLS: dict[int, torch.Tensor] = {}


def _shut_down(stream: torch.cuda.Stream, words: HostWords, key: int) -> None:
    """Close a pool: let queued control-word stores finish, mark it CLOSED, release the page (creator only)."""
    if not words.owned_here():
        return  # a forked child: the pool belongs to its parent
    _LOCAL_POOLS.pop(key, None)
    with contextlib.suppress(Exception):  # CUDA may be shutting down, or the stream hold a failed fill
        stream.synchronize()
    try:
        words.store_now(W_STATE, STATE_CLOSED)
    finally:
        words.remove()


def _store_word_fn(words: HostWords, stream: torch.cuda.Stream) -> tuple[str, Callable[[list[tuple[int, int]]], None]]:
    """How the writer stores 1-2 control words, in order and in stream order; returns (name, store).

    Normally a one-thread Triton kernel on the writer's stream (system-scope release stores, then a fence)
    into the page registered with CUDA. Where Triton is missing or CUDA will not register the page, CPU
    stores after synchronising the writer's stream: as correct (the odd word is stored before any payload
    write is enqueued, the even word after the payload finished), but every store waits for the stream.
    """
    try:
        from fabricsim.kernels import _control_jit

        page = words.tensor()  # pinned and mapped for the GPU
    except (ImportError, HostRegisterError):
        def store_after_sync(batch: list[tuple[int, int]]) -> None:
            stream.synchronize()
            for index, value in batch:
                words.store_now(index, value)

        return "cpu-after-sync", store_after_sync

    def store(batch: list[tuple[int, int]]) -> None:
        (i0, v0), (i1, v1) = batch[0], batch[-1]
        _control_jit.store_words[(1,)](page, i0, v0, i1, v1, TWO=len(batch) == 2)

    return "gpu-release-store", store
