"""`rdma-p2p`: a static schedule of one-sided writes from every trainer GPU straight into rollout GPUs' weights —
Perplexity's design ("Weight Transfer for RL Post-Training in under 2 seconds": Kimi-K2, 256 BF16 training GPUs
to 128 FP8 inference GPUs in 1.3 s).

A controller computes once which trainer GPU sends which parameter slice to which rollout GPU
(`placement.assembled_plan`: every tensor assigned to one GPU holding a shard of it, round robin, so all
trainer NICs work at once instead of one rank's). After each step every trainer GPU runs its tasks through a
pipeline: (1) full-tensor assembly (`full_tensor()`: fetch the other shards of the tensor, over NVLink inside a
node, RDMA across; an NCCL all-gather, so SM kernels that queue on no copy engine, mechanism 'sm'), (2)
projection/quantisation kernels (fp8 with block scales, when the engines run fp8), (3) RDMA WRITEs of each
rollout GPU's slice directly into its live weights. Stages of successive tasks overlap; a memory watermark
bounds the bytes in flight per GPU (tasks wait for a slot, which any finished task frees). The engine does
nothing; a final barrier tells the controller all writes landed.

Default costs: `task_bytes` 1 GiB of assigned tensors per pipeline task; `watermark_bytes` 4 GiB in flight per
GPU (Perplexity bounds temporary memory with a watermark; its value is not published); `write_overhead_s` 2 us
per RDMA work request, posted per tensor slice (ibv_post_send plus completion handling, ~1-3 us);
`barrier_s` 1 ms for the controller's completion round (one RPC); `task_overhead_s` 20 us per pipeline task, its
all-gather's NCCL call (as `nccl-broadcast`'s `call_latency_s`; without it a task of one byte cost nothing, and
the smallest `task_bytes` was the fastest); `outstanding` 16 copies in flight per GPU and stage, issued in a
rotated order (GPU i starts with peer i), as all-to-all schedules do to avoid incast.

`max_sim_tasks` 4: a GPU's real pipeline tasks (its share of the tensors over `task_bytes`) are simulated as at
most this many, each standing for an equal run of them, so that fetch, encode and writes of successive tasks
overlap as they do; a simulated task pays the fixed costs of the real ones it stands for (their calls, and each
copy the latency of each real task's copy on its route: a real task is an all-to-all of its own). It is a
fidelity knob, not a cost: every simulated task is another all-to-all of copies,
and on hundreds of GPUs the engine's time grows with them (docs/weight_sync.md, "At cluster scale"). 1 simulates
each GPU's share as one task (no overlap between its stages): on 32-256 GPUs of the cluster-scale layout that
moved the sync time by -2% to +5% (+17-19% on 8-16 GPUs, where overlapping the stages matters most) and
simulated 3-5x faster at 128 GPUs, 25-28x at 256 (`benchmarks/results/sync-scale-rdma-p2p-*.json`).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import simpy

from fabricsim.simcore.units import format_bytes

from ..errors import WorkloadError
from ..placement import assembled_plan
from .base import Knobs, Strategy, SyncContext, SyncSetup, effective_transforms, wire_ratio

GiB = 1 << 30
RECEIVE = "delta-receive"  # a delta's payload buffer on each rollout GPU, its allocation's tag


@dataclass(frozen=True)
class RdmaP2PKnobs(Knobs):
    task_bytes: float = 1 * GiB
    watermark_bytes: float = 4 * GiB
    write_overhead_s: float = 2e-6
    barrier_s: float = 1e-3
    task_overhead_s: float = 20e-6
    outstanding: int = 16
    max_sim_tasks: int = 4

    def __post_init__(self) -> None:
        """A task's tensors are held while it is in flight, so one task larger than the watermark cannot run at all
        (the pipeline took the larger of the two as its memory instead, silently, and reported that peak). The
        sizes are numbers of at least a byte by then: `Knobs.__post_init__` types every field first, and refuses
        '1GiB' given to the constructor."""
        super().__post_init__()
        if self.task_bytes > self.watermark_bytes:
            raise WorkloadError(f"rdma-p2p: task_bytes ({format_bytes(self.task_bytes)}) is larger than "
                                f"watermark_bytes ({format_bytes(self.watermark_bytes)}), the bytes a GPU may hold in "
                                f"flight: no task would fit; lower task_bytes or raise watermark_bytes")


class RdmaP2P(Strategy):
    name = "rdma-p2p"
    Knobs = RdmaP2PKnobs

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        """The watermark on each trainer GPU; with a decoding kernel (delta), each rollout GPU's receive buffer too:
        such a payload cannot be written into the live weights, it lands beside them and the kernel applies it (it
        went uncounted, and a delta of everything fitted where the weights twice over would not)."""
        out = dict.fromkeys(setup.trainer.gpus, float(self.knobs.watermark_bytes))
        transforms = effective_transforms(setup, self)
        if any(t.decode_hbm for t in transforms):
            for g, b in zip(plan.rollout_gpus, plan.need_bytes, strict=True):
                out[g] = out.get(g, 0.0) + float(b) * wire_ratio(transforms)
        return out

    def encoded_bytes(self, setup: SyncSetup, plan) -> dict[str, float]:
        """Each trainer GPU encodes the whole tensors it assembles and sends (`assembled_plan`'s `unique`), not its
        own shards: with data-parallel replicas fewer, with FSDP more (the embedding and LM head whole, once)."""
        ap = assembled_plan(setup.model, setup.trainer, setup.rollout)
        return {g: float(b) for g, b in zip(ap.trainer_gpus, ap.unique, strict=True) if b > 0}

    @property
    def declarative(self) -> bool:  # type: ignore[override]
        """Declared up front (the compiled loop runs it) when no task can wait for watermark memory: at most as many
        simulated tasks as slots, the default. Otherwise tasks take slots from a semaphore as any earlier task
        frees one, which only a process can follow."""
        return self.knobs.max_sim_tasks <= self._slots()

    def scale_note(self, setup: SyncSetup) -> str:
        """From 2^17 copies on (256 GPUs of the cluster-scale layout at the default 4 tasks) the exact simulation
        of every task's all-to-all takes minutes (181-190 s on the 2-core VM), and its time grows faster than the
        copies (each departure re-rates a few hundred flows: docs/weight_sync.md, "At cluster scale"), so from
        2^19 on the note says so; one task per GPU simulates 1/tasks as many copies, which answers in seconds below
        2^16 of them (2^15 on 256 GPUs), in under a minute below 2^18 (2^17 on 512) and in minutes beyond (2^19 on
        1,024: 284 s), at a cost in fidelity that docs/weight_sync.md measures (the figures live there, not
        here). The tasks counted are those each GPU simulates: `max_sim_tasks`, or fewer where its share of the
        tensors makes fewer real tasks (a trial's 4 GPUs with max_sim_tasks=100000 were warned of 3.2 million
        copies); the plan that says so is built only where the note may speak (~5 s at 1,024 GPUs, of minutes)."""
        k = self.knobs
        n_train = len(setup.trainer.gpus)
        one_task = n_train * (n_train + len(setup.rollout.gpus))
        if one_task * k.max_sim_tasks < 1 << 17:  # small enough whatever each GPU's share: no plan needed
            return ""
        # each GPU's own count: whole tensors are dealt round robin, so shares differ (Qwen3-235B-A22B on 1,024
        # GPUs: 0.95-5.4 GB, one to six tasks; the mean said one, where the run simulates 3x the copies of one)
        ap = assembled_plan(setup.model, setup.trainer, setup.rollout)
        per_gpu = [min(k.max_sim_tasks, max(1, math.ceil(u / k.task_bytes))) for u in ap.unique if u > 0]
        tasks = max(per_gpu, default=1)
        copies = round(one_task * sum(per_gpu) / max(1, len(per_gpu)))
        if copies < 1 << 17 or (tasks <= 1 and one_task < 1 << 18):
            return ""
        takes = "can take minutes" if copies < 1 << 19 else "takes many minutes (more than in proportion to them)"
        said = (f"{self.label} simulates each of {n_train} trainer GPUs' pipelines as "
                f"{f'up to {tasks} tasks' if tasks > 1 else 'one task'}, about {copies:,} copies, which {takes} to "
                f"simulate")
        if tasks <= 1:  # one task a GPU already: nothing coarser to offer
            return f"{said} (docs/weight_sync.md, \"At cluster scale\")"
        faster = ("answers in seconds" if one_task < 1 << 16 else "answers in under a minute" if one_task < 1 << 18
                  else "still takes minutes")
        return (f"{said}; --knob max_sim_tasks=1 (one task per GPU, a coarser pipeline) {faster}: docs/weight_sync.md, "
                f"\"At cluster scale\", says how much its sync times differ")

    def _slots(self) -> int:
        k = self.knobs
        return int(k.watermark_bytes // k.task_bytes)  # at least 1 (`RdmaP2PKnobs.__post_init__`)

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim = self.knobs, ctx.sim
        ap = ctx.assembled
        n_tensors = float(ctx.plan.tensors_per_rollout.sum())
        total_send = float(ap.send.sum())
        declared = self.declarative
        ends = []
        if ctx.decode_hbm:  # a delta's payload lands beside the live weights (`extra_memory`)
            for j, r in enumerate(ap.rollout_gpus):
                ctx.alloc(r, float(ctx.plan.need_bytes[j]) * ctx.wire_ratio, RECEIVE)
        for i, g in enumerate(ap.trainer_gpus):
            unique = float(ap.unique[i])
            if unique <= 0:
                continue
            ctx.alloc(g, k.watermark_bytes, "rdma-watermark")
            real = max(1, math.ceil(unique / k.task_bytes))
            sims = min(real, k.max_sim_tasks)
            slices = n_tensors * (float(ap.send[i].sum()) / total_send if total_send else 0.0)
            if declared:
                ends.append(self._pipeline(ctx, i, g, real, sims, slices))
            else:
                slots = simpy.Resource(sim.env, capacity=self._slots())
                ends.append(sim.process(self._queued(ctx, i, g, real, sims, slots, slices)))
        written = sim.all_of(ends, id=ctx.name("written"))
        if ctx.decode_hbm:  # e.g. delta: apply the received payloads in place; the live weights change from then
            ctx.live_write_at(written)
            need = ctx.plan.need_bytes
            applied = [ctx.load(r, float(need[j]), after=[written]) for j, r in enumerate(ap.rollout_gpus)]
            for j, r in enumerate(ap.rollout_gpus):  # each payload's buffer, held until it is applied
                ctx.free_after(r, RECEIVE, applied[j])
            written = sim.all_of(applied, id=ctx.name("applied"))
        yield sim.delay(ctx.name("barrier"), k.barrier_s, after=[written], tag="barrier")
        for g in ap.trainer_gpus:
            ctx.free(g, "rdma-watermark")

    def _pipeline(self, ctx: SyncContext, i: int, g: str, real: int, sims: int, slices: float) -> simpy.Event:
        """One trainer GPU's pipeline, declared: `sims` simulated tasks standing for `real` ones, none waiting for
        a slot (there is one for each)."""
        peers = self._peers(ctx, i)
        prev_fetch = prev_enc = None
        pending = []
        for t in range(sims):
            prev_fetch, prev_enc, done = self._task(ctx, i, g, peers, _tasks_of(real, sims, t), real, slices,
                                                    prev_fetch, prev_enc)
            pending.append(done)
        return ctx.sim.all_of(pending, id=ctx.name(f"done.{g}"))

    def _queued(self, ctx: SyncContext, i: int, g: str, real: int, sims: int, slots: simpy.Resource,
                slices: float) -> Generator:
        """One trainer GPU's pipeline when tasks outnumber watermark slots: each task takes a slot first (first
        come, first served) and frees it when its writes have landed, whichever task that was."""
        peers = self._peers(ctx, i)
        prev_fetch = prev_enc = None
        pending = []
        for t in range(sims):
            req = slots.request()
            yield req
            prev_fetch, prev_enc, done = self._task(ctx, i, g, peers, _tasks_of(real, sims, t), real, slices,
                                                    prev_fetch, prev_enc)
            done.callbacks.append(lambda _ev, r=req: slots.release(r))
            pending.append(done)
        yield ctx.sim.env.all_of(pending)

    def _task(self, ctx: SyncContext, i: int, g: str, peers: tuple[list, list], m: int, real: int,
              slices: float, prev_fetch: simpy.Event | None, prev_enc: simpy.Event | None
              ) -> tuple[simpy.Event, simpy.Event, simpy.Event]:
        """One simulated pipeline task standing for `m` of GPU i's `real` tasks (`peers`: `_peers`): their calls
        -> fetch (after the previous task's fetch) -> encode (after the previous encode) -> post the writes ->
        write. Returns (fetched, encoded, written)."""
        k, sim, ap = self.knobs, ctx.sim, ctx.assembled
        fetch_from, write_to = peers
        frac = m / real  # of the GPU's whole work
        call = sim.delay(ctx.name(f"call.{g}"), m * k.task_overhead_s, after=[prev_fetch] if prev_fetch else [],
                         tag="rdma-call")
        fetched = self._stream(ctx, f"fetch.{g}", [(src, g, b * frac) for src, b in fetch_from], [call],
                               "assemble", m, mechanism="sm")
        enc_after = [fetched, *([prev_enc] if prev_enc else [])]
        enc = ctx.encode(g, float(ap.unique[i]) * frac, after=enc_after) if ctx.transforms else fetched
        post = sim.delay(ctx.name(f"post.{g}"), slices * frac * k.write_overhead_s, after=[enc], tag="rdma-post")
        if not ctx.decode_hbm:  # the writes land in the live weights (a delta's in a buffer: `procedure`)
            ctx.live_write_at(post, since=prev_fetch, first=1 / m)  # the first of its m equal real tasks' posts
        done = self._stream(ctx, f"write.{g}", [(g, dst, b * frac) for dst, b in write_to], [post], "rdma-write", m)
        return fetched, enc, done

    @staticmethod
    def _peers(ctx: SyncContext, i: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """Trainer GPU i's whole-sync copies, in its rotated order: (the GPUs it fetches shards from, bytes), (the
        rollout GPUs it writes to, bytes on the wire). Every pipeline task moves a share of them."""
        ap = ctx.assembled
        fetch_from = [(ap.trainer_gpus[s], float(b)) for s, b in _rotated(ap.fetch[:, i], i) if b > 0 and s != i]
        # an empty payload (a delta with nothing changed) posts its writes but moves nothing
        write_to = [(ap.rollout_gpus[j], float(b) * ctx.wire_ratio) for j, b in _rotated(ap.send[i], i)
                    if b * ctx.wire_ratio > 0]
        return fetch_from, write_to

    def _stream(self, ctx: SyncContext, stem: str, copies: list[tuple[str, str, float]], after: list,
                tag: str, tasks: int = 1, mechanism: str = "ce") -> simpy.Event:
        """Copies issued `outstanding` at a time, in the given (rotated) order: how a static schedule keeps every
        NIC busy without incast (at step t GPU i talks to peer i + t). Standing for `tasks` real tasks, each copy
        pays its route's latency once per real task (`Simulation.transfers`' latencies: a lane runs their copies in
        turn)."""
        sim = ctx.sim
        ends = sim.transfers([(ctx.name(stem), src, dst, b) for src, dst, b in copies], after=after,
                             lanes=max(1, self.knobs.outstanding), tag=tag, mechanism=mechanism, latencies=tasks)
        return sim.all_of(ends, id=ctx.name(f"{stem}.all")) if ends else sim.delay(ctx.name(f"{stem}.none"), 0.0,
                                                                                        after=after)


def _tasks_of(real: int, sims: int, t: int) -> int:
    """How many of a GPU's `real` tasks simulated task t of `sims` stands for (the first ones take one more when
    they do not divide)."""
    return real // sims + (1 if t < real % sims else 0)


def _rotated(row, start: int) -> list[tuple[int, float]]:
    """(index, value) pairs of `row` starting at `start` modulo its length."""
    n = len(row)
    return [((start + t) % n, row[(start + t) % n]) for t in range(n)]
