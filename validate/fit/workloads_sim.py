"""Simulated twins of the workload cases: the same procedure, on the same tensors, on the simulator.

Each twin replays what `validate.gpu.workloads_torch` / `kv_torch` do, step for step, as transfers (copies on
the profile's path classes, with their fitted rates and FIFO engines), tasks (kernels, roofline-costed on HBM)
and delays (software costs, from `WorkloadCosts`). The host's work is a chain of delays; the copies it issues
follow its issue times and the stream's order, so a Python loop that issues copies faster than they run is
hidden behind them, as on the GPU. To keep a twin at a few hundred events, the tensors of a bucket are issued
in at most `SEGMENTS` groups (a group's host cost, then its bytes).

Inputs besides the case: the tensor list (`workload_cases.tensor_list`), and two structural facts the GPU run
records because they depend on torch's allocator, not on time: how many distinct CUDA-IPC handles (allocator
segments) back the trainer's tensors, and the bucket buffer's mapped size. No measured time enters a twin.

Software costs a twin charges (seconds; fitted by `workloads_fit` on the calibration split):

| name | where it is paid |
|---|---|
| `message_s` | one request and reply between trainer and rollout processes |
| `export_per_tensor_s` | trainer: torch's IPC reduction of one tensor (handle, IPC event, ref counter) |
| `rebuild_per_tensor_s` | rollout: rebuilding one IPC tensor and issuing its copy |
| `open_per_handle_s` | rollout: opening one allocator segment's handle (once per segment) |
| `copy_per_tensor_s` | one `copy_` issued from Python (handles already open) |
| `bucket_fixed_s` | per bucket: stream sync, export, message, open and close of the bucket's handle |
| `bucket_per_tensor_s` | per tensor of a bucket: its view and `copy_` in the rollout |
| `fp8_bucket_fixed_s` | per fp8 bucket, on top: the cast's launch and the scales' copy |
| `host_per_tensor_s`, `host_bucket_fixed_s` | host-staged: per tensor D2H / reload, per bucket |
| `publish_fixed_s`, `publish_per_tensor_s` | `WeightPool.publish` with nothing to copy (it builds every slot view) |
| `read_per_tensor_s` | `PoolReader.read_consistent`, per named tensor |
| `views_per_tensor_s` | `PoolReader.views`, per tensor |
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.topology import Topology, path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.validate.workload_cases import WorkloadCase, aligned, plan_buckets, tensor_list

SEGMENTS = 4  # issue groups per bucket (per case for unbucketed paths: SEGMENTS * 8)
GPU, HOST = "gpu0", "host"

COST_NAMES = ("message_s", "export_per_tensor_s", "rebuild_per_tensor_s", "open_per_handle_s", "copy_per_tensor_s",
              "bucket_fixed_s", "bucket_per_tensor_s", "fp8_bucket_fixed_s", "host_per_tensor_s",
              "host_bucket_fixed_s", "publish_fixed_s", "publish_per_tensor_s", "read_per_tensor_s",
              "views_per_tensor_s")


@dataclass(frozen=True)
class WorkloadCosts:
    """Software costs of the real code paths (seconds); a name not set costs nothing."""

    values: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        if name in COST_NAMES:
            return float(self.values.get(name, 0.0))
        raise AttributeError(name)

    def with_values(self, **kw: float) -> WorkloadCosts:
        bad = sorted(set(kw) - set(COST_NAMES))
        if bad:
            raise CalibrationError(f"unknown software cost(s) {', '.join(bad)} (known: {', '.join(COST_NAMES)})")
        return WorkloadCosts({**self.values, **kw})


def tensor_sizes(model: str) -> list[int]:
    out = []
    for _, shape in tensor_list(model):
        n = 2
        for d in shape:
            n *= d
        out.append(n)
    return out


def _groups(sizes: list[int], n: int) -> list[tuple[int, list[int]]]:
    """Consecutive tensors as at most `n` groups: [(tensors, their sizes)]."""
    if not sizes:
        return []
    n = max(1, min(n, len(sizes)))
    out = []
    for k in range(n):
        part = sizes[k * len(sizes) // n: (k + 1) * len(sizes) // n]
        if part:
            out.append((len(part), part))
    return out


class _Twin:
    """One case's procedure on a fresh simulation."""

    def __init__(self, topo: Topology, costs: WorkloadCosts) -> None:
        self.sim = Simulation(topo, record_load=False)
        self.c = costs
        self.marks: dict[str, float] = {}
        self._n = 0
        self._lone: dict[tuple[str, str, float], float] = {}

    def _id(self, stem: str) -> str:
        self._n += 1
        return f"{stem}.{self._n}"

    def delay(self, s: float, after: Iterable[Any] = ()) -> Any:
        return self.sim.delay(self._id("cpu"), max(0.0, s), after=[a for a in after if a is not None], tag="software")

    def copy(self, src: str, dst: str, nbytes: float, after: Iterable[Any] = (), engine: str | None = None,
             fixed_cost_s: float = 0.0, mechanism: str = "ce") -> Any:
        return self.sim.transfer(self._id("copy"), src, dst, nbytes, after=[a for a in after if a is not None],
                                 tag="copy", engine=engine, fixed_cost_s=fixed_cost_s, mechanism=mechanism)

    def lone_s(self, src: str, dst: str, nbytes: float) -> float:
        """A lone copy's time on this topology: path latency + bytes at the size's calibrated rate."""
        key = (src, dst, nbytes)
        if key not in self._lone:
            path = self.sim.topology.path(src, dst, nbytes)
            self._lone[key] = path.latency_s + nbytes / path_bandwidth_Bps(self.sim.topology, src, dst, nbytes)
        return self._lone[key]

    def group_copy(self, src: str, dst: str, sizes: list[int], after: Iterable[Any]) -> Any:
        """One simulated copy for a group of per-tensor copies on one stream: its bytes, plus what running them
        one by one costs beyond one copy of the total (each copy's latency and size efficiency)."""
        total = float(sum(sizes))
        extra = sum(self.lone_s(src, dst, b) for b in sizes) - self.lone_s(src, dst, total)
        return self.copy(src, dst, total, after=after, fixed_cost_s=max(0.0, extra))

    def kernel(self, hbm_bytes: float, after: Iterable[Any] = ()) -> Any:
        return self.sim.task(self._id("kernel"), GPU, hbm_bytes=hbm_bytes, after=[a for a in after if a is not None],
                             tag="kernel")

    def issue(self, groups: list[tuple[int, list[int]]], per_tensor_s: float, src: str, dst: str, cpu: Any,
              stream: Any, extra_cpu_s: float = 0.0) -> tuple[Any, Any]:
        """The host issues one copy per tensor (per_tensor_s each, plus `extra_cpu_s` spread over the groups);
        each group's bytes follow its issue and the previous copy (stream order). Returns (cpu, stream)."""
        spread = extra_cpu_s / len(groups) if groups else 0.0
        for k, sizes in groups:
            cpu = self.delay(k * per_tensor_s + spread, after=[cpu])
            stream = self.group_copy(src, dst, sizes, after=[cpu, stream])
        return cpu, stream

    def both(self, *events: Any) -> Any:
        return self.sim.env.all_of([e for e in events if e is not None])

    def run(self, proc: Generator) -> float:
        done = self.sim.process(proc)
        self.sim.run()
        if not done.processed:
            raise CalibrationError("a workload twin did not finish (a dependency never fired)")
        return float(self.sim.now)


def _sync_twin(case: WorkloadCase, facts: dict[str, Any], tw: _Twin) -> Generator:
    c, sizes, mech = tw.c, tensor_sizes(case.model), case.mech
    n = len(sizes)
    if mech == "noop":
        yield tw.delay(c.message_s)
    elif mech == "ipc-tensor-first":
        handles = int(facts.get("handles", n))
        yield tw.delay(n * c.export_per_tensor_s + c.message_s)
        begin = tw.sim.now
        cpu, stream = tw.issue(_groups(sizes, SEGMENTS * 8), c.rebuild_per_tensor_s, GPU, GPU, None, None,
                               extra_cpu_s=handles * c.open_per_handle_s)
        yield tw.both(cpu, stream)
        tw.marks["rollout_s"] = tw.sim.now - begin
    elif mech == "ipc-tensor-steady":
        cpu, stream = tw.issue(_groups(sizes, SEGMENTS * 8), c.copy_per_tensor_s, GPU, GPU, None, None)
        yield tw.both(cpu, stream)
        yield tw.delay(c.message_s)
    elif mech in ("ipc-bucket", "fp8-bucket"):
        fp8 = mech == "fp8-bucket"
        for b in plan_buckets(sizes, int(case.params["bucket_bytes"])):
            bsizes = [sizes[i] for i in b]
            nbytes = sum(aligned(s) for s in bsizes)
            yield tw.kernel(2 * nbytes)  # BucketPlan.pack: read and write the bucket
            fixed = c.bucket_fixed_s
            if fp8:
                yield tw.kernel(1.5 * nbytes)  # read bf16, write fp8 (block scales: a 1/256 extra)
                fixed += c.fp8_bucket_fixed_s
                bsizes = [s // 2 for s in bsizes]
            cpu = tw.delay(fixed)
            cpu, stream = tw.issue(_groups(bsizes, SEGMENTS), c.bucket_per_tensor_s, GPU, GPU, cpu, None)
            yield tw.both(cpu, stream)
    elif mech == "host-staged":
        offs_groups = _groups(sizes, SEGMENTS * 8)
        cpu, stream = tw.issue(offs_groups, c.host_per_tensor_s, GPU, HOST, None, None)
        yield tw.both(cpu, stream)
        cpu = tw.delay(c.message_s)
        stream = None
        for b in plan_buckets(sizes, int(case.params["bucket_bytes"])):
            bsizes = [sizes[i] for i in b]
            cpu = tw.delay(c.host_bucket_fixed_s, after=[cpu])
            stream = tw.copy(HOST, GPU, sum(aligned(s) for s in bsizes), after=[cpu, stream])
            cpu, stream = tw.issue(_groups(bsizes, SEGMENTS), c.host_per_tensor_s, GPU, GPU, cpu, stream)
        yield tw.both(cpu, stream)
    elif mech in ("pool-pull", "pool-zero-copy"):
        yield tw.delay(c.publish_fixed_s + n * c.publish_per_tensor_s)
        tw.marks["publish_s"] = tw.sim.now
        yield tw.delay(c.message_s)
        if mech == "pool-zero-copy":
            yield tw.delay(n * c.views_per_tensor_s)
        else:
            cpu, stream = tw.issue(_groups(sizes, SEGMENTS * 8), c.read_per_tensor_s, GPU, GPU, None, None)
            yield tw.both(cpu, stream)
    elif mech == "ipc-pull-readers":
        yield from _pull_readers_twin(case, facts, tw, sizes)
    elif mech == "relay":
        yield from _relay_twin(case, facts, tw, sizes)
    elif mech.startswith("nccl-"):
        yield from _nccl_twin(case, tw, sizes)
    else:
        raise CalibrationError(f"case '{case.id}': no simulated twin for mechanism '{mech}'")


def _reader_gpus(case: WorkloadCase, facts: dict[str, Any]) -> list[str]:
    k = int(case.params["readers"])
    return [GPU] * k if case.params.get("colocated") else [f"gpu{d}" for d in facts.get("devices", range(1, k + 1))]


def _pull_readers_twin(case: WorkloadCase, facts: dict[str, Any], tw: _Twin, sizes: list[int]) -> Generator:
    """Publish, then every reader copies the whole slot at once (one flat copy: one `read_consistent` host
    cost each); readers on one GPU queue on its copy engine, readers of one trainer GPU share its egress."""
    c = tw.c
    slot = float(facts.get("slot_bytes", sum(aligned(s) for s in sizes)))
    yield tw.delay(c.publish_fixed_s + c.message_s)
    begin = tw.sim.now
    reads = [tw.copy(GPU, g, slot, after=[tw.delay(c.read_per_tensor_s)]) for g in _reader_gpus(case, facts)]
    yield tw.both(*reads)
    tw.marks["readers_s"] = tw.sim.now - begin


def _relay_twin(case: WorkloadCase, facts: dict[str, Any], tw: _Twin, sizes: list[int]) -> Generator:
    """A chain of hops: hop 1 copies each chunk from the trainer's pool, hop h from hop h-1 once it holds it.
    Each chunk costs one copy issue and synchronisation on the host (the fitted `read_per_tensor_s`, the
    nearest measured code path: the relay's own per-chunk cost is not fitted), then each hop publishes."""
    c = tw.c
    slot = float(facts.get("slot_bytes", sum(aligned(s) for s in sizes)))
    chunk = float(case.params.get("chunk_bytes", 64 << 20))
    n_chunks = max(1, math.ceil(slot / chunk))
    groups = min(n_chunks, SEGMENTS * 8)
    hops = _reader_gpus(case, facts)
    yield tw.delay(c.publish_fixed_s + c.message_s)
    begin = tw.sim.now
    prev_hop: list[Any] = [None] * groups
    ends = []
    for h, g in enumerate(hops):
        src = GPU if h == 0 else hops[h - 1]
        last = None
        mine = []
        for k in range(groups):
            lo, hi = k * n_chunks // groups, (k + 1) * n_chunks // groups
            nbytes = min(slot, hi * chunk) - lo * chunk
            cpu = tw.delay((hi - lo) * c.read_per_tensor_s, after=[last, prev_hop[k]])
            last = tw.copy(src, g, nbytes, after=[cpu], fixed_cost_s=(hi - lo - 1) * tw.lone_s(src, g, 0.0))
            mine.append(last)
        ends.append(tw.delay(c.publish_fixed_s, after=[last]))
        prev_hop = mine
    yield tw.both(*ends)
    tw.marks["readers_s"] = tw.sim.now - begin


def _nccl_twin(case: WorkloadCase, tw: _Twin, sizes: list[int]) -> Generator:
    """Rank 0 broadcasts to ranks 1..N along a ring (the engine's ring model, with the profile's fitted
    `collectives.broadcast` where it has one): one flat buffer, one call per tensor (each call issued from
    Python: the fitted `copy_per_tensor_s`, the nearest measured host cost), or packed buckets that every
    receiver unpacks."""
    from fabricsim.simcore.collectives import NCCL_CHUNK_BYTES, ring_broadcast

    ring = [GPU] + [f"gpu{k}" for k in range(1, int(case.params["readers"]) + 1)]
    c = tw.c
    if case.mech == "nccl-flat":
        yield ring_broadcast(tw.sim, ring, float(sum(sizes)), chunk_bytes=NCCL_CHUNK_BYTES, name=tw._id("bcast"))
    elif case.mech == "nccl-tensor":
        for k, part in _groups(sizes, SEGMENTS * 8):
            yield tw.delay(k * c.copy_per_tensor_s)
            yield ring_broadcast(tw.sim, ring, float(sum(part)), chunk_bytes=NCCL_CHUNK_BYTES, name=tw._id("bcast"),
                                 repeats=k)
    else:
        for b in plan_buckets(sizes, int(case.params["bucket_bytes"])):
            nbytes = float(sum(aligned(sizes[i]) for i in b))
            yield tw.kernel(2 * nbytes)
            yield ring_broadcast(tw.sim, ring, nbytes, chunk_bytes=NCCL_CHUNK_BYTES, name=tw._id("bcast"))
            yield tw.both(*[tw.sim.task(tw._id("unpack"), g, hbm_bytes=2 * nbytes, tag="kernel") for g in ring[1:]])


def _kv_twin(case: WorkloadCase, tw: _Twin, variant: str) -> Generator:
    """KV cases move pages with SM-driven kernels (`kernels.paged_kv`): copies of the profile's `sm` mechanism
    where it has one (fitted by the copy suite on the Triton bulk copy), else copy-engine copies; either way
    they share HBM with kernels max-min (the engine's model). `sm-fifo`: SM-driven copies and kernels served one
    after another on the GPU's SMs (a candidate mechanism, reported beside the default, never in its place)."""
    p = case.params
    nbytes = int(p["pages"]) * int(p["page_bytes"])
    mech = "sm" if "sm" in tw.sim.topology.mechanisms else "ce"
    sm = f"{GPU}.sm" if variant == "sm-fifo" else None

    def page_copy(src: str, dst: str, after: Iterable[Any] = ()) -> Any:
        return tw.copy(src, dst, nbytes, after=after, engine=sm, mechanism=mech)

    if case.mech in ("kv-offload-decode", "kv-prefetch-decode"):
        src, dst = (GPU, HOST) if case.mech == "kv-offload-decode" else (HOST, GPU)
        steps, db = int(p["steps"]), int(p["decode_bytes"])
        copy = page_copy(src, dst)
        step = None
        for _ in range(steps):
            # sm-fifo: a decode step is SM work on the same queue (its HBM traffic: a read and a write of db)
            step = tw.copy(GPU, GPU, db, after=[step], engine=sm) if sm else tw.kernel(2 * db, after=[step])
        yield copy
        tw.marks["copy_s"] = tw.sim.now
        yield step
        tw.marks["decode_s"] = tw.sim.now
    elif case.mech == "kv-topk-fetch":
        yield page_copy(HOST, GPU)
    elif case.mech == "kv-swap":
        yield page_copy(GPU, HOST)
        tw.marks["swap_out_s"] = tw.sim.now
        yield page_copy(HOST, GPU)
    elif case.mech == "kv-prefix-copy":
        yield page_copy(GPU, GPU)
        yield page_copy(GPU, GPU)
    else:
        raise CalibrationError(f"case '{case.id}': no simulated twin for mechanism '{case.mech}'")


def simulate_workload(case: WorkloadCase, facts: dict[str, Any], topo: Topology, costs: WorkloadCosts,
                      variant: str = "default") -> dict[str, float]:
    """Predicted observables of one case: `time_s` always, and the parts its GPU run also timed
    (`rollout_s`, `publish_s`, `copy_s`, `decode_s`, `swap_out_s`) where the twin has them."""
    if case.gpus > len(topo.gpus()):
        raise CalibrationError(f"case '{case.id}' needs {case.gpus} GPUs; topology '{topo.name}' has fewer")
    tw = _Twin(topo, costs)
    proc = _sync_twin(case, facts, tw) if case.kind == "sync" else _kv_twin(case, tw, variant)
    total = tw.run(proc)
    out = {"time_s": total, **tw.marks}
    if not all(math.isfinite(v) for v in out.values()):
        raise CalibrationError(f"case '{case.id}': the twin gave a non-finite time")
    return out


def measured_observables(case: WorkloadCase, measured: dict[str, Any]) -> dict[str, float]:
    """The measured counterparts of `simulate_workload`'s observables (medians)."""
    out = {"time_s": float(measured["time_s"])}
    for key, src in (("rollout_s", "rollout_s"), ("publish_s", "publish_s")):
        if isinstance(measured.get(src), list) and measured[src]:
            xs = sorted(measured[src])
            out[key] = float(xs[len(xs) // 2])
    if isinstance(measured.get("reader_s"), list) and measured["reader_s"]:
        spans = sorted(max(r) for r in measured["reader_s"])
        out["readers_s"] = float(spans[len(spans) // 2])
    for key in ("copy_s", "decode_s", "swap_out_s"):
        if f"{key[:-2]}_median_s" in measured:
            out[key] = float(measured[f"{key[:-2]}_median_s"])
    return out
