"""`cuda-ipc-buckets`: colocated trainer and engine share GPU memory through CUDA IPC handles, bucket by bucket.

slime, verl (colocated) and NeMo-RL do this: per bucket, the trainer all-gathers the bucket's tensors (TP / EP /
FSDP shards) so every trainer GPU holds them whole, packs them into one flat buffer (slime's "flattened tensor
bucket", the change behind its 60 s -> 7 s for Qwen3-30B-A3B), serialises one CUDA IPC handle per bucket and
sends it to the engine worker on the same GPU (or a GPU of the same node); the engine opens the handle, rebuilds
tensor views (a per-tensor cost), copies its TP slice into its live weights, and closes the handle.

Modelled per bucket: ring all-gather over the trainer GPUs (bandwidth form), the conversion kernels where the
engines take another form (fp8, a delta), a pack copy (HBM read + write of the converted bucket), per-bucket
handle costs, then each rollout GPU's copy of its slice from its partner's buffer (a local copy when colocated,
NVLink/PCIe peer otherwise) and its per-tensor rebuild cost. Buckets run in order (one buffer), as slime does.

Default costs: `ipc_handle_s` 1 ms per bucket (an estimate) for serialising the handle, sending it between
processes (Ray / ZMQ round trip, ~0.5-1 ms) and `cudaIpcOpenMemHandle` plus close (tens to hundreds of us, more for
large mappings). On a topology whose calibration profile fitted CUDA IPC (`software_costs.cuda_ipc.open` and
`.close`, measured by `fabricsim validate`: e.g. 318 us + 0.11 ns/B open and 149 us close on the H200x2 machine),
the handle cost per bucket is the fitted open + close for the bucket's size plus `ipc_message_s` (0.5 ms, the
process round trip the measurement does not include) instead; `per_tensor_s` 20 us per tensor rebuilt and loaded
(Python dispatch); `bucket_bytes` 512 MiB (slime's `--update-weight-buffer-size` default). Where the profile
holds the workload suite's fits of this very code path (`software_costs.ipc_bucket`: `per_bucket` and
`per_tensor`, measured end to end with trainer and rollout processes sharing a GPU; 1.09 ms and 11.4 us on one
H200, `fabricsim validate --suite workloads`), those replace the defaults; a knob passed explicitly wins.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from fabricsim.simcore.collectives import ring_allgather, ring_order

from ..errors import InfeasibleError
from .base import Knobs, Strategy, SyncContext, SyncSetup, coarsen, first_share

MiB = 1 << 20


@dataclass(frozen=True)
class CudaIpcKnobs(Knobs):
    bucket_bytes: float = 512 * MiB
    ipc_handle_s: float = 1e-3
    ipc_message_s: float = 0.5e-3
    per_tensor_s: float = 20e-6
    max_sim_buckets: int = 32


def node_of(gpu: str) -> str:
    return gpu.rpartition(".")[0]


class CudaIpcBuckets(Strategy):
    name = "cuda-ipc-buckets"
    Knobs = CudaIpcKnobs

    def handle_cost(self, topo, bucket_bytes: float) -> float:
        """Per-bucket cost, best source first: a knob the caller set; the workload suite's fitted per-bucket cost
        of the real code path (`software_costs.ipc_bucket.per_bucket`: sync, export, message, open, close);
        calibrated open + close + `ipc_message_s`; else the estimate `ipc_handle_s`."""
        if self.knobs.ipc_handle_s != CudaIpcKnobs.ipc_handle_s:
            return self.knobs.ipc_handle_s
        bucket = topo.software_costs.get("ipc_bucket", {}).get("per_bucket")
        if bucket is not None:
            return bucket.cost(bucket_bytes)
        fitted = topo.software_costs.get("cuda_ipc", {})
        if "open" in fitted and "close" in fitted:
            return fitted["open"].cost(bucket_bytes) + fitted["close"].cost(bucket_bytes) + self.knobs.ipc_message_s
        return self.knobs.ipc_handle_s

    def per_tensor_cost(self, topo) -> float:
        """Per tensor rebuilt and loaded: the knob if set, else the fitted `ipc_bucket.per_tensor`, else 20 us."""
        fitted = topo.software_costs.get("ipc_bucket", {}).get("per_tensor")
        if self.knobs.per_tensor_s != CudaIpcKnobs.per_tensor_s or fitted is None:
            return self.knobs.per_tensor_s
        return fitted.cost(0.0)

    def partners(self, setup: SyncSetup) -> dict[str, str]:
        """The trainer GPU whose bucket each rollout GPU maps: itself when colocated, else one on its node."""
        trainer = [setup.topology.resolve(g) for g in setup.trainer.gpus]
        out = {}
        for i, g in enumerate(setup.rollout.gpus):
            g = setup.topology.resolve(g)
            if g in trainer:
                out[g] = g
                continue
            same = [t for t in trainer if node_of(t) == node_of(g)]
            if not same:
                raise InfeasibleError(f"cuda-ipc-buckets: rollout {g} shares no node with a trainer GPU (CUDA IPC "
                                      "handles only open within one machine)")
            out[g] = same[i % len(same)]
        return out

    def check(self, setup: SyncSetup, plan) -> None:
        self.partners(setup)

    def buffer_bytes(self, setup: SyncSetup) -> float:
        """One bucket buffer: `bucket_bytes`, or the whole model where that is less (it never holds more)."""
        return float(min(self.knobs.bucket_bytes, setup.model.weight_bytes()))

    def extra_memory(self, setup: SyncSetup, plan) -> dict[str, float]:
        return dict.fromkeys(setup.trainer.gpus, 2.0 * self.buffer_bytes(setup))  # all-gather buffer + flat bucket

    def encoded_bytes(self, setup: SyncSetup, plan) -> dict[str, float]:
        """Every trainer GPU encodes each all-gathered bucket whole (`procedure`): all of the model on each."""
        return dict.fromkeys(setup.trainer.gpus, float(setup.model.weight_bytes()))

    def procedure(self, ctx: SyncContext) -> Generator:
        k, sim, setup = self.knobs, ctx.sim, ctx.setup
        model_bytes = setup.model.weight_bytes()
        trainer = ring_order(sim.topology, setup.trainer.gpus)
        partners = self.partners(setup)
        share = {g: min(1.0, float(h) / model_bytes) for g, h in zip(ctx.plan.trainer_gpus, ctx.plan.held_bytes,
                                                                      strict=True)}
        need = dict(zip(ctx.plan.rollout_gpus, ctx.plan.need_bytes, strict=True))
        ntens = dict(zip(ctx.plan.rollout_gpus, ctx.plan.tensors_per_rollout, strict=True))
        for g in trainer:
            ctx.alloc(g, 2 * self.buffer_bytes(setup), "ipc-buckets")
        per_tensor_s = self.per_tensor_cost(sim.topology)
        prev = None
        tensors = len(setup.model.tensors())
        for b, (nbytes, m) in enumerate(coarsen(model_bytes, k.bucket_bytes, k.max_sim_buckets, most=tensors)):
            frac = nbytes / model_bytes
            after = [prev] if prev is not None else []
            missing = {g: nbytes * (1 - share[g]) for g in trainer}
            gathered = ring_allgather(sim, trainer, missing, after=after, name=f"allgather{b}", repeats=m)
            # converted (fp8, delta) tensor by tensor as gathered, then flattened at the engines' size, as slime
            # quantizes the named tensors before its flattened bucket (the pack ran first, at the converted size)
            encoded = [ctx.encode(g, nbytes, after=[gathered]) if ctx.transforms else gathered for g in trainer]
            packed = [sim.task(ctx.name(f"pack.{g}"), g, hbm_bytes=2 * nbytes * ctx.wire_ratio, after=[e],
                               tag="pack") for g, e in zip(trainer, encoded, strict=True)]
            handles = sim.delay(ctx.name(f"ipc{b}"), m * self.handle_cost(sim.topology, nbytes / m),
                                after=packed, tag="ipc-handle")
            ctx.live_write_at(handles, since=prev,  # the first of its real buckets' handles
                              first=first_share(nbytes, model_bytes, k.bucket_bytes, tensors))
            loads = []
            for g, src in partners.items():
                rebuilt = sim.delay(ctx.name(f"rebuild.{g}"), float(ntens[g]) * frac * per_tensor_s,
                                    after=[handles], tag="per-tensor")
                loads.append(ctx.load(g, need[g] * frac, after=[rebuilt], src=src, latencies=m))
            prev = sim.env.all_of(loads)
        if prev is not None:
            yield prev
        for g in trainer:
            ctx.free(g, "ipc-buckets")
