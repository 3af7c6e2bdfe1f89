"""`host-staged`: weights staged in pinned host memory, then H2D + NCCL broadcast into a double-buffered CUDA IPC
buffer that the engines reload from — checkpoint-engine's broadcast path (`ParameterServer._update_per_bucket`,
Kimi-K2 report, MoonshotAI).

The checkpoint sits in pinned host memory, sharded over the rollout GPUs' ranks (each rank registers its part;
stage 0 gets it there: the trainer's D2H, plus a host-to-host copy when trainer and engines are on different
nodes; checkpoint-engine's benchmark starts with the checkpoint registered, `include_d2h=False`). Then, round by
round: every rank copies its next bucket host -> its H2D buffer at once (H2D on all PCIe links together, GPU pairs
sharing a switch uplink), and then, owner after owner, the bucket is copied into one half of the shared IPC double
buffer, broadcast from its owner to every rank (NCCL ring), and the engines reload their slices from it while the
next broadcast fills the other half (the engine's reload of bucket g must end before bucket g+2 overwrites it).

Default costs: `bucket_bytes` 1.5 GiB (checkpoint-engine sizes buckets from free memory: 1.42 GiB in its
GLM-4.5-Air run, 2.69 GiB for Qwen3-235B); `chunk_bytes`, `nccl_step_s`, `call_latency_s` as `nccl-broadcast`;
`bucket_sync_s` 1 ms per bucket (a ZMQ round trip to the engine plus a `dist.barrier`, each a few hundred us);
`per_tensor_s` 20 us per tensor reloaded.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from fabricsim.hwmodels.topology import nearest_host
from fabricsim.simcore.collectives import NCCL_CHUNK_BYTES, NCCL_STEP_S, ring_broadcast, ring_order

from ..errors import InfeasibleError
from .base import Knobs, Strategy, SyncContext, SyncSetup, coarsen, first_share, share_of_replica

GiB = 1 << 30


@dataclass(frozen=True)
class HostStagedKnobs(Knobs):
    bucket_bytes: int = 3 * GiB // 2  # 1.5 GiB, a whole number of bytes as every size knob
    chunk_bytes: float = NCCL_CHUNK_BYTES
    nccl_step_s: float = NCCL_STEP_S
    call_latency_s: float = 20e-6
    bucket_sync_s: float = 1e-3
    per_tensor_s: float = 20e-6
    include_d2h: bool = True
    max_sim_rounds: int = 12




class HostStaged(Strategy):
    name = "host-staged"
    Knobs = HostStagedKnobs
    declarative = True

    def check(self, setup: SyncSetup, plan) -> None:
        topo = setup.topology
        hosts = {nearest_host(topo, topo.resolve(g)) for g in setup.rollout.gpus}
        room = sum(topo.graph.nodes[h]["spec"].bytes for h in hosts)
        if setup.model.weight_bytes() > room:
            raise InfeasibleError(f"host-staged: {setup.model.weight_bytes() / 2**30:.0f} GiB of weights exceed the "
                                  f"{room / 2**30:.0f} GiB of host memory next to the rollout GPUs")

    def encoded_bytes(self, setup: SyncSetup, plan) -> dict[str, float]:
        """Each rank encodes the buckets it owns: its 1/R of the model (`procedure`)."""
        return dict.fromkeys(setup.rollout.gpus, float(setup.model.weight_bytes()) / len(setup.rollout.gpus))

    def buffer_bytes(self, setup: SyncSetup) -> float:
        """One bucket buffer: `bucket_bytes`, or a rank's whole shard (1/R of the model) where that is less."""
        return float(min(self.knobs.bucket_bytes, setup.model.weight_bytes() / len(setup.rollout.gpus)))

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        return dict.fromkeys(setup.rollout.gpus, 3.0 * self.buffer_bytes(setup))  # H2D buffer + IPC double buffer

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, setup = self.knobs, ctx.sim, ctx.setup
        topo = sim.topology
        model_bytes = setup.model.weight_bytes()
        ranks = ring_order(topo, setup.rollout.gpus)
        need = dict(zip(ctx.plan.rollout_gpus, ctx.plan.need_bytes, strict=True))
        ntens = dict(zip(ctx.plan.rollout_gpus, ctx.plan.tensors_per_rollout, strict=True))
        for g in ranks:
            ctx.alloc(g, 3 * self.buffer_bytes(setup), "h2d-and-ipc-buffers")
        staged = self._stage(ctx, ranks, model_bytes) if k.include_d2h else []
        # Each rank owns 1/R of the checkpoint, cut into buckets; round i moves every rank's i-th bucket.
        shard = model_bytes / len(ranks)
        tensors = -(-len(setup.model.tensors()) // len(ranks))  # a rank's share of them
        rounds = coarsen(shard, k.bucket_bytes, k.max_sim_rounds, most=tensors)
        reloads: list = []
        h2d_round: list = [sim.all_of(staged, id=ctx.name("staged"))]
        for rnd, (nbytes, m) in enumerate(rounds):
            # Synchronous H2D at the top of the round, all ranks at once, after the previous round's broadcasts.
            after = [h2d_round[-1]]
            # a round standing for m real ones: each of its copies pays the route's latency m times
            h2d = sim.all_of([sim.transfer(ctx.name(f"h2d.{g}"), nearest_host(topo, g), g, nbytes, after=after,
                                           tag="h2d", latencies=m) for g in ranks], id=ctx.name(f"h2d{rnd}"))
            h2d_round.append(h2d)
            prev_bcast = h2d
            frac = nbytes / model_bytes
            for owner in ranks:
                deps = [prev_bcast, *(reloads[-2:-1] if len(reloads) >= 2 else [])]
                staged_b = sim.transfer(ctx.name(f"to-ipc.{owner}"), owner, owner, nbytes, after=deps, tag="ipc-copy",
                                        latencies=m)
                encoded = ctx.encode(owner, nbytes, after=[staged_b]) if ctx.transforms else staged_b
                ring = [owner] + [g for g in ranks if g != owner]
                sent = ring_broadcast(sim, ring, nbytes * ctx.wire_ratio, chunk_bytes=k.chunk_bytes, after=[encoded],
                                      name=ctx.name(f"bcast{rnd}"), tag="broadcast", repeats=m,
                                      step_s=k.nccl_step_s)
                ctx.live_write_at(sent, since=after[0],  # the first of its real rounds': its share from the start
                                  first=first_share(nbytes, shard, k.bucket_bytes, tensors))
                synced = sim.delay(ctx.name("bucket-sync"), m * k.bucket_sync_s, after=[sent], tag="bucket-sync")
                loads = ctx.loads([(g, need[g] * frac, float(ntens[g]) * frac * k.per_tensor_s) for g in ranks],
                                  after=[synced], setup_name="reload", latencies=m)
                reloads.append(sim.all_of(loads, id=ctx.name(f"reloaded.{owner}")))
                prev_bcast = synced
            h2d_round[-1] = prev_bcast
        yield sim.all_of(reloads, id=ctx.name("reloaded"))
        for g in ranks:
            ctx.free(g, "h2d-and-ipc-buffers")

    def _stage(self, ctx: SyncContext, ranks: list[str], model_bytes: float) -> list:
        """Stage 0: trainer D2H into its hosts, then host-to-host to the ranks' hosts on other nodes."""
        sim, topo = ctx.sim, ctx.sim.topology
        events = []
        shares = share_of_replica(ctx)
        d2h = {g: sim.transfer(ctx.name(f"d2h.{g}"), g, nearest_host(topo, g), s * model_bytes, tag="d2h")
               for g, s in shares.items()}
        events += d2h.values()
        trainer = list(shares)
        for r, g in enumerate(ranks):
            src_gpu = trainer[r % len(trainer)]
            src, dst = nearest_host(topo, src_gpu), nearest_host(topo, g)
            if src.rpartition(".")[0] != dst.rpartition(".")[0]:
                events.append(sim.transfer(ctx.name(f"h2h.{g}"), src, dst, model_bytes / len(ranks),
                                           after=[d2h[src_gpu]], tag="h2h"))
        return events
