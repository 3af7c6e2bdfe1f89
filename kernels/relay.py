"""Relay: rollout GPUs that hold version v serve it onward, chunk by chunk, in a pipelined chain of pools.

Readers that all pull from the trainer's pool share its GPU's egress, so N readers take about N times one
read. A relay reads the trainer's pool once: hop 1 copies version v from the trainer's `WeightPool` into its
own double-buffered `WeightPool`, chunk by chunk; hop 2 copies each chunk from hop 1 as soon as hop 1 holds
it, and so on, so the chain costs about one copy plus one chunk per hop. Nothing is collective: every hop is
a read-only reader of the hop before it and the only writer of its own pool, nobody waits for a rendezvous,
and a hop that starts late (or falls behind) simply follows the newest version its upstream is relaying.

Protocol of one hop (`Relay.pull`):

- it picks the newest version v its upstream offers and opens a write of its own pool's idle slot (the
  pool's seqlock word for that slot goes odd: readers of complete versions never see it half written);
- it announces (v, the slot, 0 chunks) in its progress page, a shared host page like the pool's control
  words (`P_CHUNKS` is stored first, `P_VER` last, so a reader that sees v sees that slot and count);
- for each chunk it copies the byte range from upstream with a version check before and after the copy
  (`read_chunk`), then stores the new chunk count; when all chunks are in, the pool publishes (head flip).
- if upstream moved on to a newer version in the meantime (a check fails because the upstream is now
  relaying v' > v, or the trainer published twice), the hop restarts the copy with v' in the same slot
  (announcing v' first), so a hop never publishes a mix of versions.

Why a downstream chunk is one version (the argument of `kernels.seqlock`, per chunk): an upstream hop
writes chunk bytes of a new version only after it stored that version in `P_VER` (a CPU store ordered
before the copy it then enqueues), and it rewrites a slot's chunks of v only after announcing another
version; so a reader that loaded (`P_VER` = v, `P_CHUNKS` > c) before its copy and still sees
`P_VER` = v and the same slot after it copied bytes of v only. Against the trainer's pool, a chunk is a
seqlock read of a byte range (`PoolReader` words, the slot the head names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fabricsim.kernels import seqlock
from fabricsim.kernels._hostwords import HostWords
from fabricsim.kernels.errors import KernelInputError, PoolTimeoutError
from fabricsim.kernels.weightpool import HEADER_BYTES, PoolHandle, PoolReader, WeightPool

P_VER, P_SLOT, P_CHUNKS = 0, 1, 2
N_PROGRESS = 3
OK, RETRY, MOVED = "ok", "retry", "moved"


def chunk_ranges(nbytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """(offset, bytes) of each chunk of a slot."""
    if chunk_bytes < 1:
        raise KernelInputError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return [(o, min(chunk_bytes, nbytes - o)) for o in range(0, nbytes, chunk_bytes)] or [(0, 0)]


def trainer_chunk_check(before: tuple[int, ...], after: tuple[int, ...], version: int) -> str:
    """Decide a chunk read of the trainer's (double-buffered) pool from its control words around the copy."""
    slot = before[seqlock.HEAD] & 1
    head_version = before[seqlock.HEAD] - slot
    if head_version != version:
        return MOVED if head_version > version else RETRY
    if before[seqlock.SEQ0 + slot] != version:
        return MOVED  # the writer is already rewriting the slot of v: a newer version exists
    if after[seqlock.SEQ0 + slot] != version:
        return MOVED
    return OK


def relay_chunk_check(before: tuple[int, ...], after: tuple[int, ...], version: int, chunk: int) -> str:
    """Decide a chunk read of an upstream relay hop from its progress words around the copy."""
    if before[P_VER] != version:
        return MOVED if before[P_VER] > version else RETRY
    if before[P_CHUNKS] <= chunk:
        return RETRY  # not there yet
    if after[P_VER] != version or after[P_SLOT] != before[P_SLOT]:
        return MOVED
    return OK


@dataclass(frozen=True)
class RelayHandle:
    """What the next hop needs: the hop's pool handle, its progress page and its chunking (picklable)."""

    pool: PoolHandle
    progress_path: str
    chunk_bytes: int


class TrainerUpstream:
    """The trainer's pool as a relay's upstream (a `PoolReader`; the pool must be double-buffered)."""

    def __init__(self, reader: PoolReader) -> None:
        if not reader.double:
            raise KernelInputError("a relay reads a double-buffered pool (single-slot reads would starve)")
        self.reader = reader
        self.layout = reader.layout

    def newest(self) -> int:
        return self.reader.version()

    def read_chunk(self, dst: torch.Tensor, off: int, n: int, version: int, stream: torch.cuda.Stream) -> str:
        before = self.reader.words.load()
        slot = before[seqlock.HEAD] & 1
        base = HEADER_BYTES + slot * self.layout.slot_bytes + off
        with torch.cuda.stream(stream):
            dst.copy_(self.reader.mem[base: base + n], non_blocking=True)
        stream.synchronize()
        return trainer_chunk_check(before, self.reader.words.load(), version)


class RelayUpstream:
    """Another relay hop as upstream: its pool (read-only) and its progress page."""

    def __init__(self, handle: RelayHandle, device: int) -> None:
        self.reader = PoolReader.open(handle.pool, device=device)
        self.progress = HostWords.attach(handle.progress_path, N_PROGRESS)
        self.layout = handle.pool.layout

    def newest(self) -> int:
        self.reader.version()  # raises PoolGoneError if that hop is gone
        return int(self.progress.load()[P_VER])

    def read_chunk(self, dst: torch.Tensor, off: int, n: int, version: int, stream: torch.cuda.Stream) -> str:
        before = self.progress.load()
        chunk = off // max(1, self._chunk_bytes)
        if before[P_VER] != version or before[P_CHUNKS] <= chunk:
            return relay_chunk_check(before, before, version, chunk)
        base = HEADER_BYTES + before[P_SLOT] * self.layout.slot_bytes + off
        with torch.cuda.stream(stream):
            dst.copy_(self.reader.mem[base: base + n], non_blocking=True)
        stream.synchronize()
        return relay_chunk_check(before, self.progress.load(), version, chunk)

    _chunk_bytes = 1  # set by Relay from the upstream handle


@dataclass
class RelayStats:
    versions: int = 0
    chunks: int = 0
    retries: int = 0
    restarts: int = 0  # copies restarted because upstream moved to a newer version


class Relay:
    """One hop: the only writer of its own double-buffered pool, a read-only reader of its upstream.

    `upstream` is a `PoolReader` of the trainer's pool or a `RelayHandle` of the previous hop. The pool's
    published slot holds the engine's weights on this GPU (`pool.views()` / `current()`), and the next hop
    opens `export()`.
    """

    def __init__(self, upstream: PoolReader | RelayHandle, device: int = 0, chunk_bytes: int = 64 << 20) -> None:
        self.device = torch.device("cuda", device)
        if isinstance(upstream, RelayHandle):
            up = RelayUpstream(upstream, device)
            up._chunk_bytes = upstream.chunk_bytes
            chunk_bytes = upstream.chunk_bytes  # every hop of a chain cuts the slot the same way
            self.upstream: TrainerUpstream | RelayUpstream = up
        else:
            self.upstream = TrainerUpstream(upstream)
        layout = self.upstream.layout
        self.chunks = chunk_ranges(layout.slot_bytes, chunk_bytes)
        self.chunk_bytes = chunk_bytes
        tensors = {s.name: (s.shape, getattr(torch, s.dtype.removeprefix("torch."))) for s in layout.specs}
        self.pool = WeightPool(tensors, device=self.device, double_buffered=True)
        if [(x.offset, x.nbytes) for x in self.pool.layout.specs] != [(x.offset, x.nbytes) for x in layout.specs]:
            raise KernelInputError("the relay's pool does not lay the slot out as its upstream does")
        self.progress = HostWords.create(N_PROGRESS)
        self.stats = RelayStats()
        self.version = 0  # the trainer version this hop's pool publishes now

    def export(self) -> RelayHandle:
        return RelayHandle(self.pool.export(), self.progress.path, self.chunk_bytes)

    def _announce(self, version: int, slot: int) -> None:
        self.progress.store_now(P_CHUNKS, 0)
        self.progress.store_now(P_SLOT, slot)
        self.progress.store_now(P_VER, version)

    def pull(self, min_version: int, timeout: float = 30.0) -> int:
        """Relay the newest upstream version >= `min_version` into this hop's pool; returns it."""
        deadline = time.monotonic() + timeout
        version = self._wait_upstream(min_version, deadline)
        slot = 1 - (self.pool.words.load()[seqlock.HEAD] & 1)
        base = HEADER_BYTES + slot * self.pool.layout.slot_bytes
        with self.pool.writing():  # this slot's seqlock word is odd until the block exits (then the head flips)
            # the pool's stream is current: chunk copies follow its odd store, as the protocol needs
            stream = torch.cuda.current_stream(self.device)
            self._announce(version, slot)
            c = 0
            while c < len(self.chunks):
                off, n = self.chunks[c]
                dst = self.pool.mem[base + off: base + off + n]
                res = self.upstream.read_chunk(dst, off, n, version, stream)
                if res == OK:
                    c += 1
                    self.stats.chunks += 1
                    self.progress.store_now(P_CHUNKS, c)
                    continue
                if time.monotonic() > deadline:
                    raise PoolTimeoutError(f"relay: version {version} not complete within {timeout} s")
                if res == MOVED:  # follow the newer version: restart the slot's copy with it
                    version = self._wait_upstream(version + 2, deadline)
                    self._announce(version, slot)
                    self.stats.restarts += 1
                    c = 0
                else:
                    self.stats.retries += 1
                    time.sleep(0)
        self.version = version
        self.stats.versions += 1
        return version

    def _wait_upstream(self, min_version: int, deadline: float) -> int:
        pause = 0.0
        while True:
            v = self.upstream.newest()
            if v >= min_version and v > 0:
                return v
            if time.monotonic() > deadline:
                raise PoolTimeoutError(f"relay: upstream never offered version {min_version} (has {v})")
            if pause:
                time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 1e-6)

    def current(self) -> dict[str, Any]:
        """Zero-copy views of the version this hop published last (the engine's weights on this GPU)."""
        slot = self.pool.words.load()[seqlock.HEAD] & 1
        return self.pool.views(slot)

    def close(self) -> None:
        self.pool.close()
