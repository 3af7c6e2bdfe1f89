"""The serving loop: requests in, tokens out, on a `Simulation`, with KV placement decided by a policy.

Each *instance* (one model replica on `tp` GPUs) runs continuous batching: at every step it admits queued
requests while the KV budget allows (swapped-out sequences first, then FIFO), fills a token budget with one
token per decoding sequence plus prefill chunks (chunked prefill), checks that the step's KV growth fits
(preempting the latest-admitted sequences by swap to host or by recompute if not), and issues the step:

- compute: one roofline task per GPU and layer group (FLOPs and HBM bytes: weights via
  `decode.decode_work`, attention FLOPs, the KV the policy keeps in HBM), so copies into the same HBM slow it;
- host fetches (the policy's): one transfer per GPU and layer group, `prefetch_depth` groups ahead of compute;
- write-backs and pushes (KV to host, or to a decode instance): one transfer per GPU and layer group after it
  computes; tensor parallelism adds a ring all-reduce per layer group on the GPUs' NVLink.

Moves use a *mechanism*: `ce-per-page` (one copy-engine copy per page, each paying the path latency plus a
launch, and the calibrated size-efficiency of a page-sized copy), `ce-batched` (one launch for all pages of
a group, still page-sized DMA descriptors) or `sm-gather` (a kernel whose SMs read the pages: no per-page
cost, rate `gather_sms x gather_Bps_per_sm`, and the overlapping compute loses those SMs).

Aggregation keeps runs fast without changing answers: work is per layer group and per GPU, not per page or
per layer; and while a batch only decodes and nothing can change it, consecutive decode steps are merged into
one run (cut where a sequence finishes, memory would overflow, an admissible request arrives, or the roofline
bound changes side), which is exact because those steps' work is linear in the step index (with TP, the
run's end is found with the ring all-reduce at its lone-flow rate, exact when the ring's hops share no link).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import simpy

from fabricsim.errors import TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.endpoints import MAX_ENDPOINTS
from fabricsim.hwmodels.intervals import LEVEL, attach_corner_intervals, corner_runs
from fabricsim.hwmodels.topology import Topology, nearest_host, path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.simcore.collectives import fitted
from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.records import Result
from fabricsim.simcore.units import check_bytes, check_positive, check_seconds, real_number

from .counts import check_count
from .decode import DecodeBatch, decode_work
from .errors import InfeasibleError, WorkloadError
from .kvpolicies import KVPolicy, PolicyError, Seq, SplitsRoles, StepItem, StepWork, make_policy
from .kvsize import KVConfigError, KVLayout
from .metrics_out import ReportsMetrics
from .models import ModelConfig, dtype_bytes
from .models import get as get_model
from .requests import Request, check_requests

MECHANISMS = ("ce-batched", "ce-per-page", "sm-gather")
PREEMPTION_MODES = ("recompute", "swap")
GiB = 1 << 30


class ServingError(WorkloadError):
    """A serving configuration that is malformed (unknown mechanism, bad numbers, too few GPUs)."""


@dataclass(frozen=True)
class ServingConfig:
    """One serving deployment. Sizes in bytes and per GPU unless said otherwise.

    kv_budget_bytes: KV memory per GPU; None = gpu_memory_utilization x HBM - weights - activation reserve.
    token_budget: tokens per step (decode tokens + prefill chunk), as in chunked prefill (Sarathi, vLLM).
    gpus: which GPUs the instances use, in order (default: the topology's first tp x instances GPUs).
    instances: how many serve, each on its own tp GPUs; None (the default) = not said: a policy that splits roles
    (pd-disaggregation) sets the count from its own parameters, any other serves 1. A count that is said is
    checked against a split's like any other: 1 with a 1 + 1 split is refused, as 3 with a 3 + 5 one is (the
    default was 1, which could not be told from a 1 that was asked for, so a split took either silently).
    layer_groups: the groups of layers a step's KV moves are issued in (one transfer per GPU and group), at most
    the model's layers (checked when serving, where the model is known: 1000 groups of a 32-layer model were
    served as 32 without a word).
    allreduce_latency_s: fixed cost of one tensor-parallel all-reduce call where the topology has no fitted
    `all_reduce` (a calibrated machine's fitted fixed cost and bus bandwidth replace it: simcore.collectives).
    """

    model: str | ModelConfig = "Llama-3-8B"
    tp: int = 1
    instances: int | None = None
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    compute_dtype: str = "bf16"
    page_tokens: int = 16
    max_batch_seqs: int = 256
    token_budget: int = 2048
    kv_budget_bytes: float | None = None
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2 * GiB
    preemption: str = "recompute"
    admission_watermark: float = 0.01
    mechanism: str = "ce-batched"
    layer_groups: int = 4
    copy_launch_s: float = 2e-6
    gather_sms: int = 16
    gather_Bps_per_sm: float = 4e9
    step_overhead_s: float = 0.0
    allreduce_latency_s: float = 8e-6
    coalesce: bool = True
    gpus: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ServingError(f"unknown transfer mechanism '{self.mechanism}' (known: {', '.join(MECHANISMS)})")
        if self.preemption not in PREEMPTION_MODES:
            raise ServingError(f"unknown preemption mode '{self.preemption}' (known: {', '.join(PREEMPTION_MODES)})")
        # Counts slice GPU lists and size arrays: a whole float (512.0) is kept as the int it names.
        object.__setattr__(self, "page_tokens",
                           check_count(self.page_tokens, "page_tokens (the KV page size)", error=KVConfigError))
        for what in ("tp", "instances", "max_batch_seqs", "token_budget", "layer_groups", "gather_sms"):
            if what != "instances" or self.instances is not None:  # (None: not said, see the docstring)
                object.__setattr__(self, what, check_count(getattr(self, what), what, error=ServingError))
        if self.tp * (self.instances or 1) > MAX_ENDPOINTS:  # one GPU each at least, and no GPU list names more
            raise ServingError(f"tp x instances is more than {MAX_ENDPOINTS:,} GPUs; check the numbers")
        _set_checked(self, "admission_watermark", real_number, ServingError)
        _set_checked(self, "gpu_memory_utilization", real_number, ServingError)
        w, u = float(self.admission_watermark), float(self.gpu_memory_utilization)
        if not 0 <= w < 1:  # NaN fails the comparison too
            raise ServingError(f"admission_watermark must be in [0, 1), got {w!r}")
        if not 0 < u <= 1:
            raise ServingError(f"gpu_memory_utilization must be in (0, 1], got {u!r}")
        object.__setattr__(self, "admission_watermark", w)
        object.__setattr__(self, "gpu_memory_utilization", u)
        # The API takes what a file or the CLI would refuse unless checked here: NaN or infinity in a cost or a
        # size runs to a NaN result or a hang, not an error. A budget of 0 bytes holds no page, so it is refused.
        if self.kv_budget_bytes is not None:
            _set_checked(self, "kv_budget_bytes", check_bytes, KVConfigError, whole=False)
        _set_checked(self, "activation_reserve_bytes", check_bytes, ServingError, allow_zero=True, whole=False)
        for what in ("copy_launch_s", "step_overhead_s", "allreduce_latency_s"):
            _set_checked(self, what, check_seconds, ServingError)
        _set_checked(self, "gather_Bps_per_sm", check_positive, ServingError)
        self._check_kinds()

    def _check_kinds(self) -> None:
        """The fields that are names, flags and lists, checked for their kind here, at the API boundary: past
        it a model of 42 or gpus=3.5 fails deep in the run as an AttributeError or TypeError traceback, and a
        coalesce of "no" would silently mean yes."""
        if not isinstance(self.model, str | ModelConfig):
            raise ServingError(f"model must be a preset name or a ModelConfig, got {self.model!r}")
        for what in ("weight_dtype", "kv_dtype", "compute_dtype"):
            if not isinstance(getattr(self, what), str):
                raise ServingError(f"{what} must be a dtype name such as 'bf16', got {getattr(self, what)!r}")
        # compute_dtype's names are the GPU's (its peak FLOP/s table), known only once the topology is.
        dtype_bytes(self.kv_dtype, "kv_dtype")
        dtype_bytes(self.weight_dtype, "weight_dtype")
        if not isinstance(self.coalesce, bool | np.bool_):
            raise ServingError(f"coalesce must be True or False, got {self.coalesce!r}")
        object.__setattr__(self, "coalesce", bool(self.coalesce))
        if self.gpus is not None:
            object.__setattr__(self, "gpus", _gpu_names(self.gpus))

    def model_config(self) -> ModelConfig:
        if isinstance(self.model, ModelConfig):
            return self.model.with_dtype(self.weight_dtype)
        return get_model(self.model, dtype=self.weight_dtype)


def _gpu_names(gpus: object) -> tuple[str, ...]:
    """`gpus` as a tuple of GPU names. A lone string is refused, not read as one name per character, and so is
    anything that is not a list of strings; whether each name is a GPU of the topology is checked when the
    serving system is built on one."""
    if isinstance(gpus, str | bytes) or not isinstance(gpus, Iterable):
        raise ServingError(f"gpus must be a list of GPU names such as ('gpu0', 'gpu1'), got {gpus!r}")
    names = tuple(gpus)
    for g in names:
        if not isinstance(g, str):
            raise ServingError(f"gpus must be a list of GPU names such as ('gpu0', 'gpu1'), got {g!r} in it")
    return tuple(str(g) for g in names)


def _set_checked(cfg: ServingConfig, what: str, check: Callable[..., float], error: type[WorkloadError],
                 **options: Any) -> None:
    """Check a field with the `simcore.units` rule for its kind (the one scenario files go by) and keep the value it
    returns; its one-line refusal becomes this module's error type."""
    try:
        object.__setattr__(cfg, what, check(getattr(cfg, what), what, **options))
    except ScenarioError as exc:
        raise error(str(exc)) from None


class Instance:
    """One model replica on `tp` GPUs, running continuous batching; `role` is colocated, prefill or decode."""

    def __init__(self, system: ServingSystem, idx: int, gpus: Sequence[str], policy: KVPolicy, role: str) -> None:
        self.system, self.idx, self.role = system, idx, role
        self.sim: Simulation = system.sim
        self.cfg: ServingConfig = system.cfg
        self.model = system.model
        self.gpus = list(gpus)
        self.hosts = [nearest_host(self.sim.topology, g) for g in self.gpus]
        self.layout = KVLayout(self.model, self.cfg.kv_dtype, self.cfg.page_tokens, self.cfg.tp)
        spec = self.sim.topology.gpu(self.gpus[0])
        self.gpu_spec = spec
        try:
            self.peak_flops = spec.flops_per_s(self.cfg.compute_dtype)
        except TopologyError as exc:  # the GPU's table knows the dtypes; the line should name the option too
            raise ServingError(f"compute_dtype: {exc}") from None
        self.hbm_Bps = spec.hbm_Bps
        self.weight_bytes_per_gpu = self.model.weight_bytes() / self.cfg.tp
        if self.cfg.kv_budget_bytes is not None:
            budget = float(self.cfg.kv_budget_bytes)
        else:
            budget = (spec.hbm_bytes * self.cfg.gpu_memory_utilization - self.weight_bytes_per_gpu
                      - self.cfg.activation_reserve_bytes)
            if budget <= 0:
                raise InfeasibleError(
                    f"{self.model.name} weights ({self.weight_bytes_per_gpu / GiB:.1f} GiB per GPU at "
                    f"tp={self.cfg.tp}) "
                    f"leave no KV memory on a {spec.model} ({spec.hbm_bytes / GiB:.0f} GiB)")
        self.layout.budget_pages(budget)
        if self.cfg.tp > 1:  # the TP ring's hop: GPU i -> GPU i+1
            topo = self.sim.topology
            self.ring_latency_s = topo.path(self.gpus[0], self.gpus[1]).latency_s
            self.ring_Bps = path_bandwidth_Bps(topo, self.gpus[0], self.gpus[1])
            self.allreduce = fitted(topo, "all_reduce")
        if budget + self.weight_bytes_per_gpu > spec.hbm_bytes:
            raise InfeasibleError(f"KV budget {budget / GiB:.1f} GiB + weights "
                                  f"{self.weight_bytes_per_gpu / GiB:.1f} GiB per GPU exceed the "
                                  f"{spec.hbm_bytes / GiB:.0f} GiB of a {spec.model}")
        self.kv_budget_total = budget
        self.policy = policy
        policy.bind(self)
        self.budget = budget - policy.reserved_bytes()
        if self.budget < self.layout.page_bytes * self.model.num_layers:
            raise KVConfigError(f"policy '{policy.name}' reserves {policy.reserved_bytes() / GiB:.2f} GiB of a "
                                f"{budget / GiB:.2f} GiB KV budget, leaving less than one page")
        self.pools = [self.sim.memory(g) for g in self.gpus]
        for pool in self.pools:
            pool.alloc(int(self.weight_bytes_per_gpu), f"weights.i{idx}")
        self.waiting: deque[Seq] = deque()
        self.swapped: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.handoff: list[Seq] = []  # prefill role: prefilled, KV still here while it ships out
        self.arrivals: list[float] = []
        self.next_arrival = 0
        self._wake = self.sim.env.event()
        self._order = 0
        self.steps = 0
        self.kv_read_bytes = 0.0
        self.kv_alloc: int | None = None
        self.host_alloc: int | None = None
        self.host_pools = [self.sim.memory(h) for h in self.hosts]
        self._base: dict[int, Any] = {}
        self.max_running = 0
        self.decode_s = 0.0  # time in steps that only decode (no prefill chunk), and the tokens they made
        self.decode_tokens = 0

    # ---- queue ------------------------------------------------------------------------------------------
    def submit(self, seq: Seq) -> None:
        seq.instance = self
        if seq.prefill_target == 0:
            seq.prefill_target = seq.req.prompt_tokens
        need = self.policy.hbm_bytes(seq, seq.max_kv_tokens)
        if need > self.budget:
            raise InfeasibleError(
                f"request {seq.req.id} needs {need / GiB:.2f} GiB of KV per GPU at full length "
                f"({seq.max_kv_tokens} tokens) but the KV budget is {self.budget / GiB:.2f} GiB")
        if seq.prefilling:
            self.waiting.append(seq)
        else:
            self.swapped.append(seq)  # pd decode: arrives with its KV, admitted like a swapped-out sequence
        self.notify()

    def notify(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def used_bytes(self, extra: dict[int, int] | None = None) -> float:
        """Per-GPU KV bytes of running (and handed-off) sequences; `extra` adds tokens to some sequences."""
        extra = extra or {}
        # A sequence still prefilling holds pages for its whole prompt from admission on (as vLLM allocates).
        return (sum(self.policy.hbm_bytes(s, max(s.kv_tokens + extra.get(id(s), 0),
                                                 s.prefill_target if s.prefilling else 0)) for s in self.running)
                + sum(self.policy.hbm_bytes(s, s.kv_tokens) for s in self.handoff) + self.policy.shared_bytes())

    # ---- the loop ---------------------------------------------------------------------------------------
    def loop(self) -> Generator:
        while True:
            yield from self._admit()
            items = self._plan()
            if not items:
                if self.system.outstanding == 0:
                    return
                self._wake = self.sim.env.event()
                yield self._wake
                continue
            items = yield from self._fit_memory(items)
            if items:
                yield from self._step(items)

    def _admit(self) -> Generator:
        while len(self.running) < self.cfg.max_batch_seqs and (self.swapped or self.waiting):
            from_swap = bool(self.swapped)
            seq = self.swapped[0] if from_swap else self.waiting[0]
            target = seq.kv_tokens if from_swap else seq.prefill_target
            # A watermark of free memory keeps a just-admitted sequence from being preempted at the next step.
            limit = self.budget * (1 - self.cfg.admission_watermark)
            if self.running and self.used_bytes() + self.policy.hbm_bytes(seq, target) > limit:
                return
            (self.swapped if from_swap else self.waiting).popleft()
            self._order += 1
            seq.order = self._order
            if math.isnan(seq.admitted_s):
                seq.admitted_s = self.sim.now
            self.running.append(seq)
            self.max_running = max(self.max_running, len(self.running))
            if from_swap:
                if seq.swapped_bytes > 0:
                    yield self.move_all("h2d", seq.swapped_bytes, self.layout.page_copies(seq.kv_tokens), "kv-swap-in")
                    seq.swapped_bytes = 0.0
            else:
                skip, fetch = self.policy.on_admit(seq)
                if skip:
                    seq.prefilled = seq.kv_tokens = skip
                if fetch > 0:
                    yield self.move_all("h2d", fetch, fetch / self.layout.page_bytes, "kv-prefix-fetch")
            self.record_memory()

    def _plan(self) -> list[StepItem]:
        budget = self.cfg.token_budget
        items: list[StepItem] = []
        if self.role != "prefill":
            for s in self.running:
                if not s.prefilling and budget > 0:
                    items.append(StepItem(s, s.kv_tokens, 1))
                    budget -= 1
        for s in self.running:  # decode instances prefill too, but only sequences preempted by recompute
            if s.prefilling and budget > 0:
                c = min(s.prefill_target - s.prefilled, budget)
                items.append(StepItem(s, s.kv_tokens, c))
                budget -= c
        return items

    def _fit_memory(self, items: list[StepItem]) -> Generator[Any, Any, list[StepItem]]:
        """Preempt the latest-admitted sequences until this step's KV growth fits the budget."""
        while True:
            grow = {id(it.seq): it.new for it in items}
            if self.used_bytes(grow) <= self.budget:
                return items
            if len(self.running) <= 1:
                raise InfeasibleError(f"one sequence alone overflows the KV budget of {self.budget / GiB:.2f} GiB")
            victim = max(self.running, key=lambda s: s.order)
            yield from self._preempt(victim)
            items = [it for it in items if it.seq is not victim]

    def _preempt(self, seq: Seq) -> Generator:
        self.running.remove(seq)
        seq.preemptions += 1
        self.system.preemptions += 1
        if self.cfg.preemption == "swap" and seq.kv_tokens > 0:
            nbytes = self.policy.hbm_bytes(seq, seq.kv_tokens)
            seq.swapped_bytes = nbytes
            self.record_memory()
            yield self.move_all("d2h", nbytes, self.layout.page_copies(seq.kv_tokens), "kv-swap-out")
            self.swapped.appendleft(seq)
            self.record_memory()
        else:
            self.policy.release(seq)
            if not seq.prefilling:
                # Recompute: prefill the prompt and every generated token again; the prefill's last position
                # yields the next token, as in vLLM's recompute preemption.
                seq.prefill_target = seq.req.prompt_tokens + seq.generated
            seq.prefilled = seq.kv_tokens = 0
            seq.shared_tokens = seq.compressed_src = 0
            seq.shared_key = None
            self.waiting.appendleft(seq)
            self.record_memory()

    # ---- one step ---------------------------------------------------------------------------------------
    def _work(self, items: list[StepItem], offset: float = 0.0) -> StepWork:
        """Per-GPU work of a step in which every item's context is `offset` tokens further on."""
        tp = self.cfg.tp
        tokens = sum(it.new for it in items)
        base = self._base.get(tokens)
        if base is None:  # weights read (MoE: experts the tokens touch) and dense FLOPs depend on the count only
            base = decode_work(self.model, DecodeBatch(batch=max(1, tokens), context=0, kv_dtype=self.cfg.kv_dtype),
                               tp)
            self._base[tokens] = base
        attn = sum(it.new * self.model.attention_flops_per_token(it.ctx + offset + (it.new + 1) / 2)
                   for it in items)
        work = StepWork(flops=base.flops + attn / tp, hbm_bytes=base.weight_bytes)
        for it in items:
            self.policy.add_seq_work(work, it.seq, it.ctx + offset, it.new)
        self.policy.add_batch_work(work, [StepItem(it.seq, it.ctx + offset, it.new) for it in items])
        return work

    def _ring_bytes(self, tokens: float, layers: float) -> float:
        """Bytes each GPU sends in the ring all-reduces (two per layer) of `tokens` tokens' activations (bf16)."""
        tp = self.cfg.tp
        return 2.0 * (tp - 1) / tp * tokens * self.model.hidden_size * 2.0 * 2 * layers

    def _allreduce_call(self, tokens: float) -> tuple[float, float | None]:
        """(fixed cost, rate cap of a ring transfer) of one TP all-reduce of `tokens` tokens' activations: the
        machine's fitted `all_reduce` where it has one, else `allreduce_latency_s` and the links alone."""
        if self.allreduce is None:
            return self.cfg.allreduce_latency_s, None
        # one ring phase's transfer (as validate's ring schedule has it): (tp-1)/tp of the activations; a layer
        # makes two calls of two phases each, which is how `_ring_bytes` counts
        call_ring_bytes = self._ring_bytes(tokens, 1) / 4
        return self.allreduce.fixed_s, self.allreduce.rate_cap(call_ring_bytes)

    def _fixed_step_s(self, tokens: int) -> float:
        """Per-step time outside the roofline task: overhead, and with TP the all-reduce ring after it."""
        t = self.cfg.step_overhead_s
        if self.cfg.tp > 1:
            fixed, cap = self._allreduce_call(tokens)
            rate = self.ring_Bps if cap is None else min(self.ring_Bps, cap)
            t += (2 * self.model.num_layers * fixed + self.ring_latency_s
                  + self._ring_bytes(tokens, self.model.num_layers) / rate)
        return t

    def _run_length(self, items: list[StepItem], w0: StepWork, w1: StepWork) -> int:
        """How many decode steps of this unchanged batch can run as one (see module docstring)."""
        k = min(it.seq.remaining_output for it in items)
        lo, hi = 1, k
        while lo < hi:  # memory: largest k whose KV growth still fits
            mid = (lo + hi + 1) // 2
            if self.used_bytes({id(it.seq): mid for it in items}) <= self.budget:
                lo = mid
            else:
                hi = mid - 1
        k = lo
        arrival = None
        if len(self.running) < self.cfg.max_batch_seqs and not self.waiting and not self.swapped:
            if self.role == "decode":  # new work comes through idle prefill instances: after the next arrival
                arrival = self.system.next_arrival_s()
            elif self.next_arrival < len(self.arrivals):
                arrival = self.arrivals[self.next_arrival]
        # Step j takes max(c0 + j dc, m0 + j dm) + e0 + j de + fixed: linear on each side of the roofline.
        c0, dc = w0.flops / self.peak_flops, (w1.flops - w0.flops) / self.peak_flops
        m0, dm = w0.hbm_bytes / self.hbm_Bps, (w1.hbm_bytes - w0.hbm_bytes) / self.hbm_Bps
        e0, de = w0.extra_s + self._fixed_step_s(len(items)), w1.extra_s - w0.extra_s
        compute_bound = c0 >= m0
        if k > 1 and ((c0 + (k - 1) * dc >= m0 + (k - 1) * dm) != compute_bound):
            lo, hi = 1, k - 1  # first step on the other side of the roofline: the run ends before it
            while lo < hi:
                mid = (lo + hi) // 2
                if (c0 + mid * dc >= m0 + mid * dm) != compute_bound:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
        if arrival is None:
            return k
        a, b = (c0, dc) if compute_bound else (m0, dm)

        def elapsed(n: int) -> float:
            return n * (a + e0) + n * (n - 1) / 2 * (b + de)

        wait = arrival - self.sim.now
        if elapsed(k) < wait:
            return k
        lo, hi = 1, k  # fewest steps that reach the arrival
        while lo < hi:
            mid = (lo + hi) // 2
            if elapsed(mid) >= wait:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _step(self, items: list[StepItem]) -> Generator:
        pure_decode = all(it.new == 1 and not it.seq.prefilling for it in items)
        k = 1
        work = self._work(items)
        if (pure_decode and self.cfg.coalesce and self.policy.coalescible
                and (self.role == "colocated" or (self.role == "decode" and self.system.prefill_idle()))):
            w1 = self._work(items, 1.0)
            k = self._run_length(items, work, w1)
            if k > 1:
                work = _run_sum(work, w1, k)
        self.steps += k
        self.kv_read_bytes += work.kv_read_bytes * self.cfg.tp
        done, pushed = self._issue(work, items)
        if pushed is not None and self.role == "prefill":
            for it in items:  # its KV has landed when every step's push it took part in has, not the last alone
                it.seq.pushes.append(pushed)
        t0 = self.sim.now
        yield done
        now = self.sim.now
        if pure_decode:
            self.decode_s += now - t0
            self.decode_tokens += k * len(items)
        finished_prefill = []
        for it in items:
            s = it.seq
            if s.prefilling:
                s.prefilled += it.new
                s.kv_tokens += it.new
                if not s.prefilling:
                    s.generated += 1
                    finished_prefill.append(s)
                    if math.isnan(s.first_token_s):
                        s.first_token_s = now
            else:
                s.kv_tokens += k
                s.generated += k
        self.policy.after_step(items)  # before finishing, so a policy sees what the step made (a cached prefix)
        for it in items:
            if it.seq.generated >= it.seq.req.output_tokens:
                self._finish(it.seq)
        if self.role == "prefill":
            for s in finished_prefill:
                if s in self.running:
                    self.running.remove(s)
                    self.handoff.append(s)
                    self.sim.process(self._hand_off(s))
        self.record_memory()

    def _finish(self, s: Seq) -> None:
        s.finish_s = self.sim.now
        if s in self.running:
            self.running.remove(s)
        self.policy.release(s)
        self.system.departed(s)

    def _hand_off(self, s: Seq) -> Generator:
        if s.pushes:  # an earlier chunk's push may land after the last one's (it may have more bytes left)
            yield self.sim.env.all_of(s.pushes)
            s.pushes.clear()
        s.kv_ready_s = self.sim.now
        self.handoff.remove(s)
        self.record_memory()
        self.notify()
        s.decode_instance.submit(s)

    # ---- issuing work on the simulation ----------------------------------------------------------------
    def _issue(self, w: StepWork, items: list[StepItem]) -> tuple[simpy.Event, simpy.Event | None]:
        """Schedule one step's (or run's) tasks and transfers; returns (step done, pushes done)."""
        sim, cfg = self.sim, self.cfg
        tp, steps = cfg.tp, w.steps
        moving = w.fetch_bytes > 0 or w.writeback_bytes > 0 or bool(w.pushes)
        G = cfg.layer_groups if moving else 1  # at most the model's layers (`ServingSystem` refuses more)
        depth = self.policy.prefetch_depth
        flops = w.flops
        if cfg.mechanism == "sm-gather" and w.fetch_bytes > 0:
            flops *= self.gpu_spec.sms / max(1, self.gpu_spec.sms - cfg.gather_sms)
        tokens = sum(it.new for it in items) * steps
        layers = self.model.num_layers / G
        start: list[simpy.Event] = []
        if cfg.step_overhead_s > 0:
            start = [sim.delay(None, cfg.step_overhead_s * steps, tag="step-overhead")]
        prev: list[list[simpy.Event]] = [list(start) for _ in range(tp)]
        computes: list[list[simpy.Event]] = [[] for _ in range(tp)]
        ends: list[simpy.Event] = []
        pushes: list[simpy.Event] = []
        for g in range(G):
            for i, gpu in enumerate(self.gpus):
                deps = list(prev[i])
                if w.fetch_bytes > 0:
                    j = g - depth - 1
                    fdeps = [computes[i][j]] if j >= 0 else list(start)
                    deps.append(self.move(self.hosts[i], gpu, w.fetch_bytes / G, w.fetch_copies / G, fdeps,
                                          "kv-fetch"))
                c = sim.task(None, gpu, flops=flops / G, hbm_bytes=w.hbm_bytes / G, dtype=cfg.compute_dtype,
                             after=deps, tag=f"{self.role}-step")
                if w.extra_s > 0:
                    c = sim.delay(None, w.extra_s / G, after=[c], tag="kv-extra", where=gpu)
                computes[i].append(c)
                if w.writeback_bytes > 0:
                    ends.append(self.move(gpu, self.hosts[i], w.writeback_bytes / G, w.writeback_copies / G, [c],
                                          "kv-writeback"))
                for dst, nbytes in w.pushes.items():
                    pushes.append(self.move(gpu, dst.gpus[i % len(dst.gpus)], nbytes / G,
                                            nbytes / G / self.layout.page_bytes, [c], "kv-push"))
            if tp > 1:
                # A merged run of `steps` decode steps pays every step's all-reduce latencies and path latency.
                call_fixed, cap = self._allreduce_call(tokens / steps)
                fixed = 2 * layers * call_fixed * steps + (steps - 1) * self.ring_latency_s
                ring = [sim.transfer(None, self.gpus[i], self.gpus[(i + 1) % tp],
                                     self._ring_bytes(tokens / steps, layers) * steps, rate_cap_Bps=cap,
                                     after=[computes[i][-1]], fixed_cost_s=fixed, tag="tp-allreduce")
                        for i in range(tp)]
                prev = [ring] * tp
            else:
                prev = [[computes[i][-1]] for i in range(tp)]
        ends += [e for p in prev for e in p]
        pushed = sim.env.all_of(pushes) if pushes else None
        if self.role != "prefill" and pushed is not None:
            ends.append(pushed)
        return sim.env.all_of(ends), pushed

    def move(self, src: str, dst: str, nbytes: float, copies: float, after: Iterable[simpy.Event],
             tag: str) -> simpy.Event:
        """One aggregated KV move of `copies` page copies costed by the configured mechanism."""
        sim, cfg = self.sim, self.cfg
        if nbytes <= 0:
            return sim.delay(None, 0.0, after=list(after), tag=tag)
        topo = sim.topology
        path = topo.path(src, dst, self.layout.page_bytes)
        cap = path.rate_cap_Bps
        owner = dst if topo.kind(topo.resolve(src)) == "host" else src
        engine = f"{topo.resolve(owner)}.ce.{path.path_class}"
        n = max(1.0, float(copies))
        # A calibrated latency was measured around real cudaMemcpyAsync calls, so it already holds the launch.
        pp = topo.path_params.get(path.path_class)
        launch = 0.0 if pp is not None and pp.latency_s is not None else cfg.copy_launch_s
        if cfg.mechanism == "ce-per-page":
            fixed = launch + (n - 1) * (path.latency_s + launch)
        elif cfg.mechanism == "ce-batched":
            fixed = launch
        else:
            gather = cfg.gather_sms * cfg.gather_Bps_per_sm
            cap = gather if cap is None else min(cap, gather)
            fixed, engine = cfg.copy_launch_s, None
        return sim.transfer(None, src, dst, nbytes, after=list(after), rate_cap_Bps=cap, fixed_cost_s=fixed,
                            engine=engine, tag=tag)

    def move_all(self, direction: str, nbytes_per_gpu: float, copies: float, tag: str,
                 after: Iterable[simpy.Event] = ()) -> simpy.Event:
        """The same move on every GPU of the instance, to/from its nearest host ('h2d' or 'd2h')."""
        evs = []
        for gpu, host in zip(self.gpus, self.hosts, strict=True):
            src, dst = (host, gpu) if direction == "h2d" else (gpu, host)
            evs.append(self.move(src, dst, nbytes_per_gpu, copies, after, tag))
        return self.sim.env.all_of(evs)

    @property
    def layer_groups(self) -> int:
        return self.cfg.layer_groups

    def run_background(self, flops: float, hbm_bytes: float, tag: str) -> simpy.Event:
        """A kernel on every GPU of the instance that runs beside the steps (e.g. compression)."""
        evs = [self.sim.task(None, g, flops=flops, hbm_bytes=hbm_bytes, dtype=self.cfg.compute_dtype, tag=tag)
               for g in self.gpus]
        return self.sim.env.all_of(evs)

    def host_bytes(self) -> float:
        """Per-GPU KV bytes this instance keeps in host memory (offloaded, swapped out, evicted prefixes)."""
        return (sum(self.policy.host_bytes(s, s.kv_tokens) for s in self.running)
                + sum(s.swapped_bytes for s in self.swapped) + self.policy.host_shared_bytes())

    def record_memory(self) -> None:
        """Keep the HBM and host-DRAM pools' allocations in step (their timelines are the occupancy record);
        host memory that runs out raises `OutOfMemory` naming the socket."""
        used = int(self.used_bytes() + self.policy.reserved_bytes())
        if used != self.kv_alloc:
            for pool in self.pools:
                if self.kv_alloc is not None:
                    pool.free(f"kv.i{self.idx}")
                pool.alloc(used, f"kv.i{self.idx}")
            self.kv_alloc = used
        host = int(self.host_bytes())
        if host != self.host_alloc:
            for k, pool in enumerate(self.host_pools):
                tag = f"kv.i{self.idx}.g{k}"
                if self.host_alloc is not None:
                    pool.free(tag)
                pool.alloc(host, tag)
            self.host_alloc = host


def _run_sum(w0: StepWork, w1: StepWork, k: int) -> StepWork:
    """Sum of steps 0..k-1 of work linear in the step index: k w0 + k(k-1)/2 (w1 - w0)."""
    tri = k * (k - 1) / 2

    def f(a: float, b: float) -> float:
        return k * a + tri * (b - a)

    return StepWork(flops=f(w0.flops, w1.flops), hbm_bytes=f(w0.hbm_bytes, w1.hbm_bytes),
                    kv_read_bytes=f(w0.kv_read_bytes, w1.kv_read_bytes), extra_s=f(w0.extra_s, w1.extra_s), steps=k)


def roles_said(counts: dict[str, int]) -> str:
    """'3 prefill + 5 decode' for a split's counts, '2' for colocated instances: how messages and headers say them."""
    return f"{sum(counts.values())}" if set(counts) == {"colocated"} else " + ".join(
        f"{n} {role}" for role, n in counts.items())


def role_counts(policy: KVPolicy, name: str, asked: int | None, tp: int, offered: int, topology: str, *,
                asked_as: str = "instances=") -> dict[str, int]:
    """How many instances take each role ({'colocated': n}, or a role-splitting policy's {'prefill': p, 'decode':
    d}), checked against the `offered` GPUs at `tp`: the one rule of the API and `fabricsim serve` (`asked_as`
    spells the count as the caller took it: `instances=` or `--instances `). `asked`: the count given (None:
    none). A policy that splits roles sets the count from its own parameters, so a count that disagrees is
    refused (it was ignored: 3 and 8 gave the same numbers for a 3 + 5 split), and a split that does not fit says
    so in its own terms, not as instances nobody asked for."""
    split = isinstance(policy, SplitsRoles)
    counts = policy.role_counts(asked or 1) if split else {"colocated": 1 if asked is None else asked}
    total = sum(counts.values())
    said = roles_said(counts)
    if split and asked is not None and asked != total:
        raise ServingError(f"{asked_as}{asked} contradicts policy '{name}', whose parameters set {said} = {total} "
                           f"instances (leave {asked_as.strip(' =')} out, or give {total})")
    if tp >= 1 and offered < tp * total:  # (a tp below 1 is ServingConfig's to refuse, in its words)
        if not split:
            raise ServingError(f"{total} instance(s) x tp={tp} need {tp * total} GPUs; topology '{topology}' offers "
                               f"{offered}")
        if all(n == 1 for n in counts.values()):
            raise ServingError(f"policy '{name}' needs at least one {' and one '.join(counts)} instance, so at least "
                               f"{tp * total} GPUs at tp={tp}; topology '{topology}' offers {offered}")
        raise ServingError(f"policy '{name}' runs {said} = {total} instance(s) x tp={tp}, which need {tp * total} "
                           f"GPUs; topology '{topology}' offers {offered}")
    return counts


class ServingSystem:
    """Instances on one topology fed by one request stream; builds, runs and reports."""

    def __init__(self, topology: Topology | str, requests: Sequence[Request], policy: str | KVPolicy = "hbm-only",
                 config: ServingConfig | None = None, *, policy_params: dict[str, Any] | None = None,
                 record_load: bool = True) -> None:
        if config is not None and not isinstance(config, ServingConfig):
            raise ServingError(f"config must be a ServingConfig, got {config!r}")
        if not isinstance(policy, str | KVPolicy):
            raise ServingError(f"policy must be a KV policy name or a KVPolicy, got {policy!r}")
        if policy_params is not None and not isinstance(policy_params, Mapping):
            raise ServingError(f"policy_params must be a mapping of parameter names to values, got {policy_params!r}")
        self.cfg = config or ServingConfig()
        topo = _topology(topology)
        self.sim = Simulation(topo, record_load=record_load)
        self.model = self.cfg.model_config()
        if self.cfg.layer_groups > self.model.num_layers:  # checked here, where the model is known
            raise ServingError(f"layer_groups {self.cfg.layer_groups} is more than the {self.model.num_layers} layers "
                               f"of {self.model.name}: a layer group holds at least one layer")
        try:
            requests = list(requests)  # read once: an iterator checked first would then serve nothing
        except TypeError:
            raise ServingError(f"requests: expected Requests (a list, or any iterable), got {requests!r:.80}") from None
        if not requests:
            raise ServingError("no requests to serve")
        check_requests(requests)  # Requests, each with its own id
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        name = policy if isinstance(policy, str) else policy.name
        if policy_params and not isinstance(policy, str):
            raise ServingError(f"policy_params are for a policy given by name; policy '{name}' is an object already "
                               "built with its parameters")
        self.policy_name = name
        self.policy_params = dict(policy_params or {})
        proto = make_policy(name, **self.policy_params) if isinstance(policy, str) else policy
        gpus = list(self.cfg.gpus) if self.cfg.gpus else topo.gpus()
        for g in gpus:
            topo.gpu(g)
        tp = self.cfg.tp
        split = isinstance(proto, SplitsRoles)
        if not split and (hasattr(proto, "role_counts") or hasattr(proto, "instance_policy")):
            # half of the contract is a mistake, not a colocated policy: say so rather than serve it colocated
            raise ServingError(f"policy '{name}' defines only one of role_counts and instance_policy; a policy that "
                               "splits roles needs both (see kvpolicies.SplitsRoles)")
        # Counted before any per-instance list is built: a typo such as 10^20 instances is one line, not an
        # attempt to allocate them. None, the default count, says nothing against a split's own; any count said does.
        counts = role_counts(proto, name, self.cfg.instances, tp, len(gpus), topo.name)
        roles = [role for role, n in counts.items() for _ in range(n)]
        self.instances: list[Instance] = []
        for i, role in enumerate(roles):
            pol = proto.instance_policy(role) if split else copy.deepcopy(proto)
            self.instances.append(Instance(self, i, gpus[i * tp:(i + 1) * tp], pol, role))
        self.entry = [x for x in self.instances if x.role in ("colocated", "prefill")]
        self.decoders = [x for x in self.instances if x.role == "decode"]
        if any(x.role == "prefill" for x in self.instances) and not self.decoders:
            raise ServingError("disaggregated serving needs at least one decode instance")
        self.seqs = [Seq(r) for r in self.requests]
        for k, s in enumerate(self.seqs):
            inst = self.entry[k % len(self.entry)]
            inst.arrivals.append(s.req.arrival_s)
            if self.decoders:
                s.decode_instance = self.decoders[k % len(self.decoders)]
        self.outstanding = len(self.seqs)
        self.preemptions = 0
        self.in_system: list[tuple[float, int]] = [(0.0, 0)]
        self._n = 0

    def _arrivals(self) -> Generator:
        env = self.sim.env
        for k, s in enumerate(self.seqs):
            if s.req.arrival_s > env.now:
                yield env.timeout(s.req.arrival_s - env.now)
            inst = self.entry[k % len(self.entry)]
            inst.next_arrival += 1
            self._count(+1)
            inst.submit(s)

    def _count(self, d: int) -> None:
        self._n += d
        now = self.sim.now
        if self.in_system[-1][0] == now:
            self.in_system[-1] = (now, self._n)
        else:
            self.in_system.append((now, self._n))

    def next_arrival_s(self) -> float | None:
        """When the next request reaches any entry instance (None when all have arrived)."""
        times = [i.arrivals[i.next_arrival] for i in self.entry if i.next_arrival < len(i.arrivals)]
        return min(times) if times else None

    def prefill_idle(self) -> bool:
        """No prefill instance holds work that could reach a decode instance before the next arrival."""
        return all(not (i.running or i.waiting or i.swapped or i.handoff) for i in self.entry if i.role == "prefill")

    def departed(self, s: Seq) -> None:
        self._count(-1)
        self.outstanding -= 1
        if self.outstanding == 0:
            for inst in self.instances:
                inst.notify()

    def run(self) -> ServingResult:
        self.sim.process(self._arrivals())
        for inst in self.instances:
            self.sim.process(inst.loop())
        result = self.sim.run()
        unfinished = [s.req.id for s in self.seqs if math.isnan(s.finish_s)]
        if unfinished:
            raise ServingError(f"{len(unfinished)} request(s) never finished (first: {unfinished[0]}); "
                               "the configuration deadlocks")
        return ServingResult(self, result)


def _topology(topology: Topology | str) -> Topology:
    """A preset by name, or the `Topology` given; anything else is refused here, not as an AttributeError deep in
    the run."""
    if isinstance(topology, str):
        return presets.get(topology)
    if not isinstance(topology, Topology):
        raise ServingError(f"topology must be a preset name or a Topology, got {topology!r}")
    return topology


def serve(topology: Topology | str, requests: Sequence[Request], policy: str | KVPolicy = "hbm-only",
          config: ServingConfig | None = None, *, policy_params: dict[str, Any] | None = None,
          **overrides: Any) -> ServingResult:
    """Serve `requests` on `topology` with a KV policy (by name, with `policy_params`) and a config.

    Keyword overrides replace config fields: `serve("h100-1", reqs, "host-offload", model="Llama-3-8B")`.
    """
    cfg = config or ServingConfig()
    if overrides:
        unknown = sorted(set(overrides) - set(ServingConfig.__dataclass_fields__))
        if unknown:
            raise ServingError(f"unknown serving option(s) {', '.join(unknown)}")
        cfg = replace(cfg, **overrides)
    return ServingSystem(topology, requests, policy, cfg, policy_params=policy_params).run()


# The serving metrics an interval means something for: times and rates, which move with the hardware's
# parameters (occupancies, byte counts, steps and preemptions do too, but as consequences, not predictions of
# how long something takes).
INTERVAL_METRICS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "response_mean_s", "throughput_tok_s",
                    "decode_tok_s", "makespan_s", "kv_handoff_mean_s", "kv_handoff_frac")
LOAD_METRICS = ("pcie_util", "nvlink_util", "nic_util")  # need the link load, which corner runs do not record


def serve_with_intervals(topology: Topology | str, requests: Sequence[Request], policy: str = "hbm-only",
                         config: ServingConfig | None = None, *, policy_params: dict[str, Any] | None = None,
                         metrics: Callable[[ServingResult], Mapping[str, tuple[float, str]]] | None = None,
                         interval_metrics: Iterable[str] = INTERVAL_METRICS, mirror: bool = False,
                         level: float = LEVEL) -> tuple[ServingResult, dict[str, tuple[Any, ...]]]:
    """`serve(...)` and its metrics, the time metrics with a corner interval (`(value, unit, interval)`, what a
    study returns): the run is repeated on the topology's slow and fast corner (`hwmodels.intervals`), or only
    the slow one with `mirror` (half the extra cost, for the costliest sweeps). `metrics(result)` computes the
    metrics (default: `metrics_with_units`), so a study's derived metrics get their interval from the same
    corner runs. Returns the point's result (for traces) and the metrics. Corner runs record no link load, so
    the utilisation metrics (`LOAD_METRICS`) cannot have an interval."""
    wanted = list(interval_metrics)
    if set(wanted) & set(LOAD_METRICS):
        raise ServingError(f"no interval for {', '.join(sorted(set(wanted) & set(LOAD_METRICS)))}: corner runs "
                           f"record no link load")
    topo = _topology(topology)
    measure = metrics or (lambda r: r.metrics_with_units())
    results: list[ServingResult] = []

    def run(t: Topology) -> Mapping[str, tuple[float, str]]:
        # Corner runs skip recording link load (40-50% of a run's wall time): they only give times.
        res = ServingSystem(t, requests, policy, config, policy_params=policy_params, record_load=t is topo).run()
        if not results:  # the point's: the corners' results are dropped once measured
            results.append(res)
        return measure(res)

    runs = corner_runs(run, topo, level=level, mirror=mirror)
    return results[0], attach_corner_intervals(runs, interval_metrics, level=level,
                                               calibrated=topo.calibration_id is not None, note=topo.calibration_note)


def _percentile(x: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(x, dtype=float), q)) if len(x) else float("nan")


@dataclass
class ServingResult(ReportsMetrics):
    """What a serving run produced: per-request timings, the simulation records and derived metrics."""

    system: ServingSystem
    result: Result
    _util: dict[str, float] | None = field(default=None, repr=False)

    @property
    def seqs(self) -> list[Seq]:
        return self.system.seqs

    @property
    def ttft_s(self) -> np.ndarray:
        return np.array([s.first_token_s - s.req.arrival_s for s in self.seqs])

    @property
    def tpot_s(self) -> np.ndarray:
        return np.array([(s.finish_s - s.first_token_s) / (s.req.output_tokens - 1)
                         for s in self.seqs if s.req.output_tokens > 1])

    @property
    def response_s(self) -> np.ndarray:
        return np.array([s.finish_s - s.req.arrival_s for s in self.seqs])

    @property
    def output_tokens(self) -> int:
        return sum(s.req.output_tokens for s in self.seqs)

    @property
    def span_s(self) -> float:
        return max(s.finish_s for s in self.seqs) - min(s.req.arrival_s for s in self.seqs)

    def link_utilisation(self) -> dict[str, float]:
        """Highest time-averaged utilisation over the links of each kind (pcie, nvlink, net)."""
        if self._util is None:
            topo = self.system.sim.topology
            out = {"pcie": 0.0, "nvlink": 0.0, "net": 0.0}
            for res, u in self.result.mean_utilisation().items():
                if "->" not in res:
                    continue
                a, b = res.split("->")
                kind = topo.graph.edges[a, b]["kind"]
                if kind in out:
                    out[kind] = max(out[kind], u)
            self._util = out
        return self._util

    def hbm_occupancy(self) -> tuple[float, float]:
        """(time-averaged, peak) fraction of HBM capacity in use, averaged over the serving GPUs."""
        end = self.result.makespan_s
        means, peaks = [], []
        for inst in self.system.instances:
            for pool in inst.pools:
                tl = pool.timeline
                area = sum(u * (min(t1, end) - t0) for (t0, u), (t1, _) in zip(tl, [*tl[1:], (end, 0)], strict=True)
                           if t1 > t0)
                means.append(area / end / pool.capacity_bytes if end > 0 else 0.0)
                peaks.append(pool.peak_bytes / pool.capacity_bytes)
        return float(np.mean(means)), float(np.max(peaks))

    def hbm_timeline(self) -> pd.DataFrame:
        """HBM occupancy over time: one row per change, columns t_s, gpu, used_bytes, kv_bytes, capacity_bytes
        (used = weights + KV; a step-wise series, each value holding until the next row of the same GPU)."""
        rows = []
        for inst in self.system.instances:
            for pool in inst.pools:
                for t, used in pool.timeline:
                    rows.append((t, pool.device, used, max(0.0, used - inst.weight_bytes_per_gpu),
                                 pool.capacity_bytes))
        return pd.DataFrame(rows, columns=["t_s", "gpu", "used_bytes", "kv_bytes", "capacity_bytes"])

    def host_kv_peak(self) -> float:
        """Bytes of KV held in host DRAM at peak: each host socket's peak, summed over the sockets used."""
        pools = {id(p): p for i in self.system.instances for p in i.host_pools}.values()
        return float(sum(p.peak_bytes for p in pools))

    def time_in_system(self, t0: float, t1: float) -> float:
        """Time-averaged number of requests in the system over [t0, t1] (from the loop's own counter)."""
        area = 0.0
        series = self.system.in_system
        for (a, n), (b, _) in zip(series, [*series[1:], (math.inf, 0)], strict=True):
            lo, hi = max(a, t0), min(b, t1)
            if hi > lo:
                area += n * (hi - lo)
        return area / (t1 - t0)

    def bytes_moved(self) -> dict[str, float]:
        """Bytes moved by transfers, by tag (kv-fetch, kv-writeback, kv-swap-out, kv-push, tp-allreduce, ...)."""
        out: dict[str, float] = {}
        for r in self.result.transfers:
            out[r.tag or ""] = out.get(r.tag or "", 0.0) + r.bytes
        return out

    def _handoff_metrics(self) -> dict[str, tuple[float, str]]:
        h = self.kv_handoff_s()
        if not len(h):
            return {}
        return {"kv_handoff_mean_s": (float(h.mean()), "s"),
                "kv_handoff_frac": (float(h.mean() / self.response_s.mean()), "fraction")}

    def kv_handoff_s(self) -> np.ndarray:
        """pd-disaggregation: per request, how long after its first token its KV had fully reached the decode
        side (the part of the layer-by-layer transfer that prefill did not hide; 0 where all of it was hidden,
        which `handoff_note` explains)."""
        return np.array([s.kv_ready_s - s.first_token_s for s in self.seqs if not math.isnan(s.kv_ready_s)])

    def handoff_note(self) -> str:
        """Why `kv_handoff_mean_s` is 0, when it is ("" otherwise): the handoff was simulated, not skipped.

        A new-user trial read the 0 at tp >= 2 as a handoff left out. It is not: the KV is pushed from each
        prefill GPU to its decode GPU (the `kv-push` bytes), but a prefill step ends, and its first token comes
        out, only after the last layer group's tensor-parallel all-reduce, which starts with that group's KV
        push and carries more bytes (for Llama-3-8B at tp=2, 8x: GQA keeps the KV small beside the activations),
        so every push has landed by then. At tp=1 nothing follows the last group's compute and the push shows."""
        h = self.kv_handoff_s()
        if not len(h) or h.any():
            return ""
        pushed = self.bytes_moved().get("kv-push", 0.0)
        tp = self.system.cfg.tp
        why = (f"at tp={tp} each layer group's push runs beside that group's tensor-parallel all-reduce, which the "
               "first token waits for, and ends before it" if tp > 1
               else "each push ended by the step that made the first token")
        return (f"kv_handoff_mean_s is 0: the KV handoff was simulated ({pushed / 1e9:.3g} GB pushed from the "
                f"prefill GPUs to the decode GPUs) and none of it was exposed: {why}")

    def metrics_with_units(self) -> dict[str, tuple[float, str]]:
        """The standard metrics, as {name: (value, unit)} (what studies return); `metrics()` gives plain values."""
        ttft, tpot = self.ttft_s, self.tpot_s
        toks = self.output_tokens
        moved = self.bytes_moved()
        kv_moved = sum(v for k, v in moved.items() if k.startswith("kv-"))
        mean_occ, peak_occ = self.hbm_occupancy()
        util = self.link_utilisation()
        kv_read = sum(i.kv_read_bytes for i in self.system.instances)
        return {
            "ttft_p50_s": (_percentile(ttft, 50), "s"),
            "ttft_p99_s": (_percentile(ttft, 99), "s"),
            "tpot_p50_s": (_percentile(tpot, 50), "s"),
            "tpot_p99_s": (_percentile(tpot, 99), "s"),
            "response_mean_s": (float(self.response_s.mean()), "s"),
            "throughput_tok_s": (toks / self.span_s, "tokens/s"),
            # decode-only steps: tokens per second of decode time, summed over instances
            "decode_tok_s": (sum(i.decode_tokens / i.decode_s for i in self.system.instances if i.decode_s > 0),
                             "tokens/s"),
            "makespan_s": (self.span_s, "s"),
            "hbm_occupancy_mean": (mean_occ, "fraction"),
            "hbm_occupancy_peak": (peak_occ, "fraction"),
            "pcie_util": (util["pcie"], "fraction"),
            "nvlink_util": (util["nvlink"], "fraction"),
            "nic_util": (util["net"], "fraction"),
            "kv_bytes_moved_per_token": (kv_moved / toks, "B/token"),
            "bytes_moved_per_token": (sum(moved.values()) / toks, "B/token"),
            "kv_bytes_read_per_token": (kv_read / toks, "B/token"),
            "preemptions": (float(self.system.preemptions), "count"),
            "steps": (float(sum(i.steps for i in self.system.instances)), "count"),
            "max_batch": (float(max(i.max_running for i in self.system.instances)), "sequences"),
            "host_kv_peak_bytes": (self.host_kv_peak(), "B"),
            **self._handoff_metrics(),
        }


__all__ = ["MECHANISMS", "PREEMPTION_MODES", "Instance", "PolicyError", "ServingConfig", "ServingError",
           "ServingResult", "ServingSystem", "serve", "serve_with_intervals"]
