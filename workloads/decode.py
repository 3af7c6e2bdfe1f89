"""Decode-step model: how long one generation step takes, given where the weights and the KV cache live.

Decode is memory-bound: every step each GPU of an engine reads its slice of the weights once and the KV
cache of every sequence in the batch, and does ~2 FLOPs per active parameter per token. So the step time is
a roofline over *sources*: max(FLOPs / peak, local bytes / HBM bandwidth, remote bytes / path bandwidth),
with the sources read concurrently. That is what makes the weight-sync strategies comparable in generation
time and not only in sync time: the shared pool's zero-copy mode has no sync at all but reads the weights
over NVLink (~390 GB/s) instead of HBM (~4 TB/s) at every step.

Two ways to use it, which agree on one GPU with nothing else running:
- standalone: `step_cost(model, batch, gpu_spec, tp=..., weight_read_Bps=...)` gives a `DecodeStepCost`;
- in a `Simulation`: `schedule_decode_step(sim, "gpu4", model, batch, weights_at="gpu0")` issues a compute
  task (FLOPs and local HBM bytes) and a transfer for each remote source, so contention with weight-sync
  traffic on the same links and HBM shows up.

Modelling choices, stated: the embedding table is not read (a lookup of `batch` rows), the LM head is; an MoE
layer reads the experts a batch touches (expected count under uniform routing, see
`ModelConfig.expected_active_experts`); with TP degree k every GPU reads 1/k of each weight and of the GQA KV
heads (a copy of one KV head when there are fewer KV heads than k), while MLA's latent cache is replicated on
every TP rank, as vLLM and SGLang do without data-parallel attention. A remote read is modelled as a copy
into the reader (it draws the reader's HBM cap too, a small over-count next to the NVLink or PCIe limit), made
by the decode kernel's own loads: an SM-driven copy (`mechanism="sm"`, the profile's fitted SM rates), which
queues on no copy engine, unlike a cudaMemcpy. Tensor parallelism's all-reduces (two per layer) are not
modelled: over NVLink they are a small share of a step, but an engine whose TP group spans nodes is predicted as
fast as one inside a node, which it is not (its all-reduces cross the NICs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import simpy

from fabricsim.hwmodels.specs import GPUSpec
from fabricsim.simcore.simulation import Simulation

from .counts import check_count
from .errors import WorkloadError
from .models import ModelConfig, dtype_bytes
from .requests import MAX_TOKENS


@dataclass(frozen=True)
class DecodeBatch:
    """What one engine decodes in a step: `batch` sequences with `context` cached tokens each (mean)."""

    batch: int = 64
    context: int = 4096
    kv_dtype: str = "bf16"

    def __post_init__(self) -> None:
        # Whole floats (64.0) are kept as ints: batch and context size arrays and go into integer arithmetic.
        object.__setattr__(self, "batch", check_count(self.batch, "decode batch: batch"))
        object.__setattr__(self, "context", check_count(self.context, "decode batch: context", lo=0))
        # A typo such as an extra row of zeros is refused here, not after a sync has been simulated with a
        # KV cache of 1e29 GiB (or an overflow when the product no longer fits a float).
        if self.batch * self.context > MAX_TOKENS:
            raise WorkloadError("decode batch: batch x context is beyond 2^53 cached tokens; check the sizes")
        dtype_bytes(self.kv_dtype)


@dataclass(frozen=True)
class DecodeWork:
    """Per-GPU work of one decode step of a TP-`tp` engine."""

    flops: float
    weight_bytes: float
    kv_bytes: float
    tp: int


@dataclass(frozen=True)
class DecodeStepCost:
    """A decode step's time and which roofline term set it ('compute', 'hbm' or 'remote')."""

    work: DecodeWork
    compute_s: float
    local_s: float
    remote_s: float
    overhead_s: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.local_s, self.remote_s) + self.overhead_s

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute_s, "hbm": self.local_s, "remote": self.remote_s}
        return max(terms, key=terms.__getitem__)


def decode_work(model: ModelConfig, batch: DecodeBatch, tp: int = 1) -> DecodeWork:
    """Bytes and FLOPs one GPU of a TP-`tp` engine handles in one decode step."""
    if tp < 1:
        raise WorkloadError(f"TP degree must be >= 1, got {tp}")
    wb = dtype_bytes(model.dtype)
    embed = model.vocab_size * model.hidden_size
    params_read = model.param_count() - embed * (0 if model.tie_embeddings else 1)
    if model.is_moe:
        idle = model.num_experts - model.expected_active_experts(batch.batch)
        params_read -= model.moe_layers * idle * model.expert_params
    tokens_kv = batch.batch * batch.context * model.kv_bytes_per_token(batch.kv_dtype)
    kv = tokens_kv if model.is_mla else tokens_kv / min(tp, model.num_kv_heads)
    flops = batch.batch * (2.0 * model.active_param_count() + model.attention_flops_per_token(batch.context))
    return DecodeWork(flops=flops / tp, weight_bytes=params_read * wb / tp, kv_bytes=kv, tp=tp)


def step_cost(model: ModelConfig, batch: DecodeBatch, gpu: GPUSpec, *, tp: int = 1,
              weight_read_Bps: float | None = None, kv_read_Bps: float | None = None,
              compute_dtype: str = "bf16", overhead_s: float = 0.0) -> DecodeStepCost:
    """Roofline time of one decode step on one GPU of the engine.

    `weight_read_Bps` / `kv_read_Bps`: bandwidth of the path the weights / KV are read over when they are not
    in local HBM (None = local). Remote reads run concurrently with local ones; each source is its own term.
    `overhead_s`: per-step launch and scheduling time (0 = a pure roofline; CUDA-graph decode pays ~0.1-1 ms).
    """
    work = decode_work(model, batch, tp)
    local = remote = 0.0
    for nbytes, Bps in ((work.weight_bytes, weight_read_Bps), (work.kv_bytes, kv_read_Bps)):
        if Bps is None:
            local += nbytes
        elif Bps > 0:
            remote += nbytes / Bps
        else:
            raise WorkloadError(f"read bandwidth must be > 0, got {Bps}")
    return DecodeStepCost(work, work.flops / gpu.flops_per_s(compute_dtype), local / gpu.hbm_Bps, remote,
                          overhead_s)




def schedule_decode_step(sim: Simulation, gpu: str, model: ModelConfig, batch: DecodeBatch, *, tp: int = 1,
                         weights_at: str | Sequence[tuple[str, float]] | None = None, kv_at: str | None = None,
                         after: Iterable[str | simpy.Event] = (), id: str | None = None,
                         compute_dtype: str = "bf16") -> simpy.Event:
    """Issue one decode step of `gpu` on a `Simulation`; returns an event that fires when it ends.

    Local bytes and FLOPs become one roofline task; weights at `weights_at` and KV at `kv_at` (endpoints other
    than `gpu`) become transfers to `gpu`, started together, so their links and HBM are shared with whatever
    else runs (e.g. a weight sync). `weights_at` may also split the weights over several places, as
    [(endpoint, share of the weight bytes), ...] (a zero-copy pool read from the trainer GPUs holding them).
    """
    return sim.env.all_of(decode_step_items(sim, gpu, model, batch, tp=tp, weights_at=weights_at, kv_at=kv_at,
                                            after=after, id=id, compute_dtype=compute_dtype))


def decode_step_items(sim: Simulation, gpu: str, model: ModelConfig, batch: DecodeBatch, *, tp: int = 1,
                      weights_at: str | Sequence[tuple[str, float]] | None = None, kv_at: str | None = None,
                      after: Iterable[str | simpy.Event] = (), id: str | None = None,
                      compute_dtype: str = "bf16") -> list[simpy.Event]:
    """The items of `schedule_decode_step` (its task and transfers), not joined: a caller that declares all of its
    work (to run on the compiled loop) joins them itself, or reads their records after the run."""
    work = decode_work(model, batch, tp)
    topo = sim.topology
    here = topo.resolve(gpu)
    name = id or f"decode.{here}.{sim.now:.9f}"
    after = tuple(after)
    weight_parts = [(weights_at, 1.0)] if weights_at is None or isinstance(weights_at, str) else list(weights_at)
    parts = [("weights", work.weight_bytes * share, at) for at, share in weight_parts]
    local = 0.0
    events = []
    for n, (what, nbytes, at) in enumerate([*parts, ("kv", work.kv_bytes, kv_at)]):
        if at is None or topo.resolve(at) == here:
            local += nbytes
        elif nbytes > 0:
            rid = f"{name}.{what}" if len(parts) == 1 or what == "kv" else f"{name}.{what}{n}"
            events.append(sim.transfer(rid, at, here, nbytes, after=after, tag=f"decode-{what}-remote",
                                       mechanism="sm"))
    events.append(sim.task(f"{name}.compute", here, flops=work.flops, hbm_bytes=local, dtype=compute_dtype,
                           after=after, tag="decode"))
    return events
