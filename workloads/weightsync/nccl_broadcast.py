"""`nccl-broadcast`: gather full tensors on one trainer rank, then NCCL-broadcast them to every rollout GPU.

This is the OpenRLHF / verl path for separate rollout engines: trainer rank 0 joins a NCCL group with every
inference worker; per bucket of parameters the trainer all-gathers the shards (FSDP `summon_full_params`,
Megatron TP/EP gathers) so rank 0 holds full tensors, broadcasts them (ring, pipelined in NCCL chunks), and each
engine's `load_weights` keeps its TP slice. Every rollout GPU therefore receives the *full* model, and the whole
stream leaves through one GPU's links: one NIC across nodes, which is the choke point Perplexity and
checkpoint-engine describe.

Modelled as, per bucket: gather (every trainer GPU sends its share to the root at once), optional encode on
the root, ring broadcast of the bucket from the root through all rollout GPUs (see `collectives`), then each
rollout GPU copies its slice into its live weights and pays `load_weights`' per-tensor Python cost. Without
`overlap` the next bucket's gather waits for this bucket's loads (verl and OpenRLHF issue them in order).

Default costs: `chunk_bytes` 512 KiB is NCCL's default per-step slice (4 MiB NCCL_BUFFSIZE over 8 NCCL_STEPS);
`nccl_step_s` 3.4 us, the time of one NCCL step (flag, fence, credit back) on an NVLink ring hop, taken from NCCL's
own tuning model: with 8 steps in flight on each of 16 channels a hop carries at most 128 chunks per step
(`collectives.step_cap_Bps`), which binds only for chunks far below the default (a new-user trial found
`chunk_bytes=1` the fastest before it: the pipeline fill vanished and nothing else charged the handshakes);
`call_latency_s` 20 us per collective launch (nccl-tests small-message latency on NVLink is ~10-20 us);
`per_tensor_s` 20 us of Python per tensor in the engine's load_weights (an estimate: one dict lookup,
a narrow/copy_ dispatch and a weight-loader call, each a few us; calibration can replace it);
`bucket_bytes` 512 MiB (verl's `update_weights_bucket_megabytes` default).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from fabricsim.simcore.collectives import NCCL_CHUNK_BYTES, NCCL_STEP_S, gather, ring_broadcast, ring_order

from .base import Knobs, Strategy, SyncContext, SyncSetup, coarsen, first_share

MiB = 1 << 20


@dataclass(frozen=True)
class NcclBroadcastKnobs(Knobs):
    bucket_bytes: float = 512 * MiB
    chunk_bytes: float = NCCL_CHUNK_BYTES
    nccl_step_s: float = NCCL_STEP_S
    call_latency_s: float = 20e-6
    per_tensor_s: float = 20e-6
    overlap: bool = False
    max_sim_buckets: int = 32




class NcclBroadcast(Strategy):
    name = "nccl-broadcast"
    Knobs = NcclBroadcastKnobs
    declarative = True

    def root(self, setup: SyncSetup) -> str:
        return setup.trainer.gpus[0]

    def encoded_bytes(self, setup: SyncSetup, plan) -> dict[str, float]:
        """The root encodes every gathered bucket: all of the model (a delta keeps its previous version there)."""
        return {self.root(setup): float(setup.model.weight_bytes())}

    def buffer_bytes(self, setup: SyncSetup) -> float:
        """One bucket buffer: `bucket_bytes`, or the whole model where that is less (a 64 GiB bucket of a 16 GB model
        holds 16 GB; it was booked and reported as 64)."""
        return float(min(self.knobs.bucket_bytes, setup.model.weight_bytes()))

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        slots, buf = (2 if self.knobs.overlap else 1), self.buffer_bytes(setup)
        out = {g: slots * buf for g in plan.rollout_gpus}
        root = self.root(setup)
        out[root] = 2 * slots * buf  # its gather buffer beside its broadcast buffer (a rollout GPU's too, colocated)
        return out

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, setup = self.knobs, ctx.sim, ctx.setup
        model_bytes = setup.model.weight_bytes()
        root = self.root(setup)
        ring = ring_order(sim.topology, [root, *setup.rollout.gpus], first=root)
        # the root gathers what it does not hold itself: under data parallelism it may hold a whole copy (a
        # share of the replicas, as before, had a DP=4 root of a full copy gather 3/4 of the model); the rest comes
        # from the other GPUs in proportion to what they hold
        held = dict(zip(ctx.plan.trainer_gpus, (float(h) for h in ctx.plan.held_bytes), strict=True))
        own = min(1.0, held.get(root, 0.0) / model_bytes)
        rest = sum(h for g, h in held.items() if g != root)
        others = {g: h / rest for g, h in held.items() if g != root} if own < 1 and rest > 0 else {}
        need = dict(zip(ctx.plan.rollout_gpus, ctx.plan.need_bytes, strict=True))
        ntens = dict(zip(ctx.plan.rollout_gpus, ctx.plan.tensors_per_rollout, strict=True))
        slots = 2 if k.overlap else 1
        buf = self.buffer_bytes(setup)
        for s in range(slots):
            for g in {root, *ring}:
                ctx.alloc(g, buf, f"bucket{s}")
            ctx.alloc(root, buf, f"gather{s}")  # (booked by `extra_memory`, and held: the run now says so too)
        loads_of: list = []
        prev_gather = None
        tensors = len(setup.model.tensors())
        for b, (nbytes, m) in enumerate(coarsen(model_bytes, k.bucket_bytes, k.max_sim_buckets, most=tensors)):
            frac = nbytes / model_bytes
            # In order: the previous bucket's loads. Overlapped: the previous gather, and the loads of the bucket
            # that last used this buffer slot.
            if k.overlap:
                after = [e for e in (prev_gather, loads_of[b - 2] if b >= 2 else None) if e is not None]
            else:
                after = loads_of[-1:]
            fetch = {g: f * nbytes * (1 - own) for g, f in others.items()}
            gathered = gather(sim, fetch, root, after=after, name=f"gather{b}", tag="gather",
                              fixed_cost_s=m * k.call_latency_s, repeats=m)
            encoded = ctx.encode(root, nbytes, after=[gathered]) if ctx.transforms else gathered
            sent = ring_broadcast(sim, ring, nbytes * ctx.wire_ratio, chunk_bytes=k.chunk_bytes, after=[encoded],
                                  name=f"bcast{b}", tag="broadcast", repeats=m, step_s=k.nccl_step_s)
            # the first of its real buckets' writes: its share of the way from the simulated bucket's start
            ctx.live_write_at(sent, since=after[0] if after else None,
                              first=first_share(nbytes, model_bytes, k.bucket_bytes, tensors))
            loads = ctx.loads([(g, need[g] * frac, float(ntens[g]) * frac * k.per_tensor_s)
                               for g in setup.rollout.gpus], after=[sent], setup_name="load_weights", latencies=m)
            prev_gather = gathered
            loads_of.append(sim.all_of(loads, id=f"loaded{b}"))
        yield sim.all_of(loads_of, id="loaded")
        for s in range(slots):
            for g in {root, *ring}:
                ctx.free(g, f"bucket{s}")
            ctx.free(root, f"gather{s}")
