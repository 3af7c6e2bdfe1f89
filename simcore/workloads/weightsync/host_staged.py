"""`host-staged`: weights staged in pinned host memory, then H2D + NCCL broadcast into a double-buffered CUDA IPC
buffer that the engines reload from — checkpoint-engine's broadcast path (Kimi-K2 report, MoonshotAI).

Stages: (0) the trainer copies its shards to pinned host memory (D2H, every trainer GPU at once; checkpoint-
engine's benchmark starts from weights already registered in host memory: `include_d2h=False` matches it);
then per bucket (1) H2D of the bucket from host memory to one rollout GPU (owners rotate, so H2D spreads over
PCIe links), (2) ring broadcast from that GPU to every rollout GPU into the shared IPC buffer, (3) each engine
copies its slice into its live weights. Two buffers per GPU: bucket b+1's H2D overlaps bucket b's broadcast
and reload, so H2D traffic and broadcast traffic meet on PCIe switches and NICs (the contention checkpoint-
engine's README names as the reason its three-stage pipeline is not perfect).

Default costs: `bucket_bytes` 1.5 GiB (checkpoint-engine sizes buckets from free memory: 1.42 GiB in its
GLM-4.5-Air run, 2.69 GiB for Qwen3-235B); `chunk_bytes`, `call_latency_s` as `nccl-broadcast`;
`ipc_open_s` 1 ms per bucket and engine (handle open + ZMQ round trip, as `cuda-ipc-buckets`); `per_tensor_s`
20 us per tensor reloaded.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from ..errors import InfeasibleError
from .base import Knobs, Strategy, SyncContext, SyncSetup, coarsen
from .collectives import ring_broadcast, ring_order
from .nccl_broadcast import share_of_replica
from .registry import register

GiB = 1 << 30


@dataclass(frozen=True)
class HostStagedKnobs(Knobs):
    bucket_bytes: float = 1.5 * GiB
    chunk_bytes: float = 512 * 1024
    call_latency_s: float = 20e-6
    ipc_open_s: float = 1e-3
    per_tensor_s: float = 20e-6
    include_d2h: bool = True
    max_sim_buckets: int = 32


def nearest_host(topo, gpu: str) -> str:
    """The host socket of `gpu`'s node reached in the fewest hops (NUMA-local pinned memory)."""
    node = gpu.rpartition(".")[0]
    prefix = f"{node}." if node else ""
    hosts = [e for e in topo.endpoints() if e.startswith(f"{prefix}host")]
    return min(hosts, key=lambda h: (len(topo.path(h, gpu).nodes), h))


@register
class HostStaged(Strategy):
    name = "host-staged"
    Knobs = HostStagedKnobs

    def check(self, setup: SyncSetup, plan) -> None:
        topo = setup.topology
        hosts = {nearest_host(topo, topo.resolve(g)) for g in setup.trainer.gpus}
        room = sum(topo.graph.nodes[h]["spec"].bytes for h in hosts)
        if setup.model.weight_bytes() > room:
            raise InfeasibleError(f"host-staged: {setup.model.weight_bytes() / 2**30:.0f} GiB of weights exceed the "
                                  f"{room / 2**30:.0f} GiB of host memory next to the trainer GPUs")

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        return dict.fromkeys(setup.rollout.gpus, 2.0 * self.knobs.bucket_bytes)

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, setup = self.knobs, ctx.sim, ctx.setup
        topo = sim.topology
        model_bytes = setup.model.weight_bytes()
        rollout = ring_order(topo, setup.rollout.gpus)
        trainer = [topo.resolve(g) for g in setup.trainer.gpus]
        need = dict(zip(ctx.plan.rollout_gpus, ctx.plan.need_bytes, strict=True))
        ntens = dict(zip(ctx.plan.rollout_gpus, ctx.plan.tensors_per_rollout, strict=True))
        for g in rollout:
            ctx.alloc(g, 2 * k.bucket_bytes, "ipc-double-buffer")
        staged = []
        if k.include_d2h:
            for g, s in share_of_replica(ctx).items():
                staged.append(sim.transfer(ctx.name(f"d2h.{g}"), g, nearest_host(topo, g), s * model_bytes,
                                           tag="d2h"))
        staged_ev = sim.env.all_of(staged)
        h2d_done: list = []
        reloads: list = []
        for b, (nbytes, m) in enumerate(coarsen(model_bytes, k.bucket_bytes, k.max_sim_buckets)):
            frac = nbytes / model_bytes
            owner = rollout[b % len(rollout)]
            host = nearest_host(topo, trainer[b % len(trainer)])
            # Slot reuse: bucket b's H2D waits for the bucket that used the same buffer (b - 2) to be reloaded.
            after = [staged_ev, *h2d_done[-1:], *(reloads[b - 2:b - 1] if b >= 2 else [])]
            h2d = sim.transfer(ctx.name(f"h2d{b}"), host, owner, nbytes, after=after, tag="h2d")
            encoded = ctx.encode(owner, nbytes, after=[h2d]) if ctx.transforms else h2d
            ring = [owner] + [g for g in rollout if g != owner]
            sent = ring_broadcast(sim, ring, nbytes * ctx.wire_ratio, chunk_bytes=k.chunk_bytes,
                                  after=[encoded, *reloads[-1:]], name=f"bcast{b}", tag="broadcast", repeats=m)
            sent.callbacks.append(lambda _ev: ctx.mark_live_write())
            loads = []
            for g in rollout:
                opened = sim.delay(ctx.name(f"reload.{g}"), m * k.ipc_open_s + float(ntens[g]) * frac * k.per_tensor_s,
                                   after=[sent], tag="per-tensor")
                loads.append(ctx.load(g, need[g] * frac, after=[opened]))
            h2d_done.append(h2d)
            reloads.append(sim.env.all_of(loads))
        yield sim.env.all_of(reloads)
        for g in rollout:
            ctx.free(g, "ipc-double-buffer")
