"""`shared-pool`: the project's origin design — the trainer keeps the weights in a versioned pool in its own GPU
memory that the generation GPUs read directly, with no explicit transfer step.

Version semantics (`VersionedWeightPool`): two slots; a single writer (the trainer) writes version v+1 into the
slot no reader holds, then publishes it by bumping the version counter (one atomic store plus a system fence);
readers (generation GPUs) are read-only: they acquire the latest *published* version, so a reader never sees a
slot while it is being written (never a torn version), and the writer waits if the slot it needs is still held
(it then stalls training instead of corrupting generation).

Two reader modes:
- `zero-copy`: readers keep no weights at all. Every decode step reads the weights in place from the trainer
  GPUs' HBM over NVLink (or PCIe peer access), so the sync costs only publish + observe (readers poll the
  counter at step boundaries), but every decode step pays weight bytes over the peer path instead of local HBM
  (~390 GB/s NVLink vs ~4.3 TB/s H200 HBM) — a win with few decode steps per training step, a loss with many.
  It frees the rollout GPUs' HBM for KV cache. It needs load/store access: no RDMA, no dtype conversion.
- `pull-on-publish`: each reader observes the new version, pulls its slice (per the resharding plan) into a
  local inactive buffer while it keeps generating on version v, then flips at a step boundary. Generation
  stalls only for the flip; tokens generated during the pull are one version stale.

Default costs: `publish_s` 5 us and `observe_s` 3 us, the hardware floor of the design (a 4-byte peer store with a
system-scope fence, 2-3 us NVLink write latency; one read of the counter). This project's own Python-driven
`kernels.WeightPool` (docs/kernels.md; benchmarks/results/kernels-h200/, kernels-h100-x1/) keeps its counters in
shared pinned host memory: a reader process saw a publish 2.7 us (H200) / 3.9 us (H100) median after the writer
enqueued the flip, and `version()` costs 0.3-1 us, so `observe_s` matches it; a whole `publish()` with no payload
took 66 us (H200) / 76 us (H100) median, mostly kernel launches from Python and the final synchronisation: pass
`publish_s=66e-6` to model that implementation. Readers notice at the next step boundary, on average half a decode
step later; `flip_s` 20 us (swapping weight pointers; engines whose CUDA graphs captured the weight addresses keep
one graph per slot, else set `flip_copy=True`: the flip becomes a local copy of the weights and stalls generation
for it). With `measure_contention` a decode step runs beside each reader's pull, reported as
`decode_step_during_sync_ms`.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

from fabricsim.simcore import Simulation

from ..decode import decode_work, schedule_decode_step
from ..errors import InfeasibleError, WorkloadError
from .base import Knobs, Strategy, SyncContext, SyncSetup, local_decode_step

MODES = ("zero-copy", "pull-on-publish")
PEER_CLASSES = ("d2d", "p2p-nvlink", "p2p-pcie")


class PoolProtocolError(WorkloadError):
    """A pool operation that breaks the single-writer / read-only-reader protocol."""


class VersionedWeightPool:
    """Version-counter semantics of the shared pool (what `kernels/` implements with CUDA IPC and atomics).

    `slot_data[s]` is the version whose bytes slot `s` holds, or None while it is being written.
    """

    def __init__(self, slots: int = 2) -> None:
        if slots < 2:
            raise PoolProtocolError("a versioned pool needs at least two slots (one to read, one to write)")
        self.slots = slots
        self.version = 0
        self.slot_data: list[int | None] = [0] + [None] * (slots - 1)
        self.readers = [0] * slots
        self.writing: int | None = None

    def _slot_of(self, version: int) -> int:
        return version % self.slots

    def can_begin_write(self) -> bool:
        return self.writing is None and self.readers[self._slot_of(self.version + 1)] == 0

    def begin_write(self) -> int:
        """The writer claims the slot of version+1; raises if a reader holds it (the writer must wait)."""
        if self.writing is not None:
            raise PoolProtocolError("a write is already in progress (single writer)")
        slot = self._slot_of(self.version + 1)
        if self.readers[slot]:
            raise PoolProtocolError(f"slot {slot} is held by {self.readers[slot]} reader(s); the writer must wait")
        self.writing = slot
        self.slot_data[slot] = None
        return slot

    def publish(self) -> int:
        """End the write and bump the counter: from now on readers acquire the new version."""
        if self.writing is None:
            raise PoolProtocolError("publish without a write in progress")
        self.version += 1
        self.slot_data[self.writing] = self.version
        self.writing = None
        return self.version

    def acquire(self) -> tuple[int, int]:
        """A reader takes the latest published version: (version, slot)."""
        slot = self._slot_of(self.version)
        self.readers[slot] += 1
        return self.version, slot

    def release(self, slot: int) -> None:
        if self.readers[slot] <= 0:
            raise PoolProtocolError(f"release of slot {slot} that no reader holds")
        self.readers[slot] -= 1


@dataclass(frozen=True)
class SharedPoolKnobs(Knobs):
    mode: str = "pull-on-publish"
    publish_s: float = 5e-6
    observe_s: float = 3e-6
    flip_s: float = 20e-6
    flip_copy: bool = False
    measure_contention: bool = True

    def __post_init__(self) -> None:
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
        # The pool's second slot on every trainer GPU; pull mode adds each reader's inactive local copy.
        out = {g: float(b) for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True)}
        if not self.zero_copy:
            for g, b in zip(plan.rollout_gpus, plan.need_bytes, strict=True):
                out[g] = out.get(g, 0.0) + float(b) * setup.rollout_ratio
        return out

    def decode_step(self, setup: SyncSetup, plan) -> float:
        if not self.zero_copy:
            return local_decode_step(setup)
        return zero_copy_step(setup, plan)

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        pool = VersionedWeightPool()
        for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True):
            ctx.alloc(g, float(b), "pool-slot")
        pool.begin_write()  # the optimizer step wrote v+1 into the free slot before t = 0
        yield sim.delay("publish", k.publish_s, tag="publish")
        pool.publish()
        half_step = self.decode_step(ctx.setup, plan) / 2
        readers = []
        for j, r in enumerate(plan.rollout_gpus):
            readers.append(sim.process(self._reader(ctx, pool, j, r, half_step)))
        yield sim.env.all_of(readers)

    def _reader(self, ctx: SyncContext, pool: VersionedWeightPool, j: int, r: str, half_step: float) -> Generator:
        k, sim, plan = self.knobs, ctx.sim, ctx.plan
        yield sim.delay(ctx.name(f"observe.{r}"), k.observe_s + (0.0 if not self.zero_copy else half_step),
                        tag="observe")
        _version, slot = pool.acquire()
        if self.zero_copy:
            return  # zero-copy readers hold the slot for as long as they generate on this version
        pulls = [sim.transfer(ctx.name(f"pull.{r}"), t, r, float(plan.matrix[i, j]), tag="pull")
                 for i, t in enumerate(plan.trainer_gpus) if plan.matrix[i, j] > 0]
        if k.measure_contention:
            # The reader keeps generating on version v while it pulls: one decode step alongside the pull shows
            # how much the pull's HBM traffic slows generation.
            setup = ctx.setup
            model = setup.model.with_dtype(setup.wire_dtype)
            began = sim.now
            step = schedule_decode_step(sim, r, model, setup.decode, tp=setup.rollout.tp, id=ctx.name(f"step.{r}"))
            step.callbacks.append(lambda _ev: ctx.concurrent_steps_s.append(sim.now - began))
        ctx.alloc(r, float(plan.need_bytes[j]) * ctx.setup.rollout_ratio, "inactive-buffer")
        if pulls:
            yield sim.env.all_of(pulls)
        if ctx.setup.wire_dtype != ctx.setup.model.dtype:
            yield ctx.encode(r, float(plan.need_bytes[j]))
        pool.release(slot)
        yield sim.delay(ctx.name(f"boundary.{r}"), half_step, tag="step-boundary")
        ctx.mark_live_write()
        if k.flip_copy:
            yield sim.transfer(ctx.name(f"flip.{r}"), r, r, float(plan.need_bytes[j]) * ctx.setup.rollout_ratio,
                               tag="flip")
        else:
            yield sim.delay(ctx.name(f"flip.{r}"), k.flip_s, tag="flip")

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


def zero_copy_step(setup: SyncSetup, plan) -> float:
    """One decode step of every rollout GPU at once, weights read in place from the pool (the trainer GPUs, per
    the resharding plan), KV from local HBM: a small simulation, so readers sharing a trainer GPU's links and HBM
    slow each other down."""
    sim = Simulation(setup.topology, record_load=False)
    work = decode_work(setup.model, setup.decode, setup.rollout.tp)
    for j, r in enumerate(plan.rollout_gpus):
        need = float(plan.need_bytes[j])
        local = work.kv_bytes
        for i, t in enumerate(plan.trainer_gpus):
            b = work.weight_bytes * float(plan.matrix[i, j]) / need if need else 0.0
            if b <= 0:
                continue
            if setup.topology.resolve(t) == setup.topology.resolve(r):
                local += b
            else:
                sim.transfer(f"read.{t}.{r}", t, r, b, tag="zero-copy-read")
        sim.task(f"compute.{r}", r, flops=work.flops, hbm_bytes=local, tag="decode")
    return sim.run().makespan_s
