"""What every weight-sync strategy shares: the setup it runs on, the metrics it reports, the run loop.

A strategy is a simulated *procedure* (a simpy generator) of transfers, kernels and software delays on a
`Simulation`, from "the training step has ended" (t = 0) to "every rollout GPU can use the new version". The
runner (`simulate_sync`) does what is common: plan the resharding, refuse infeasible configurations before
running anything (a rollout layout that does not fit, buffers that exceed free HBM, a path the mechanism cannot
use), account memory, run, and turn the records into metrics:

- `sync_s`: training step end -> the last rollout GPU can use the new version;
- `stall_s`: how long generation cannot run: from the first write into live rollout weights to the end for
  blocking strategies, only the flip for double-buffered ones, nothing for zero-copy reads;
- bytes per link class (`p2p-nvlink`, `rdma`, `h2d`, ...), peak extra memory per GPU against what is free;
- decode-step time where the weights live under this strategy, and staleness for asynchronous modes.

Optional transforms change what travels: `Fp8Conversion` (bf16 -> fp8 with 128x128 block scales) and
`DeltaEncoding` (only changed values, as values plus indices or a bitmap), each with kernel costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import simpy

from fabricsim.hwmodels.endpoints import compress_endpoints, natural_key
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore import Simulation
from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.gcpause import gc_paused
from fabricsim.simcore.records import Result
from fabricsim.simcore.units import check_seconds

from ..decode import DecodeBatch, decode_work, step_cost
from ..errors import InfeasibleError, WorkloadError
from ..keyvalue import coerce, coerce_all, settings_of
from ..metrics_out import ReportsMetrics
from ..models import ModelConfig, dtype_bytes
from ..placement import AssembledPlan, ReshardPlan, RolloutLayout, TrainerLayout, assembled_plan, check_fits, reshard

MIN_TRAIN_STEP_S = 1e-3  # an RL training step takes seconds to minutes; below 1 ms a unit is wrong


def _finite(value: object, where: str, rule: str, ok) -> float:
    """`value` as a float where it is a plain finite number that `ok` accepts; else one line: `where`, the rule."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise WorkloadError(f"{where}: expected {rule}, got {value!r}")
    return float(value)


def check_kv_reserve(value: object, where: str) -> float:
    """The HBM fraction engines keep for KV during a sync (`SyncSetup.kv_reserve_fraction`, `--kv-reserve`): in
    [0, 1), as all of HBM would leave no room for the weights."""
    return _finite(value, where, "a fraction in [0, 1)", lambda x: 0 <= x < 1)


def check_bytes_per_param(value: object, where: str) -> float:
    """Trainer-side bytes per parameter on its GPUs (`SyncSetup.trainer_bytes_per_param`,
    `--trainer-bytes-per-param`): in [0, 64], Adam's full fp32 state with master weights and gradients being ~16,
    and 0 where no trainer state is on the GPUs (a checkpoint already in host memory: the evidence study)."""
    return _finite(value, where, "bytes per parameter in [0, 64]", lambda x: 0 <= x <= 64)


def check_train_step(value: object, where: str, *, shown: object = None) -> float:
    """A training step's length in seconds, the one rule of `SyncSetup.train_step_s` and `sync --train-step`: a
    finite time > 0 and at most 10^9 s (`check_seconds`; staleness divides by it: 0 was a ZeroDivisionError, -1 a
    negative stale fraction), and at least `MIN_TRAIN_STEP_S` (1e-300 s made a 300-digit staleness in --json).
    `shown`: the value as the user wrote it (the CLI's text), for the message."""
    shown = value if shown is None else shown
    try:
        t = check_seconds(value, where, shown=shown, positive=True)
    except ScenarioError as exc:
        raise WorkloadError(str(exc)) from None
    if t < MIN_TRAIN_STEP_S:
        # the hint about seconds only where no unit was written (0.5ms is what it says)
        hint = "" if _has_unit(shown) else " (it is in seconds: 60 is a minute, 0.5 half a second)"
        raise WorkloadError(f"{where}: got {shown!r}, under 1 ms: no training step is that short{hint}")
    return t


def _has_unit(shown: object) -> bool:
    """Whether a value as the user wrote it carries a unit ('0.5ms'), not a plain number ('1e-4', 0.0001)."""
    if not isinstance(shown, str):
        return False
    try:
        float(shown)
    except ValueError:
        return True
    return False


def check_colocation(topology: Topology, trainer_gpus: Iterable[str], rollout_gpus: Iterable[str], *,
                     names: tuple[str, str] = ("trainer", "rollout")) -> None:
    """Refuse trainer and rollout GPUs that overlap in part: some GPUs both train and serve, others only one. A
    colocated layout (verl's hybrid engine, slime, NeMo-RL colocated) trains and serves on the same GPUs, a split one
    on GPUs apart; nothing in the project models the mix, and `--trainer gpu0-3 --rollout gpu3-6` (a range off by
    one) ran as a sync with a local copy on gpu3. Names are compared as the topology resolves them (its aliases);
    `names` spell the two lists in the message (the CLI passes its flags)."""
    canonical = [[topology.aliases.get(g, g) for g in gpus] for gpus in (trainer_gpus, rollout_gpus)]
    trainer, rollout = (set(gpus) for gpus in canonical)
    shared = trainer & rollout
    if shared and trainer != rollout:
        a, b = names
        raise WorkloadError(
            f"{a} and {b} share {compress_endpoints(sorted(shared, key=natural_key))} but not all their GPUs ({a} "
            f"{compress_endpoints(canonical[0])}, {b} {compress_endpoints(canonical[1])}): a colocated layout trains "
            f"and serves on the same GPUs and a split one on GPUs apart; a partial overlap is most likely a typo in a "
            f"range")


@dataclass(frozen=True)
class SyncSetup:
    """One weight-sync question: this model, trained on this layout, served by these engines, on this machine.

    rollout_dtype: weight dtype of the engines (None = the model's); 'fp8' adds a conversion.
    trainer_bytes_per_param: trainer-side bytes per parameter resident on its GPUs during the sync (2 = bf16
      parameter shards only, optimizer state offloaded to the host, as colocated verl / slime setups do).
    decode: the batch each engine decodes between syncs; its KV cache and working space must fit beside the
      weights on every rollout GPU (a layout that cannot hold them cannot generate, whatever the sync costs).
    kv_reserve_fraction: HBM fraction of each rollout GPU held by the engine's KV cache during the sync (0 when
      engines release it, as colocated "sleep mode" does; vLLM's default claim is 0.9 of HBM).
    train_step_s: training step length, for staleness of asynchronous modes.
    """

    topology: Topology
    model: ModelConfig
    trainer: TrainerLayout
    rollout: RolloutLayout
    rollout_dtype: str | None = None
    decode: DecodeBatch = DecodeBatch()
    trainer_bytes_per_param: float = 2.0
    kv_reserve_fraction: float = 0.0
    train_step_s: float = 60.0

    def __post_init__(self) -> None:
        # what each part is, so a wrong one is named here and not as an AttributeError deep in the run
        for name, kind in (("topology", Topology), ("model", ModelConfig), ("trainer", TrainerLayout),
                           ("rollout", RolloutLayout), ("decode", DecodeBatch)):
            if not isinstance(getattr(self, name), kind):
                raise WorkloadError(f"SyncSetup: {name} must be a {kind.__name__}, got {getattr(self, name)!r:.80}")
        # checked where the setup is made, as the CLI's flags are (by the same rules): staleness divides by the step
        object.__setattr__(self, "train_step_s", check_train_step(self.train_step_s, "SyncSetup: train_step_s"))
        object.__setattr__(self, "kv_reserve_fraction",
                           check_kv_reserve(self.kv_reserve_fraction, "SyncSetup: kv_reserve_fraction"))
        object.__setattr__(self, "trainer_bytes_per_param",
                           check_bytes_per_param(self.trainer_bytes_per_param, "SyncSetup: trainer_bytes_per_param"))
        check_colocation(self.topology, self.trainer.gpus, self.rollout.gpus)

    @property
    def wire_dtype(self) -> str:
        return self.rollout_dtype or self.model.dtype

    @property
    def rollout_ratio(self) -> float:
        """Rollout-side bytes per trainer-side byte: those of the dtype conversion (`dtype_conversion`), which the
        engines' weights carry as the wire does (fp8's block scales too: 0.500122, not 0.5), else 1."""
        conversion = dtype_conversion(self)
        return conversion.ratio if conversion else 1.0

    def hbm_bytes(self, gpu: str) -> int:
        return self.topology.gpu(gpu).hbm_bytes

    def decode_kv_bytes(self) -> float:
        """KV cache of the decode batch on each rollout GPU (its TP share, or the whole latent cache for MLA)."""
        return decode_work(self.model, self.decode, self.rollout.tp).kv_bytes

    def decode_workspace_bytes(self) -> float:
        """Activations' working space of one decode step per rollout GPU: fp32 logits over the vocabulary shard
        plus a few bf16 hidden-size buffers per sequence (small next to KV, but not nothing at large batches)."""
        m, b, tp = self.model, self.decode.batch, self.rollout.tp
        return b * (4.0 * m.vocab_size / tp + 2.0 * 4 * m.hidden_size + 2.0 * m.intermediate_size / tp)


# ---- transforms -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transform:
    """A change to what travels. Per byte of trainer-side (bf16) data: `ratio` bytes travel; the encoding kernel
    moves `encode_hbm` HBM bytes on the sender, the decoding kernel `decode_hbm` on the receiver;
    `sender_state` bytes of extra memory per byte stay on the sender (delta's previous version)."""

    name: str
    ratio: float
    encode_hbm: float
    decode_hbm: float = 0.0
    sender_state: float = 0.0
    changed_fraction: float | None = None  # a delta's: the fraction of values it sends (`delta_encoding`)


def fp8_conversion(block: int = 128) -> Transform:
    """bf16 -> fp8 e4m3 with one fp32 scale per `block` x `block` block (DeepSeek-V3's recipe, which vLLM and
    SGLang load): half the bytes plus 4 / block^2 per element. The kernel reads bf16 twice (amax, then
    scale-and-cast) and writes fp8: 2 + 2 + 1 bytes of HBM traffic per element = 2.5 per bf16 byte."""
    return Transform("fp8", 0.5 + 2.0 / block**2, encode_hbm=2.5)


TRAINER_VALUE_BYTES = 2.0  # a trainer-side (bf16) value, the unit every transform's ratio is per byte of
INDEX_BYTES = 4.0  # a delta's int32 index of a changed value


def delta_encoding(changed_fraction: float, value_bytes: float = TRAINER_VALUE_BYTES,
                   index_bytes: float = INDEX_BYTES) -> Transform:
    """Only changed values travel: as (value, int32 index) pairs or as a dense bitmap plus values, whichever is
    smaller. Encoding reads the new and the kept previous version and writes the payload and the new previous
    version; decoding reads the payload and rewrites the changed values. RL updates with small learning rates
    change few bf16 values per step (bf16 rounding swallows most updates), which is why this pays at all."""
    f = changed_fraction
    if not 0.0 <= f <= 1.0:
        raise WorkloadError(f"changed fraction must be in [0, 1], got {f}")
    return _delta(f, value_bytes, index_bytes, dense=value_bytes / TRAINER_VALUE_BYTES, scales=0.0)


def delta_of_converted(delta: Transform, conversion: Transform, value_bytes: float) -> Transform:
    """`delta` when the values it sends travel converted (`value_bytes` each: fp8's 1, not bf16's 2), its ratio
    such that it times the conversion's is what travels per trainer-side byte, and its kernels' HBM bytes those of
    the converted payload and values. The plain product halved the bitmap too, 28% under the bytes of a delta of
    10% sent as fp8, and kept the apply kernel of bf16 values (a physics check and a review)."""
    f = delta.changed_fraction
    assert f is not None, "not a delta"
    # the block scales, per trainer-side byte, where any value changed (a block of 128 x 128 holds one almost surely)
    scales = conversion.ratio - value_bytes / TRAINER_VALUE_BYTES if f > 0 else 0.0
    converted = _delta(f, value_bytes, INDEX_BYTES, dense=conversion.ratio, scales=scales)
    return dataclasses.replace(converted, ratio=converted.ratio / conversion.ratio)


def _delta(f: float, value_bytes: float, index_bytes: float, *, dense: float, scales: float) -> Transform:
    """A delta of fraction f of values of `value_bytes` each, per trainer-side byte: it sends the least of the dense
    weights (`dense`), (value, index) pairs and a bitmap (one bit a value) plus values, the latter two with the
    `scales` beside them; encoding reads the new and previous (trainer-side) versions, writes the payload and the
    changed values of the new previous version; decoding reads the payload and rewrites the changed values."""
    per = TRAINER_VALUE_BYTES
    sent = min(dense, f * (value_bytes + index_bytes) / per + scales, (1.0 / 8 + f * value_bytes) / per + scales)
    return Transform(f"delta{f:g}", sent, encode_hbm=2.0 + sent + 2 * f, decode_hbm=sent + f * value_bytes,
                     sender_state=1.0, changed_fraction=f)


# ---- results --------------------------------------------------------------------------------------------
@dataclass
class SyncResult(ReportsMetrics):
    """Metrics of one sync (see the module docstring). Infeasible configurations carry `feasible=False`, the
    reason, and the memory figures that made them so; nothing was simulated."""

    strategy: str
    feasible: bool
    reason: str = ""
    sync_s: float = math.nan
    stall_s: float = math.nan
    bytes_by_class: dict[str, float] = field(default_factory=dict)
    peak_extra_bytes: float = 0.0          # max over GPUs
    extra_headroom_bytes: float = math.nan  # min over GPUs of HBM left after weights, extra buffers and KV pool
    rollout_weight_bytes: float = 0.0      # per rollout GPU (max) resident under this strategy
    decode_step_s: float = math.nan
    decode_step_local_s: float = math.nan
    decode_step_during_sync_s: float = math.nan  # asynchronous modes: a step that shares links and HBM with the sync
    staleness_versions: float = 0.0
    stale_fraction: float = 0.0
    read_retries: float = 0.0  # versioned-pool reads retried (a copy overlapped a publish), all readers
    version_lag: float = 0.0  # versions the oldest accepted read was behind the newest publish at the end
    flow_events: int = 0
    sim_result: Any = field(default=None, repr=False)
    # which GPU the memory figures are of (a trainer's pool slot or a rollout's buffers: the output must say which)
    peak_extra_gpu: str = ""
    headroom_gpu: str = ""

    def metrics_with_units(self) -> dict[str, tuple[float, str]]:
        """Flat {metric: (value, unit)} for the study contract; `metrics()` gives plain values."""
        out = {
            "feasible": (1.0 if self.feasible else 0.0, ""),
            "peak_extra_GiB": (self.peak_extra_bytes / 2**30, "GiB"),
            "headroom_GiB": (self.extra_headroom_bytes / 2**30, "GiB"),
            "rollout_weights_GiB": (self.rollout_weight_bytes / 2**30, "GiB"),
            "decode_step_ms": (self.decode_step_s * 1e3, "ms"),
            "decode_step_local_ms": (self.decode_step_local_s * 1e3, "ms"),
            "decode_step_during_sync_ms": (self.decode_step_during_sync_s * 1e3, "ms"),
        }
        if self.feasible:
            out.update({
                "sync_s": (self.sync_s, "s"), "stall_s": (self.stall_s, "s"),
                "staleness_versions": (self.staleness_versions, "versions"),
                "stale_fraction": (self.stale_fraction, ""), "flow_events": (self.flow_events, "count"),
            })
            if self.strategy.startswith("shared-pool"):
                out["read_retries"] = (self.read_retries, "")
                out["version_lag"] = (self.version_lag, "versions")
            for cls, b in sorted(self.bytes_by_class.items()):
                out[f"GB_{cls}"] = (b / 1e9, "GB")
        return {k: v for k, v in out.items() if not (isinstance(v[0], float) and math.isnan(v[0]))}


# ---- the context a procedure runs in --------------------------------------------------------------------
class SyncContext:
    """What a running procedure sees: the simulation, the setup, the plans, memory helpers and marks."""

    def __init__(self, sim: Simulation, setup: SyncSetup, plan: ReshardPlan, transforms: tuple[Transform, ...]):
        self.sim = sim
        self.setup = setup
        self.plan = plan
        self.transforms = transforms
        self.first_live_write_s: float | None = None
        self._live_events: list[simpy.Event] = []  # declared items whose finish is a live write (`live_write_at`)
        # per trainer-side byte, for every transform together (asked once per copy: 10^6 times at 1,024 GPUs)
        self._wire_ratio = wire_ratio(transforms)
        # HBM bytes the receiver's decoding kernels move per trainer-side byte (0: received bytes are the weights)
        self.decode_hbm = sum(t.decode_hbm for t in transforms)
        self.concurrent_steps_s: list[float] = []  # decode steps that ran while the sync moved data
        self._steps: list[tuple[simpy.Event, list[simpy.Event]]] = []  # declared ones (`time_step`)
        self._frees: list[tuple[simpy.Event, str, str]] = []  # declared items that end an allocation (`free_after`)
        self._assembled: AssembledPlan | None = None
        self._seq = 0

    @property
    def assembled(self) -> AssembledPlan:
        if self._assembled is None:
            s = self.setup
            self._assembled = assembled_plan(s.model, s.trainer, s.rollout)
        return self._assembled

    @property
    def wire_ratio(self) -> float:
        """Bytes on the wire per trainer-side byte, after every sender-side transform."""
        return self._wire_ratio

    def name(self, stem: str) -> str:
        self._seq += 1
        return f"{stem}.{self._seq}"

    def alloc(self, gpu: str, nbytes: float, tag: str) -> None:
        if nbytes > 0:
            self.sim.memory(gpu).alloc(int(nbytes), tag)

    def free(self, gpu: str, tag: str, at: float | None = None) -> None:
        """Release an allocation made with `alloc` (a zero-byte request allocated nothing: nothing to free); `at`:
        dated then rather than now (`MemoryPool.free`)."""
        pool = self.sim.memory(gpu)
        if pool.holds(tag):
            pool.free(tag, at=at)

    def free_after(self, gpu: str, tag: str, event: simpy.Event) -> None:
        """Release `tag` on `gpu` (as `free`) when `event` fires. A declared item's event is only noted, as in
        `live_write_at` (a callback would make the item procedural): `settle_marks` releases it after the run,
        dated at the item's finish, so until the run ends the bytes still count against later `alloc`s on that GPU
        (none in `shared_pool` and `rdma_p2p`, its callers). Another event (a procedural run's items) frees when it
        fires, or now if it has."""
        if self.sim.declared(event):
            self._frees.append((event, gpu, tag))
        elif event.processed:
            self.free(gpu, tag)
        else:
            event.callbacks.append(lambda _ev: self.free(gpu, tag))

    def mark_live_write(self) -> None:
        """Call when the first byte lands in the engines' live weights (generation must stop from here)."""
        if self.first_live_write_s is None:
            self.first_live_write_s = self.sim.now

    def live_write_at(self, event: simpy.Event, *, since: simpy.Event | None = None, first: float = 1.0) -> None:
        """Mark a live write when `event` fires. A declared item's event is only noted (its record tells the time
        after the run): a callback on it would make the work procedural, off the compiled loop.

        `first`: `event` ends a coarsened unit begun when `since` fired (None: at 0), whose first real unit takes that
        share of it (1/m of m equal ones; `first_share` for buckets), so the first real write lands that far into it:
        stall is measured from it. Marked at the coarse unit's end, a Llama-3-70B nccl-broadcast in one simulated
        bucket stalled 0.12 s against 1.86 s in every bucket."""
        if self.sim.declared(event) and (since is None or self.sim.declared(since)):
            self._live_events.append((event, since, first))
            return
        # a process's events: `since` fired by now (or fires later, then its time), the unit ends when `event` does
        began = [0.0 if since is None else self.sim.now]
        if since is not None and not since.processed:
            since.callbacks.append(lambda _ev: began.__setitem__(0, self.sim.now))

        def mark(_ev: simpy.Event) -> None:
            at = began[0] + (self.sim.now - began[0]) * first
            if self.first_live_write_s is None or at < self.first_live_write_s:
                self.first_live_write_s = at
        event.callbacks.append(mark)

    def time_step(self, parts: list[simpy.Event], began: simpy.Event | None = None) -> None:
        """Note a decode step that runs beside the sync (its items: `decode.decode_step_items`), from `began` (the
        declared item the step's items were declared after; None: the step starts now) to the end of its last
        item, in `concurrent_steps_s`. Declared items are only noted (their records tell the times after the
        run), as in `live_write_at`: a callback would make them procedural."""
        sim = self.sim
        if began is not None:
            if not (sim.declared(began) and all(sim.declared(p) for p in parts)):
                raise WorkloadError("time_step: a step that begins after an item must be declared work (use "
                                    "began=None for a step that starts now)")
            self._steps.append((began, parts))
            return
        t0 = sim.now
        sim.env.all_of(parts).callbacks.append(lambda _ev: self.concurrent_steps_s.append(sim.now - t0))

    def settle_marks(self) -> None:
        """After the run: fold the noted events' finish times into `first_live_write_s`, the noted decode
        steps' durations into `concurrent_steps_s`, and release the noted allocations (`free_after`)."""
        times = []
        for ev, since, first in self._live_events:
            if ev.processed and (since is None or since.processed):
                t0 = 0.0 if since is None else since.value.finish_s
                times.append(t0 + (ev.value.finish_s - t0) * first)
        if self.first_live_write_s is not None:
            times.append(self.first_live_write_s)
        self.first_live_write_s = min(times) if times else None
        self._live_events = []
        for began, parts in self._steps:
            if began.processed and all(p.processed for p in parts):
                self.concurrent_steps_s.append(max(p.value.finish_s for p in parts) - began.value.finish_s)
        self._steps = []
        for ev, gpu, tag in self._frees:
            if ev.processed:
                self.free(gpu, tag, at=ev.value.finish_s)
        self._frees = []

    def encode(self, gpu: str, raw_bytes: float, after: Iterable = ()) -> simpy.Event:
        """The sender-side transform kernels on `raw_bytes` of trainer-side data."""
        hbm = sum(t.encode_hbm for t in self.transforms) * raw_bytes
        return self.sim.task(self.name(f"encode.{gpu}"), gpu, hbm_bytes=hbm, after=tuple(after), tag="encode")

    def load(self, gpu: str, raw_bytes: float, after: Iterable = (), src: str | None = None,
             tag: str = "load", setup_s: float = 0.0, setup_name: str = "setup", latencies: int = 1) -> simpy.Event:
        """Write `raw_bytes` (trainer-side size) of received weights into the live weights of `gpu`: a copy from
        the receive buffer (on `src`, default `gpu` itself), or with a decoding kernel the payload's copy from `src`
        (where that is another GPU) and then the kernel, after `setup_s` of software
        work (per-tensor handling: the copy's setup, see `Simulation.transfer`; one item where no engine queues,
        and a 1,024-GPU host-staged sync has 786,432 such loads). `latencies`: the copy stands for that many
        (a coarsened bucket's: `Simulation.transfers`)."""
        sim = self.sim
        if _plain_load(raw_bytes, self._wire_ratio, self.decode_hbm):
            return sim.transfers(self._load_copies([(gpu, raw_bytes, setup_s)], tag, setup_name, src), after=after,
                                 tag=tag, latencies=latencies)[0]
        setup_id = self.name(f"{setup_name}.{gpu}") if setup_s else None
        if setup_s and (self.decode_hbm or not float(raw_bytes * self._wire_ratio) > 0):  # no copy to be its setup
            after = [sim.delay(setup_id, float(setup_s), after=tuple(after), tag="per-tensor")]
        dec = self.decode_hbm * raw_bytes
        if dec:  # the decoding kernel writes the live weights (delta)
            wire = float(raw_bytes * self._wire_ratio)
            if src is not None and wire > 0 and sim.topology.resolve(src) != sim.topology.resolve(gpu):
                # the payload sits in another GPU's buffer (a CUDA-IPC partner's): it crosses before it is applied
                # (the copy was left out, so a delta of everything came out faster than sending the weights)
                after = [sim.transfer(self.name(f"{tag}.{gpu}"), src, gpu, wire, after=tuple(after), tag=tag,
                                      latencies=latencies)]
            return sim.task(self.name(f"decode.{gpu}"), gpu, hbm_bytes=dec, after=tuple(after), tag="decode")
        # An unchanged delta leaves nothing to copy: the sync still pays its fixed costs, but moves no bytes.
        return sim.delay(self.name(f"{tag}.{gpu}.none"), 0.0, after=tuple(after))  # still ordered after `after`

    def loads(self, items: Iterable[tuple[str, float, float]], after: Iterable = (), tag: str = "load",
              setup_name: str = "setup", latencies: int = 1) -> list[simpy.Event]:
        """`load(gpu, raw_bytes, after, tag=tag, setup_s=setup_s, setup_name=setup_name)` for each (gpu, raw_bytes,
        setup_s) of `items`, in order, declared in one `Simulation.transfers` call where every one is a plain copy
        (a 1,024-GPU host-staged sync of Kimi-K2 reloads 512 ranks per owner's bucket: 786,432 loads).
        `latencies`: each plain load's copy stands for that many (a coarsened bucket's: `Simulation.transfers`)."""
        items, after = list(items), tuple(after)
        ratio, dec = self._wire_ratio, self.decode_hbm
        if not all(_plain_load(b, ratio, dec) for _, b, _ in items):
            return [self.load(g, b, after, tag=tag, setup_s=s, setup_name=setup_name, latencies=latencies)
                    for g, b, s in items]
        return self.sim.transfers(self._load_copies(items, tag, setup_name), after=after, tag=tag,
                                  latencies=latencies)

    def _load_copies(self, items: list[tuple[str, float, float]], tag: str, setup_name: str,
                     src: str | None = None) -> list[tuple]:
        """Plain loads' copies, (gpu, raw_bytes, setup_s) each, as `Simulation.transfers` takes them (each setup
        named first, then its copy, as `name` numbers them), from the receive buffer on `src` (default: the GPU
        itself); a plain float size takes `transfer`'s quick checks. One loop with its own count rather than
        two `name` calls per load: 786,432 loads in a 1,024-GPU host-staged sync of Kimi-K2."""
        seq, ratio = self._seq, self._wire_ratio
        out = []
        for gpu, raw_bytes, setup_s in items:
            if setup_s:
                seq += 2
                out.append((f"{tag}.{gpu}.{seq}", src or gpu, gpu, float(raw_bytes * ratio), float(setup_s),
                            f"{setup_name}.{gpu}.{seq - 1}"))
            else:
                seq += 1
                out.append((f"{tag}.{gpu}.{seq}", src or gpu, gpu, float(raw_bytes * ratio), float(setup_s), None))
        self._seq = seq
        return out


def _plain_load(raw_bytes: float, wire_ratio: float, decode_hbm: float) -> bool:
    """Whether a load of `raw_bytes` is one copy: bytes on the wire and no decoding kernel (0 x inf is NaN: a size
    the kernel's checks refuse). A function of its numbers, so that `SyncContext.loads` asks it per load without a
    method call."""
    return float(raw_bytes * wire_ratio) > 0 and not decode_hbm * raw_bytes


def share_of_replica(ctx: SyncContext) -> dict[str, float]:
    """Fraction of one full copy of the model each trainer GPU holds (replicas count once in total)."""
    held = ctx.plan.held_bytes
    total = float(held.sum())
    return {g: float(b) / total for g, b in zip(ctx.plan.trainer_gpus, held, strict=True)}


# ---- strategies -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knobs:
    """Base of every strategy's cost knobs (frozen dataclass; defaults documented where they are defined).

    Every field is typed and range-checked when the knobs are made, however they are made: `replace` and
    `weightsync.get` read text ('1GiB', '16') by the KEY=VALUE rules and then construct, and a subclass built
    directly (`RdmaP2PKnobs(task_bytes=2**30)`) gets the same checks (`_type_knobs`). Only `replace` reads text:
    the constructor takes values, so a size written as text is refused there, saying where text is read."""

    def __post_init__(self) -> None:
        """A subclass with cross-field checks of its own calls this first (its fields are typed by then)."""
        _type_knobs(self)

    def replace(self, **kw: Any) -> Knobs:
        """A copy with `kw` changed; values are typed by the shared KEY=VALUE rules (`keyvalue`: text such as
        '1GiB', '20us' is read here), then range-checked as the constructor checks every knob (`_type_knobs`): counts
        >= 1, sizes (`*bytes`) at least a byte, other numbers >= 0 (the upper bounds of sizes and costs are the
        KEY=VALUE rules')."""
        typed = coerce_all(kw, settings_of(type(self)), type(self).__name__, noun="knob")
        return dataclasses.replace(self, **typed)  # (constructs: `__post_init__` range-checks)


def _type_knobs(knobs: Knobs) -> None:
    """Check every field of `knobs` against its default's type by the KEY=VALUE rules (`keyvalue.coerce`: a bool
    for switches, a whole number for counts, a finite real number, not a bool, for the rest, a name for names),
    then its range (`_check_knob_range`), and store the typed value (16.0 for a count as 16, NumPy scalars as
    Python numbers), so that knobs built directly equal those `replace` makes. Text for a number or a switch is
    refused: the constructor takes values, and `replace` is where text is read."""
    owner = type(knobs).__name__
    for name, setting in settings_of(type(knobs)).items():
        value = getattr(knobs, name)
        where = f"{owner}: {name}"
        default = setting.default
        if isinstance(value, str) and isinstance(default, int | float):
            expected, text = (("True or False", "switches as text") if isinstance(default, bool) else
                              ("a number of bytes", "sizes as text such as '1GiB'") if name.endswith("bytes") else
                              ("a number of seconds", "times as text such as '20us'") if name.endswith("_s") else
                              ("a number", "numbers as text"))
            # worded as `coerce` words a value of the wrong type ('expected ...'): one kind of mistake, one wording
            raise WorkloadError(f"{where}: expected {expected}, got {value!r} ({text} are read by "
                                f"get(name, {name}=...) and Knobs.replace, not by the constructor)")
        typed = coerce(where, setting, value)
        if isinstance(typed, int) and not isinstance(typed, bool) and isinstance(value, numbers.Integral):
            typed = int(value)  # exactly (`coerce` reads numbers through a float: 2**53 + 1 is not one)
        _check_knob_range(where, name, typed)
        if type(typed) is not type(value) or typed != value:
            object.__setattr__(knobs, name, typed)  # (frozen: the dataclass's own way to set a field in post-init)


def _check_knob_range(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if name.endswith("bytes") and not value >= 1:  # (a size under a byte is a wrong unit; said as a size, whole or not)
        raise WorkloadError(f"{where}: expected a size of at least 1 B, got {value!r}")
    if isinstance(value, int) and value < 1:
        raise WorkloadError(f"{where}: expected a whole number >= 1, got {value!r}")
    if not value >= 0:
        raise WorkloadError(f"{where}: expected a number >= 0, got {value!r}")


class Strategy:
    """A weight-sync procedure. Subclasses set `name`, `Knobs`, and implement `procedure` (and, where they
    differ from the defaults, `check`, `extra_memory`, `stall`, `decode_step`)."""

    name: ClassVar[str] = ""
    Knobs: ClassVar[type[Knobs]] = Knobs
    blocking: ClassVar[bool] = True
    # True: `procedure` declares all its work, then yields once, the event that ends the sync, and does nothing
    # that takes simulated time after it; the work then runs on the compiled loop when it is all declared items
    # (see `_run_procedure`)
    declarative: ClassVar[bool] = False
    changed_fraction: float | None = None  # the `delta:` wrapper's knob, where it wraps this one (`delta.delta`)

    def __init__(self, knobs: Knobs | None = None, transforms: tuple[Transform, ...] = (), **kw: Any) -> None:
        self.knobs = (knobs or self.Knobs()).replace(**kw) if kw else (knobs or self.Knobs())
        self.transforms = tuple(transforms)

    @property
    def label(self) -> str:
        return self.name + "".join(f"+{t.name}" for t in self.transforms)

    # -- hooks
    def check(self, setup: SyncSetup, plan: ReshardPlan) -> None:
        """Raise `InfeasibleError` when the mechanism cannot work on this topology / layout."""

    def extra_memory(self, setup: SyncSetup, plan: ReshardPlan) -> dict[str, float]:
        """Peak extra bytes per GPU the procedure allocates (checked against free HBM before running)."""
        return {}

    def encoded_bytes(self, setup: SyncSetup, plan: ReshardPlan) -> dict[str, float]:
        """Trainer-side bytes each GPU's encoding kernels run over in a sync: where a delta keeps the previous version
        it diffs against (`Transform.sender_state` per byte). Default: each trainer GPU its own shards (rdma-p2p's
        trainers encode what they send); a strategy that encodes gathered tensors elsewhere says where."""
        out: dict[str, float] = {}
        for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True):
            out[g] = out.get(g, 0.0) + float(b)
        return out

    def rollout_resident(self, setup: SyncSetup, plan: ReshardPlan) -> dict[str, float]:
        """Bytes of live weights on each rollout GPU (zero-copy keeps none)."""
        return {g: b * setup.rollout_ratio for g, b in zip(plan.rollout_gpus, plan.need_bytes, strict=True)}

    def procedure(self, ctx: SyncContext) -> Generator:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def scale_note(self, setup: SyncSetup) -> str:
        """A note for someone about to wait on a sync this large: why its simulation takes long and which knob
        answers faster, at what cost ('' when it is quick). The CLI prints it before the run."""
        return ""

    def stall(self, ctx: SyncContext, sync_s: float) -> float:
        if not self.blocking:
            return 0.0
        start = ctx.first_live_write_s if ctx.first_live_write_s is not None else sync_s
        return sync_s - start

    def decode_step(self, setup: SyncSetup, plan: ReshardPlan) -> float:
        """Decode-step time of a rollout GPU under this strategy (default: weights in local HBM)."""
        return local_decode_step(setup)

    def staleness(self, setup: SyncSetup, sync_s: float) -> tuple[float, float]:
        """(versions behind at worst, fraction of generation time on an old version); 0 for blocking syncs."""
        return 0.0, 0.0


def _largest(by_gpu: dict[str, float]) -> tuple[str, float]:
    """(the GPU with the most, that amount); ties go to the first name with node numbers read as numbers
    (node64.gpu0 before node100.gpu0); ("", 0.0) for none."""
    gpu = max(sorted(by_gpu, key=natural_key), key=by_gpu.__getitem__, default="")
    return gpu, by_gpu[gpu] if gpu else 0.0


def local_decode_step(setup: SyncSetup) -> float:
    model = setup.model.with_dtype(setup.wire_dtype)
    gpu = setup.topology.gpu(setup.rollout.gpus[0])
    return step_cost(model, setup.decode, gpu, tp=setup.rollout.tp).step_s


def _real_buckets(total_bytes: float, bucket_bytes: float, most: int | None) -> tuple[int, float]:
    """(how many real buckets, the bytes of each but the last) of `coarsen`."""
    if bucket_bytes <= 0:
        raise WorkloadError(f"bucket size must be > 0, got {bucket_bytes}")
    real = max(1, math.ceil(total_bytes / bucket_bytes))
    if most is not None:
        real = max(1, min(real, most))
    return real, max(bucket_bytes, total_bytes / real)  # more than asked where tensors are larger


def first_share(unit_bytes: float, total_bytes: float, bucket_bytes: float, most: int | None = None) -> float:
    """The share of a simulated bucket of `unit_bytes` (from `coarsen`) its first real bucket takes: a whole real
    bucket's bytes of it, not 1/m (the last real bucket is the remainder: as one simulated bucket, 10 GB and 6 GB
    real ones made the first 1/2, and the stall 20% off)."""
    return min(1.0, _real_buckets(total_bytes, bucket_bytes, most)[1] / unit_bytes) if unit_bytes > 0 else 1.0


def coarsen(total_bytes: float, bucket_bytes: float, max_sim: int,
            most: int | None = None) -> list[tuple[float, int]]:
    """Buckets of `bucket_bytes` as at most `max_sim` simulated buckets: [(bytes, how many real buckets)].

    Real buckets past `max_sim` are merged (their fixed costs are still paid per real bucket by the strategy),
    which keeps a 2 TB model at a few hundred flows. `most`: the most real buckets there can be, the tensors they
    hold: verl, OpenRLHF and slime fill a bucket with whole tensors (one larger than the bucket goes alone), so a
    1-byte bucket is one bucket a tensor, not one a byte (which made a Llama-3-8B broadcast take 11 days).
    """
    real, size = _real_buckets(total_bytes, bucket_bytes, most)
    sims = min(real, max_sim)
    base, extra = divmod(real, sims)
    out = []
    left = total_bytes
    for i in range(sims):
        m = base + (1 if i < extra else 0)
        b = min(left, m * size) if i < sims - 1 else left
        out.append((b, m))
        left -= b
    return out


def dtype_conversion(setup: SyncSetup) -> Transform | None:
    """The conversion the rollout dtype asks for (None when the engines keep the model's dtype)."""
    if setup.wire_dtype == setup.model.dtype:
        return None
    if setup.wire_dtype != "fp8":
        raise WorkloadError(f"only conversion to fp8 is modelled, not {setup.model.dtype} -> {setup.wire_dtype}")
    return fp8_conversion()


def wire_ratio(transforms: Iterable[Transform]) -> float:
    """Bytes on the wire per trainer-side byte, every transform together."""
    return math.prod((t.ratio for t in transforms), start=1.0)


def effective_transforms(setup: SyncSetup, strategy: Strategy) -> tuple[Transform, ...]:
    """The strategy's transforms plus the dtype conversion the rollout dtype asks for (done by the sender, so
    half the bytes travel, as Perplexity's schedule does)."""
    conversion = dtype_conversion(setup)
    if conversion is None:
        return tuple(strategy.transforms)
    value = dtype_bytes(setup.wire_dtype)
    return tuple(delta_of_converted(t, conversion, value) if t.changed_fraction is not None else t
                 for t in strategy.transforms) + (conversion,)


def _check_decode_fits(setup: SyncSetup, plan: ReshardPlan, resident: dict[str, float],
                       resident_roll: dict[str, float], label: str) -> None:
    """Raise `InfeasibleError` when a rollout GPU cannot hold, while it decodes, what is resident on it (its
    weights, a colocated trainer's shards) plus the decode batch's KV cache and working space."""
    kv, work = setup.decode_kv_bytes(), setup.decode_workspace_bytes()
    for g in sorted(set(plan.rollout_gpus)):
        weights = resident.get(g, 0.0) - setup.kv_reserve_fraction * setup.hbm_bytes(g) if g in resident_roll \
            else resident.get(g, 0.0)
        need, cap = weights + kv + work, setup.hbm_bytes(g)
        if need > cap:
            d = setup.decode
            raise InfeasibleError(
                f"{label}: the decode batch does not fit on {g}: {weights / 2**30:.1f} GiB of weights + "
                f"{kv / 2**30:.1f} GiB of KV cache (batch {d.batch} x {d.context} tokens, {d.kv_dtype}) + "
                f"{work / 2**30:.1f} GiB of working space > {cap / 2**30:.1f} GiB HBM")


def _decode_claim(setup: SyncSetup, plan: ReshardPlan, resident_roll: dict[str, float]) -> dict[str, float]:
    """HBM each rollout GPU gives its engine's KV pool while the sync runs: the decode batch's KV cache and
    working space, or the engine's reserve where that is larger (the reserve is claimed whether or not the
    batch fills it). Engines keep decoding during a sync, so this sits beside the weights and the strategy's
    extra buffers, never instead of them."""
    kv = setup.decode_kv_bytes() + setup.decode_workspace_bytes()
    return {g: max(kv, setup.kv_reserve_fraction * setup.hbm_bytes(g) if g in resident_roll else 0.0)
            for g in set(plan.rollout_gpus)}


def _held_bytes(g: str, setup: SyncSetup, resident: dict[str, float], resident_roll: dict[str, float],
                extra: dict[str, float], decode_claim: dict[str, float]) -> float:
    """Everything on `g` at the sync's peak: weights and trainer shards, extra buffers, the KV pool's claim.
    `resident` already counts the reserve on rollout GPUs (the simulation allocates it), so it is taken out
    here and `decode_claim` counts the larger of reserve and batch instead."""
    reserve = setup.kv_reserve_fraction * setup.hbm_bytes(g) if g in resident_roll else 0.0
    return resident.get(g, 0.0) - reserve + extra.get(g, 0.0) + decode_claim.get(g, 0.0)


def _run_procedure(sim: Simulation, strategy: Strategy, ctx: SyncContext, label: str) -> tuple[float, Result]:
    """Run the strategy's procedure; returns (the simulated time it ended at, the run's result).

    A declarative strategy's procedure is stepped by hand to its one yield: when that is a declared item, the run
    needs no process and takes the compiled loop (or simpy's, with FABRICSIM_LOOP=simpy: the same answer), and the
    sync ends when that item does. Any other procedure runs as a simpy process."""
    gen = strategy.procedure(ctx)
    if strategy.declarative:
        try:
            end = next(gen)
        except StopIteration:
            return sim.now, sim.run()
        if sim.declared(end):
            res = sim.run()
            _check_finished(end, label)
            with contextlib.suppress(StopIteration):
                gen.send(end.value)
                raise WorkloadError(f"{label}: a declarative procedure yielded after its end event")
            return float(end.value.finish_s), res
        gen = _resume(gen, end)

    def timed() -> Generator:
        yield from gen
        return sim.now

    done = sim.process(timed())
    res = sim.run()
    _check_finished(done, label)
    return float(done.value), res


def _check_finished(event: simpy.Event, label: str) -> None:
    if not event.processed:
        raise WorkloadError(f"{label}: the procedure did not finish (a dependency never fired)")


def _resume(gen: Generator, first: simpy.Event) -> Generator:
    """`gen` again, after its first yield (`first`) was taken out of it; a failed event is thrown into it, as
    `yield from` would."""
    ev = first
    while True:
        try:
            value = yield ev
        except Exception as exc:  # handed on to the procedure, which may handle it
            step = gen.throw, exc
        else:
            step = gen.send, value
        try:
            ev = step[0](step[1])
        except StopIteration as stop:
            return stop.value


def simulate_sync(setup: SyncSetup, strategy: Strategy, *, keep_result: bool = False) -> SyncResult:
    """Plan, check feasibility, run the strategy's procedure and collect its metrics. `strategy`: a `Strategy`, as
    `weightsync.get("rdma-p2p", **knobs)` makes one (a name alone is refused, saying so: the registry imports every
    strategy, and every strategy imports this module).

    Infeasible configurations (see `InfeasibleError`) come back as `SyncResult(feasible=False, reason=...)`
    without running anything; malformed input (unknown names, degrees that don't divide) raises.
    """
    if not isinstance(strategy, Strategy):  # (an AttributeError on `label` below)
        hint = f": weightsync.get({strategy!r}) makes it" if isinstance(strategy, str) else ""
        raise WorkloadError(f"simulate_sync: expected a Strategy, got {strategy!r}{hint}")
    if not isinstance(setup, SyncSetup):  # (an AttributeError deep in the planning)
        raise WorkloadError(f"simulate_sync: expected a SyncSetup, got {type(setup).__name__}")
    plan = reshard(setup.model, setup.trainer, setup.rollout)
    label = strategy.label + ("+fp8" if setup.wire_dtype != setup.model.dtype else "")
    local_step = local_decode_step(setup)
    resident_roll = strategy.rollout_resident(setup, plan)
    resident: dict[str, float] = {}
    for g, b in zip(plan.trainer_gpus, plan.held_bytes, strict=True):
        resident[g] = resident.get(g, 0.0) + b * setup.trainer_bytes_per_param / dtype_bytes(setup.model.dtype)
    for g, b in resident_roll.items():
        resident[g] = resident.get(g, 0.0) + b + setup.kv_reserve_fraction * setup.hbm_bytes(g)
    extra = dict(strategy.extra_memory(setup, plan))
    keep = sum(t.sender_state for t in strategy.transforms)
    # the previous version kept to diff against, where the encoding runs
    previous = {g: keep * b for g, b in strategy.encoded_bytes(setup, plan).items()} if keep else {}
    for g, b in previous.items():
        extra[g] = extra.get(g, 0.0) + b
    decode_claim = _decode_claim(setup, plan, resident_roll)
    gpus = sorted(set(resident) | set(extra) | set(decode_claim), key=natural_key)  # node64 before node100
    room = {g: setup.hbm_bytes(g) - _held_bytes(g, setup, resident, resident_roll, extra, decode_claim) for g in gpus}
    tightest = min(room, key=room.__getitem__, default="")  # the GPU whose headroom is the result's (first on ties)
    fullest, most = _largest(extra)
    base = SyncResult(label, False, peak_extra_bytes=most,
                      extra_headroom_bytes=room[tightest] if room else math.nan,
                      rollout_weight_bytes=max(resident_roll.values(), default=0.0), decode_step_local_s=local_step,
                      peak_extra_gpu=fullest, headroom_gpu=tightest)
    try:
        _check_decode_fits(setup, plan, resident, resident_roll, label)
        if resident_roll:  # zero-copy engines keep no weights of their own
            check_fits(plan, {g: setup.hbm_bytes(g) for g in plan.rollout_gpus},
                       reserve_fraction=setup.kv_reserve_fraction, bytes_ratio=setup.rollout_ratio,
                       resident_bytes={g: resident.get(g, 0.0) - resident_roll.get(g, 0.0)
                                       - setup.kv_reserve_fraction * setup.hbm_bytes(g) for g in plan.rollout_gpus})
        strategy.check(setup, plan)
        for g in gpus:
            need = setup.hbm_bytes(g) - room[g]
            if room[g] < 0:
                weights = need - extra.get(g, 0.0) - decode_claim.get(g, 0.0)
                raise InfeasibleError(
                    f"{label}: {g} needs {need / 2**30:.1f} GiB ({weights / 2**30:.1f} resident + "
                    f"{extra.get(g, 0.0) / 2**30:.1f} extra + {decode_claim.get(g, 0.0) / 2**30:.1f} KV cache and "
                    f"working space) of {setup.hbm_bytes(g) / 2**30:.1f} GiB HBM")
        base.decode_step_s = strategy.decode_step(setup, plan)
    except InfeasibleError as exc:
        base.reason = str(exc)
        return base

    with gc_paused():
        return _simulate(setup, strategy, plan, label, base, resident, extra, previous, keep_result)


def _simulate(setup: SyncSetup, strategy: Strategy, plan: ReshardPlan, label: str, base: SyncResult,
              resident: dict[str, float], extra: dict[str, float], previous: dict[str, float],
              keep_result: bool) -> SyncResult:
    """The simulated part of `simulate_sync`, once the configuration is known to be feasible (with Python's
    cyclic collector held off: see `simcore.gcpause`)."""
    sim = Simulation(setup.topology, record_load=False)
    for g, b in resident.items():
        sim.memory(g).alloc(int(b), "resident")
    for g, b in previous.items():
        sim.memory(g).alloc(int(b), "previous-version")
    ctx = SyncContext(sim, setup, plan, effective_transforms(setup, strategy))

    sync_s, res = _run_procedure(sim, strategy, ctx, label)
    ctx.settle_marks()
    peaks = {g: sim.memory(g).peak_bytes - int(resident.get(g, 0.0)) for g in set(resident) | set(extra)}
    base.feasible = True
    base.sync_s = sync_s
    base.stall_s = strategy.stall(ctx, sync_s)
    base.bytes_by_class = {k: v for k, v in res.bytes_by_link_class().items() if v > 0}
    base.peak_extra_gpu, most = _largest(peaks)
    base.peak_extra_bytes = float(most)
    base.staleness_versions, base.stale_fraction = strategy.staleness(setup, sync_s)
    base.read_retries = float(getattr(ctx, "read_retries", 0))
    base.version_lag = float(getattr(ctx, "version_lag", 0))
    base.staleness_versions = max(base.staleness_versions, base.version_lag)
    base.flow_events = res.events
    if ctx.concurrent_steps_s:
        base.decode_step_during_sync_s = max(ctx.concurrent_steps_s)
    if keep_result:
        base.sim_result = res
    return base
