"""`shared-pool`: the project's origin design — the trainer keeps the weights in a versioned pool in its own GPU
memory that the generation GPUs read directly, with no explicit transfer step.

Version semantics: the seqlock of `kernels.WeightPool`, restated for the simulator in `pool_protocol` (tested
operation for operation against `kernels/seqlock.py`'s interleavings). One writer (the trainer), read-only
readers; the writer never waits for readers. Double-buffered (the default): the trainer's optimizer step fills
the idle slot, and publishing is three word stores (the slot's sequence word odd, then even, then the head flip);
a reader loads the words, copies the slot the head names, loads them again, and accepts the copy unless the
writer started rewriting that slot meanwhile (two publishes during one read), in which case it retries on the
newer version. Single-slot: the writer's payload write happens between the odd and the even store, and a read
that overlaps it retries. With `publishes` > 1 the trainer keeps publishing every `publish_interval_s` while
readers copy (its later writes cost HBM traffic of its shard): retries and staleness then follow from the
protocol (`read_retries`, `staleness_versions`).

Reader modes:
- `zero-copy`: readers keep no weights at all. Every decode step reads the weights in place from the trainer
  GPUs' HBM over NVLink (or PCIe peer access), so the sync costs only publish + observe (readers poll the
  counter at step boundaries), but every decode step pays weight bytes over the peer path instead of local HBM
  (~390 GB/s NVLink vs ~4.3 TB/s H200 HBM) — a win with few decode steps per training step, a loss with many.
  It frees the rollout GPUs' HBM for KV cache. It needs load/store access: no RDMA, no dtype conversion.
- `pull-on-publish`: each reader observes the new version, pulls its slice (per the resharding plan) into a
  local inactive buffer while it keeps generating on version v, then flips at a step boundary. Generation
  stalls only for the flip; tokens generated during the pull are one version stale. Every reader pulls from the
  trainer GPUs, so N readers of one trainer GPU share its egress (one port's worth): N times one read.
- `relay`: the trainer's pool is read once per chain. Rollout GPUs that need the same bytes (the same TP rank)
  form a chain; the first reads version v from the trainer chunk by chunk (`chunk_bytes`; each chunk a
  seqlock read of its byte range), and every later GPU copies each chunk from the previous one as soon as that
  one holds it, checking the version words of its upstream before and after (`check_s` each): a pipelined
  chain that approaches one copy's time on NVSwitch, while readers stay read-only and independent (no
  collective, no rendezvous; `kernels.relay` is the real implementation on `WeightPool`/`PoolReader`, without
  the fp8 conversion below, which is modelled only).

Lower-precision engines (`rollout_dtype="fp8"`): the pool holds the trainer's bf16 weights, so the GPU that reads
the pool converts. A pull-on-publish reader pulls bf16 and converts into its fp8 inactive buffer; a relay
chain's first GPU converts each chunk as it arrives and forwards fp8, so the chain's later hops move half the
bytes and convert nothing. A converting reader pulls through a bf16 staging area of two chunks (`chunk_bytes`
each, at most its slice: one landing while the other converts), counted in its memory until its last conversion
ends. Pull-on-publish's conversion is declared after the whole pull, which overstates its sync by the conversion
of all but the last chunk (a pipelined converter hides it behind the pull: 2.5 bytes of HBM traffic per bf16
byte, short beside a pull over NVLink or the network). The relay's head converts per simulated chunk and reuses
a staging chunk once its conversion ended; when `max_sim_chunks` makes a simulated chunk larger than
`chunk_bytes`, that wait is the coarser chunk's (the memory counted stays two real chunks), while a later hop's
version checks and copy latencies are still paid per real chunk (`SharedPool._checks`).

Default costs: `publish_s` 5 us and `observe_s` 3 us, the hardware floor of the design (a 4-byte peer store with a
system-scope fence, 2-3 us NVLink write latency; one read of the counter). This project's own Python-driven
`kernels.WeightPool` (docs/kernels.md; benchmarks/results/kernels-h200/, kernels-h100-x1/) keeps its counters in
shared pinned host memory: a reader process saw a publish 2.7 us (H200) / 3.9 us (H100) median after the writer
enqueued the flip, and `version()` costs 0.3-1 us, so `observe_s` matches it; a whole `publish()` with no payload
took 66 us (H200) / 76 us (H100) median, mostly kernel launches from Python and the final synchronisation: a
topology whose profile holds the workload suite's fitted `software_costs.weightpool.publish` uses that instead.
Readers notice at the next step boundary, on average half a decode step later; `flip_s` 20 us (swapping weight
pointers; engines whose CUDA graphs captured the weight addresses keep one graph per slot, else set
`flip_copy=True`: the flip becomes a local copy of the weights and stalls generation for it). With
`measure_contention` a decode step runs beside each reader's pull, reported as `decode_step_during_sync_ms`.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from fabricsim.simcore import Simulation

from ..decode import decode_step_items, schedule_decode_step
from ..errors import InfeasibleError, WorkloadError
from ..placement import reshard
from .base import Knobs, Strategy, SyncContext, SyncSetup, local_decode_step
from .pool_protocol import PoolProtocolError, SimPool

__all__ = ["MODES", "PoolProtocolError", "SharedPool", "SharedPoolKnobs", "zero_copy_step"]

MODES = ("zero-copy", "pull-on-publish", "relay")
PEER_CLASSES = ("d2d", "p2p-nvlink", "p2p-pcie")
MiB = 1 << 20
STAGING = "conversion-staging"  # a converting reader's bf16 staging (`staging_bytes`), its allocation's tag
# pull-on-publish copies from which `SharedPool.scale_note` speaks up, and the cost it estimates from: time and
# memory per copy from 1,024 to 2,048 GPUs, plus the memory before the first (the 2-core VM: `scale_note` says how)
PULL_NOTE_COPIES = 1 << 20
PULL_COPY_S = 26e-6
PULL_COPY_BYTES = 3.07e3
PULL_BASE_BYTES = 0.35e9


@dataclass(frozen=True)
class SharedPoolKnobs(Knobs):
    mode: str = "pull-on-publish"
    publish_s: float = 5e-6
    observe_s: float = 3e-6
    flip_s: float = 20e-6
    flip_copy: bool = False
    measure_contention: bool = True
    double_buffered: bool = True
    publishes: int = 1
    publish_interval_s: float = 0.0
    chunk_bytes: float = 64 * MiB  # a relay hop's copy; with fp8 engines also the converting reader's staging
    check_s: float = 3e-6
    max_sim_chunks: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise WorkloadError(f"unknown shared-pool mode '{self.mode}' (known: {', '.join(MODES)})")


class SharedPool(Strategy):
    name = "shared-pool"
    Knobs = SharedPoolKnobs
    blocking = False

    @property
    def label(self) -> str:
        return f"{self.name}:{self.knobs.mode}" + "".join(f"+{t.name}" for t in self.transforms)

    @property
    def zero_copy(self) -> bool:
        return self.knobs.mode == "zero-copy"

    def check(self, setup: SyncSetup, plan) -> None:
        if self.transforms:
            raise InfeasibleError(f"{self.label}: readers pull raw weights from the pool; delta encoding needs a "
                                  "sender-side encoder")
        if not self.zero_copy:
            return
        if setup.wire_dtype != setup.model.dtype:
            raise InfeasibleError(f"shared-pool:zero-copy reads the trainer's {setup.model.dtype} weights in place; "
                                  f"{setup.wire_dtype} engines need a converted copy")
        topo = setup.topology
        for j, r in enumerate(plan.rollout_gpus):
            for i, t in enumerate(plan.trainer_gpus):
                if plan.matrix[i, j] > 0:
                    cls = topo.path(t, r).path_class
                    if cls not in PEER_CLASSES:
                        raise InfeasibleError(f"shared-pool:zero-copy: {r} would read {t} over {cls}; in-place reads "
                                              "need NVLink or PCIe peer access (same machine)")

    def rollout_resident(self, setup: SyncSetup, plan) -> dict[str, float]:
        if self.zero_copy:
            return {}
        return super().rollout_resident(setup, plan)

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        # The pool's second slot on every trainer GPU (double-buffered); pull and relay modes add each reader's
        # inactive local copy (for a relay GPU: the idle slot of its own pool).
        out = {g: float(b) for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True)} \
            if self.knobs.double_buffered else {}
        if not self.zero_copy:
            for g, b in zip(plan.rollout_gpus, plan.need_bytes, strict=True):
                out[g] = out.get(g, 0.0) + float(b) * setup.rollout_ratio
            for j in self._converters(setup, plan):
                g = plan.rollout_gpus[j]
                out[g] = out.get(g, 0.0) + self.staging_bytes(float(plan.need_bytes[j]))
        return out

    def _converters(self, setup: SyncSetup, plan) -> list[int]:
        """Rollout GPUs (plan indices) that read the pool's bf16 and convert it for lower-precision engines: every
        pull-on-publish reader, each relay chain's first GPU; none when the engines keep the trainer's dtype."""
        if not self._converting(setup):
            return []
        if self.knobs.mode == "relay":
            return [members[0] for members in _chains(plan, setup.rollout.tp).values()]
        return list(range(len(plan.rollout_gpus)))

    def _converting(self, setup: SyncSetup) -> bool:
        """Whether any reader converts: the engines' dtype is not the pool's, and readers copy (not zero-copy)."""
        return setup.wire_dtype != setup.model.dtype and not self.zero_copy

    def staging_bytes(self, need: float) -> float:
        """The bf16 staging a converting reader of `need` bytes pulls through: two chunks, at most its slice."""
        return min(2 * self.knobs.chunk_bytes, need)

    def pull_copies(self, setup: SyncSetup) -> int:
        """The copies a pull-on-publish sync declares: one per (reader, trainer GPU holding a part of its slice)
        pair, every reader pulling its slice from all of them at once (`_pulls`). Under FSDP every trainer GPU
        holds a part of every tensor, so that is trainers x readers. The plan is built only when that product
        reaches `PULL_NOTE_COPIES` (its count is never larger): a small sync pays nothing for the question, while
        at 4,096 GPUs the plan takes ~1.7 s of a ~100 s run."""
        if len(setup.trainer.gpus) * len(setup.rollout.gpus) < PULL_NOTE_COPIES:
            return 0
        plan = reshard(setup.model, setup.trainer, setup.rollout)
        return int((plan.matrix > 0).sum())

    def scale_note(self, setup: SyncSetup) -> str:
        """Pull-on-publish declares one copy per (reader, source trainer GPU) pair (`pull_copies`), and its
        simulation's time and memory grow with that count, which grows with the square of the cluster: a trial's
        4,096-GPU sync declared for ~100 s and peaked at 12.7 GB, with nothing said before. Measured on the 2-core
        VM (Intel Xeon), one process per point, Qwen3-235B-A22B on `cluster_layout.setup_of` (half trains under
        FSDP: N/2 x N/2 copies), `python benchmarks/sync_scale.py --strategies shared-pool:pull-on-publish
        shared-pool:relay --models Qwen3-235B-A22B --nodes 64 128 256 --timeout 180 --out
        benchmarks/results/sync-scale-pull-2048.json` (2026-12-07): pull-on-publish simulated 512 / 1,024 / 2,048 GPUs
        in 2.6 / 7.5 / 28.0 s, peak 469 / 1,098 / 3,402 MiB (`max_rss_mb` is MiB). From 1,024 to 2,048 GPUs that is
        26 us and 3.07 kB a copy (`PULL_COPY_S`, `PULL_COPY_BYTES`, above `PULL_BASE_BYTES`), which puts 4,096 GPUs
        at ~110 s and 13.2 GB (12.3 GiB), where a trial saw ~100 s and 12.7 G. So
        the note fires from 2^20 copies (`PULL_NOTE_COPIES`: 2,048 GPUs, half a minute and several GB) and says how
        long and how much from those figures. No knob of this mode makes it cheaper (`measure_contention=False`
        drops one decode step per reader, nothing the copies cost). `shared-pool:relay` reads the pool once per chain
        and simulated 2,048 GPUs in 7.3 s and 828 MiB (the same file), but it is another design whose sync time
        differs (2.59 s against 1.61 s), so the note names it as an alternative, not as a coarser setting of this
        one."""
        if self.knobs.mode != "pull-on-publish" or self.transforms:  # (transforms are refused before any run)
            return ""
        copies = self.pull_copies(setup)
        if copies < PULL_NOTE_COPIES:
            return ""
        secs = copies * PULL_COPY_S
        took = f"{secs:.0f} s" if secs < 150 else f"{secs / 60:.0f} min"
        gb = (PULL_BASE_BYTES + copies * PULL_COPY_BYTES) / 2**30
        gb_said = f"{gb:.1f}" if gb < 10 else f"{gb:.0f}"
        return (f"{self.label}: {len(setup.rollout.gpus):,} readers each pull their slice from every trainer GPU "
                f"holding a part of it, {copies:,} copies to simulate: about {took} and {gb_said} GiB of memory on a "
                f"2-core machine; no knob of this mode makes it cheaper; the strategy shared-pool:relay reads the pool "
                f"once per chain and simulates in about a quarter of the time and memory, but it is a "
                f"different design with its own sync time")

    def decode_step(self, setup: SyncSetup, plan) -> float:
        if not self.zero_copy:
            return local_decode_step(setup)
        return zero_copy_step(setup, plan)

    @property
    def declarative(self) -> bool:  # type: ignore[override]
        """Declared up front (the compiled loop runs it) when no read can overlap a publish: one publish, before
        any reader looks. The version protocol still runs, operation for operation, while declaring: with
        nothing to overlap, its outcome is known then (`_declared`). With later publishes a read may be torn and
        retried, which only a process can follow."""
        return self.knobs.publishes == 1

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        pool = SimPool(k.double_buffered)
        if k.double_buffered:
            for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True):
                ctx.alloc(g, float(b), "pool-slot")
        publish_s = self.publish_cost(sim.topology)
        if self.declarative:
            yield self._declared(ctx, pool, publish_s)
        else:
            first = sim.env.event()
            writer = sim.process(self._writer(ctx, pool, publish_s, first))
            yield first
            half_step = self.decode_step(ctx.setup, plan) / 2
            ctx.pool_accepted = []
            if k.mode == "relay":
                readers = [sim.process(p) for p in self._relay_chains(ctx, pool, half_step)]
            else:
                readers = [sim.process(self._reader(ctx, pool, j, r, half_step))
                           for j, r in enumerate(plan.rollout_gpus)]
            yield sim.env.all_of(readers)
            del writer  # the trainer may still be publishing: the sync ended when every reader held a new version
        ctx.read_retries = pool.retries
        ctx.version_lag = max(0, (pool.version() - min(ctx.pool_accepted, default=pool.version())) // 2)

    def publish_cost(self, topo) -> float:
        """Seconds of one publish: the fitted `WeightPool.publish` where the profile has it, else `publish_s`."""
        fitted = topo.software_costs.get("weightpool", {}).get("publish")
        return float(fitted.fixed_s) if fitted is not None else self.knobs.publish_s

    def _writer(self, ctx: SyncContext, pool: SimPool, publish_s: float, first) -> Generator:
        """The trainer: publishes `publishes` versions; it never waits for readers. The first version's payload
        was written by the optimizer step before t = 0; later ones write the trainer's shard again (HBM)."""
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        stores = 3 if k.double_buffered else 2
        for i in range(k.publishes):
            if i:
                yield sim.delay(ctx.name("train-step"), k.publish_interval_s, tag="train")

            def cost(op: tuple, i: int = i):
                if op[0] == "store":
                    return sim.delay(ctx.name("publish"), publish_s / stores, tag="publish")
                if op[0] == "write" and i:
                    return sim.env.all_of([sim.task(ctx.name(f"write.{g}"), g, hbm_bytes=float(b), tag="write")
                                           for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True)])
                return None

            yield from pool.publish(cost)
            if i == 0:
                first.succeed()

    def _declared(self, ctx: SyncContext, pool: SimPool, publish_s: float) -> simpy.Event:
        """The whole sync as declared work (see `declarative`); returns the item it ends with. The protocol's
        generators run to completion while declaring: each timed operation declares its item after the last one
        (`_Chain`) and costs no simulated time here, so the pool's words, attempts and versions come out as the
        process would leave them when nothing overlaps."""
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        stores = 3 if k.double_buffered else 2
        chain = _Chain()

        def publish_cost(op: tuple) -> None:
            if op[0] == "store":
                chain.then(sim.delay(ctx.name("publish"), publish_s / stores, after=chain.tail, tag="publish"))

        _run_now(pool.publish(publish_cost))
        published = chain.tail
        half_step = self.decode_step(ctx.setup, plan) / 2
        ctx.pool_accepted = []
        if k.mode == "relay":
            ends = self._relay_declared(ctx, pool, published, half_step)
            return sim.all_of(ends, id=ctx.name("read"))
        ends = []
        for j, r in enumerate(plan.rollout_gpus):
            chain = _Chain(published)
            chain.then(sim.delay(ctx.name(f"observe.{r}"), k.observe_s + (0.0 if not self.zero_copy else half_step),
                                 after=chain.tail, tag="observe"))
            if self.zero_copy:
                ctx.pool_accepted.append(pool.version())
                ends.append(chain.tail[0])
                continue
            if k.measure_contention:
                self._contention_step(ctx, r, after=chain.tail[0])
            converts = self._converting(ctx.setup)
            self._buffers(ctx, r, float(plan.need_bytes[j]), converts)
            ctx.pool_accepted.append(self._read_declared(ctx, pool, j, r, 1.0, "pull", chain))
            if converts:
                chain.then(ctx.encode(r, float(plan.need_bytes[j]), after=chain.tail))
                ctx.free_after(r, STAGING, chain.tail[0])
            ends.append(self._flip(ctx, r, float(plan.need_bytes[j]), half_step, chain.tail))
        return sim.all_of(ends, id=ctx.name("read"))

    def _read_declared(self, ctx: SyncContext, pool: SimPool, j: int, r: str, frac: float, stem: str,
                       chain: _Chain) -> int:
        """Reader j's (`r`) seqlock read of `frac` of its slice, its copy declared after the chain's tail: the pulls
        from every trainer GPU holding a part, at once. Returns the version read."""
        def cost(op: tuple) -> None:
            if op[0] == "copy":
                pulls = self._pulls(ctx, j, r, frac, stem, chain.tail)
                if pulls:
                    chain.then(ctx.sim.all_of(pulls, id=ctx.name(f"{stem}ed.{r}")))

        return _run_now(pool.read(cost, lambda: None))

    @staticmethod
    def _pulls(ctx: SyncContext, j: int, r: str, frac: float, stem: str, after: list | None = None) -> list:
        """The copy of a read of `frac` of reader j's (`r`) slice: a pull from every trainer GPU holding a part of
        it, all at once (after `after`, when declared)."""
        sim, matrix = ctx.sim, ctx.plan.matrix
        sim.warm_routes([(t, r) for i, t in enumerate(ctx.plan.trainer_gpus) if matrix[i, j] > 0])
        return sim.transfers([(ctx.name(f"{stem}.{r}"), t, r, float(matrix[i, j]) * frac)
                              for i, t in enumerate(ctx.plan.trainer_gpus) if matrix[i, j] > 0], after=after or [],
                             tag="pull")

    def _relay_declared(self, ctx: SyncContext, pool: SimPool, published: list, half_step: float) -> list:
        """The relay chains (`_relay_chains`), declared: each hop's chunk c follows its own chunk c-1 and the
        upstream hop's chunk c; a converting head's chunk c is its conversion, after its read and its conversion of
        c-1, and its read of chunk c waits for the conversion of c-2 (two staging chunks). Returns each hop's last
        item."""
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        ends = []
        for members in _chains(ctx.plan, ctx.setup.rollout.tp).values():
            need = float(plan.need_bytes[members[0]])
            n_chunks = self._n_chunks(need)
            frac = 1.0 / n_chunks
            upstream: list = []
            for h, j in enumerate(members):
                r = plan.rollout_gpus[j]
                chain = _Chain(published)
                chain.then(sim.delay(ctx.name(f"observe.{r}"), k.observe_s, after=chain.tail, tag="observe"))
                converts = h == 0 and self._converting(ctx.setup)
                self._buffers(ctx, r, need, converts)
                if k.measure_contention:
                    self._contention_step(ctx, r, after=chain.tail[0])
                arrived: list = []
                for c in range(n_chunks):
                    if h == 0:
                        if converts and c >= 2:  # a staging chunk is free once its conversion ended
                            chain.tail = [*chain.tail, arrived[c - 2]]
                        version = self._read_declared(ctx, pool, j, r, frac, "relay-pull", chain)
                        if extra := self._head_latency(ctx, j, r, need, n_chunks, c):
                            chain.then(sim.delay(ctx.name(f"pull-latency.{r}"), extra, after=chain.tail,
                                                 tag="relay-pull"))
                        if c == 0:
                            ctx.pool_accepted.append(version)
                        arrived.append(ctx.encode(r, need * frac, after=[*chain.tail, *arrived[-1:]]) if converts
                                       else chain.tail[0])
                    else:
                        up = plan.rollout_gpus[members[h - 1]]
                        before, after_copy = self._checks(ctx, up, r, need, n_chunks, c)
                        chain.then(sim.delay(ctx.name(f"check.{r}"), before, after=[*chain.tail, upstream[c]],
                                             tag="observe"))
                        chain.then(sim.transfer(ctx.name(f"relay.{up}.{r}"), up, r, need * frac * ctx.wire_ratio,
                                                after=chain.tail, tag="relay"))
                        chain.then(sim.delay(ctx.name(f"check.{r}"), after_copy, after=chain.tail, tag="observe"))
                        arrived.append(chain.tail[0])
                upstream = arrived
                if converts:
                    ctx.free_after(r, STAGING, arrived[-1])  # each conversion follows the one before it
                ends.append(self._flip(ctx, r, need, half_step,
                                       [*chain.tail, arrived[-1]] if converts else chain.tail))
        return ends

    def _buffers(self, ctx: SyncContext, r: str, need: float, converts: bool) -> None:
        """Allocate reader `r`'s inactive buffer for its `need` bytes (trainer-side size), and, where it `converts`
        (one of `_converters`), its bf16 staging (`staging_bytes`), which the caller frees after its last
        conversion."""
        ctx.alloc(r, need * ctx.setup.rollout_ratio, "inactive-buffer")
        if converts:
            ctx.alloc(r, self.staging_bytes(need), STAGING)

    def _flip(self, ctx: SyncContext, r: str, need: float, half_step: float, after: list) -> simpy.Event:
        """Reader `r` switches to the new weights at its next step boundary, after `after`: the boundary (when the
        live weights start changing), then the pointer flip or, with `flip_copy`, a local copy of them."""
        k, sim = self.knobs, ctx.sim
        boundary = sim.delay(ctx.name(f"boundary.{r}"), half_step, after=after, tag="step-boundary")
        ctx.live_write_at(boundary)
        if k.flip_copy:
            return sim.transfer(ctx.name(f"flip.{r}"), r, r, need * ctx.setup.rollout_ratio, after=[boundary],
                                tag="flip")
        return sim.delay(ctx.name(f"flip.{r}"), k.flip_s, after=[boundary], tag="flip")

    def _contention_step(self, ctx: SyncContext, r: str, after: simpy.Event | None = None) -> None:
        """One decode step beside the pull: how much the pull's HBM traffic slows generation on `r`. It starts now,
        or, declared, when `after` ends."""
        sim, setup = ctx.sim, ctx.setup
        model = setup.model.with_dtype(setup.wire_dtype)
        parts = decode_step_items(sim, r, model, setup.decode, tp=setup.rollout.tp, id=ctx.name(f"step.{r}"),
                                  after=() if after is None else (after,))
        ctx.time_step(parts, after)

    def _reader(self, ctx: SyncContext, pool: SimPool, j: int, r: str, half_step: float) -> Generator:
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        yield sim.delay(ctx.name(f"observe.{r}"), k.observe_s + (0.0 if not self.zero_copy else half_step),
                        tag="observe")
        if self.zero_copy:
            ctx.pool_accepted.append(pool.version())
            return  # zero-copy readers read the published slot in place at every decode step
        if k.measure_contention:
            self._contention_step(ctx, r)
        converts = self._converting(ctx.setup)
        self._buffers(ctx, r, float(plan.need_bytes[j]), converts)

        def cost(op: tuple):
            if op[0] != "copy":
                return None
            pulls = self._pulls(ctx, j, r, 1.0, "pull")
            return sim.env.all_of(pulls) if pulls else None

        version = yield from pool.read(cost, lambda: sim.delay(ctx.name(f"poll.{r}"), k.observe_s, tag="observe"))
        ctx.pool_accepted.append(version)
        if converts:
            converted = ctx.encode(r, float(plan.need_bytes[j]))
            ctx.free_after(r, STAGING, converted)
            yield converted
        yield self._flip(ctx, r, float(plan.need_bytes[j]), half_step, [])

    def _relay_chains(self, ctx: SyncContext, pool: SimPool, half_step: float) -> list[Generator]:
        """One chain per TP rank: its GPUs need the same bytes; the first reads the trainer's pool chunk by
        chunk, each next one copies every chunk from the one before it, pipelined."""
        plan = ctx.plan
        procs = []
        for members in _chains(ctx.plan, ctx.setup.rollout.tp).values():
            need = float(plan.need_bytes[members[0]])
            n_chunks = self._n_chunks(need)
            arrived = [[ctx.sim.env.event() for _ in range(n_chunks)] for _ in members]
            for h in range(len(members)):
                procs.append(self._relay_hop(ctx, pool, members, h, arrived, need, half_step))
        return procs

    def _n_chunks(self, need: float) -> int:
        """Simulated chunks of a relay hop's `need` bytes."""
        return max(1, min(self.knobs.max_sim_chunks, math.ceil(need / self.knobs.chunk_bytes)))

    def _real_chunks(self, need: float, n_chunks: int, c: int) -> int:
        """How many real chunks (`chunk_bytes` of `need`) simulated chunk c of `n_chunks` stands for, spread as
        `coarsen` spreads buckets."""
        real = max(1, math.ceil(need / self.knobs.chunk_bytes))
        return real // n_chunks + (1 if c < real % n_chunks else 0)

    def _head_latency(self, ctx: SyncContext, j: int, r: str, need: float, n_chunks: int, c: int) -> float:
        """The copy latencies of the real chunks beyond the first that simulated chunk c of a chain's head stands
        for: each is its own read of the pool, one after the other (the review found the head's reads, like the
        later hops' checks, charged once per simulated chunk)."""
        m = self._real_chunks(need, n_chunks, c)
        if m <= 1:
            return 0.0
        sources = [(t, r) for i, t in enumerate(ctx.plan.trainer_gpus) if ctx.plan.matrix[i, j] > 0]
        return (m - 1) * max((lat for _, lat in ctx.sim.lone_copies(sources)), default=0.0)

    def _checks(self, ctx: SyncContext, up: str, r: str, need: float, n_chunks: int, c: int) -> tuple[float, float]:
        """The version checks around simulated chunk c of a relay hop up -> r, in seconds (before its copy, after
        it): each real chunk it stands for (`chunk_bytes` of `need`, spread over `n_chunks` as `coarsen` spreads
        buckets) is checked before and after its own copy, and the real chunks beyond the first pay their copy's
        latency too. Charged once per simulated chunk, small chunks cost nothing (a physics check: 64 KiB chunks
        simulated as fast as 64 MiB ones)."""
        k = self.knobs
        m = self._real_chunks(need, n_chunks, c)
        if m <= 1:
            return k.check_s, k.check_s
        latency = ctx.sim.lone_copies([(up, r)])[0][1]
        return m * k.check_s, m * k.check_s + (m - 1) * latency

    def _relay_hop(self, ctx: SyncContext, pool: SimPool, members: list[int], h: int, arrived: list[list],
                   need: float, half_step: float) -> Generator:
        """Hop `h` of a chain: chunk by chunk, from the trainer's pool (h = 0) or from hop h-1 once it holds the
        chunk, each copy bracketed by checks of the upstream's version words."""
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        j = members[h]
        r = plan.rollout_gpus[j]
        n_chunks = len(arrived[h])
        frac = 1.0 / n_chunks
        yield sim.delay(ctx.name(f"observe.{r}"), k.observe_s, tag="observe")
        converts = h == 0 and self._converting(ctx.setup)
        self._buffers(ctx, r, need, converts)
        if k.measure_contention:
            self._contention_step(ctx, r)
        encoded: list = []  # hop 0's conversions, chunk by chunk, when it converts

        def cost(op: tuple):
            if op[0] != "copy":
                return None
            pulls = self._pulls(ctx, j, r, frac, "relay-pull")
            return sim.env.all_of(pulls) if pulls else None

        for c in range(n_chunks):
            if h == 0:
                if converts and c >= 2:
                    yield encoded[c - 2]  # its staging chunk is free once its conversion ended
                version = yield from pool.read(cost, lambda: sim.delay(ctx.name(f"poll.{r}"), k.observe_s,
                                                                      tag="observe"))
                if extra := self._head_latency(ctx, j, r, need, n_chunks, c):
                    yield sim.delay(ctx.name(f"pull-latency.{r}"), extra, tag="relay-pull")
                if c == 0:
                    ctx.pool_accepted.append(version)
                if converts:  # converts while the next chunk lands; forwarded once converted
                    encoded.append(ctx.encode(r, need * frac, after=encoded[-1:]))
                    encoded[-1].callbacks.append(lambda _ev, done=arrived[h][c]: done.succeed())
                    continue
            else:
                yield arrived[h - 1][c]
                up = plan.rollout_gpus[members[h - 1]]
                before, after_copy = self._checks(ctx, up, r, need, n_chunks, c)
                yield sim.delay(ctx.name(f"check.{r}"), before, tag="observe")  # upstream's version words
                yield sim.transfer(ctx.name(f"relay.{up}.{r}"), up, r, need * frac * ctx.wire_ratio, tag="relay")
                yield sim.delay(ctx.name(f"check.{r}"), after_copy, tag="observe")  # unchanged: the chunk is v
            arrived[h][c].succeed()
        if encoded:
            ctx.free_after(r, STAGING, encoded[-1])  # each conversion follows the one before it
            yield encoded[-1]
        yield self._flip(ctx, r, need, half_step, [])

    def stall(self, ctx: SyncContext, sync_s: float) -> float:
        if self.zero_copy:
            return 0.0
        if self.knobs.flip_copy:
            return sync_s - (ctx.first_live_write_s or sync_s)
        return self.knobs.flip_s

    def staleness(self, setup: SyncSetup, sync_s: float) -> tuple[float, float]:
        if sync_s <= 0:
            return 0.0, 0.0
        return float(math.ceil(sync_s / setup.train_step_s)), min(1.0, sync_s / setup.train_step_s)


class _Chain:
    """The tail of a sequence of declared items: what the next one is declared after."""

    def __init__(self, after: list | None = None) -> None:
        self.tail: list = list(after or [])

    def then(self, event: simpy.Event) -> None:
        self.tail = [event]


def _chains(plan, tp: int) -> dict[int, list[int]]:
    """Rollout GPUs (plan indices) by TP rank, in plan order: each list one relay chain."""
    chains: dict[int, list[int]] = {}
    for j in range(len(plan.rollout_gpus)):
        chains.setdefault(j % tp, []).append(j)
    return chains


def _run_now(gen: Generator) -> Any:
    """Run a `SimPool` driver whose costs are all None (declared elsewhere): it never yields; returns its value."""
    try:
        ev = next(gen)
    except StopIteration as stop:
        return stop.value
    raise WorkloadError(f"a declared pool operation waited for {ev!r}")  # pragma: no cover - a bug, not input


def zero_copy_step(setup: SyncSetup, plan) -> float:
    """One decode step of every rollout GPU at once, weights read in place from the pool (the trainer GPUs, per
    the resharding plan), KV from local HBM: a small simulation, so readers sharing a trainer GPU's links and HBM
    slow each other down."""
    sim = Simulation(setup.topology, record_load=False)
    for j, r in enumerate(plan.rollout_gpus):
        need = float(plan.need_bytes[j])
        shares = [(t, float(plan.matrix[i, j]) / need) for i, t in enumerate(plan.trainer_gpus)
                  if need and plan.matrix[i, j] > 0]
        schedule_decode_step(sim, r, setup.model, setup.decode, tp=setup.rollout.tp, weights_at=shares,
                             id=f"decode.{r}")
    return sim.run().makespan_s
