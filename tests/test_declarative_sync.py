"""Declarative weight-sync strategies (`Strategy.declarative`) run on the compiled loop and give the answers the
procedural path gives: the same procedure run as a simpy process (the reference) and on the compiled loop agree
on sync time, stall, flow events and every record to 1e-9 relative, on calibrated and uncalibrated machines, with
and without transforms. Also the pieces that keep such work declarative: `Simulation.all_of`, `lone_copy`, the
fluid ring broadcast as a chain of delays, and the host index of `nearest_host`."""

from __future__ import annotations

import math

import pytest

import fabricsim.simcore.simulation as simulation_module
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.topology import nearest_host, path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.simcore.collectives import ring_bottleneck_Bps, ring_broadcast
from fabricsim.studies.cluster_scale import setup_of
from fabricsim.workloads import models
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.placement import FSDPLayout, MegatronLayout, RolloutLayout
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync
from fabricsim.workloads.weightsync.base import Strategy

G = [f"gpu{i}" for i in range(8)]
DECLARATIVE = ["nccl-broadcast", "host-staged", "rdma-p2p", "delta:nccl-broadcast", "delta:host-staged",
               "delta:rdma-p2p", "shared-pool:pull-on-publish", "shared-pool:zero-copy", "shared-pool:relay"]


def _setups() -> dict[str, SyncSetup]:
    hgx = presets.get("hgx-h200-8")  # calibrated: NCCL's fitted fixed cost and caps, FIFO copy engines
    raw = presets.get("hgx-h200-8", calibration=None)
    llama, qwen = models.get("Llama-3-8B"), models.get("Qwen3-30B-A3B")
    return {
        "split-calibrated": SyncSetup(hgx, qwen, MegatronLayout(G[:4], tp=2, ep=2), RolloutLayout(G[4:], tp=4)),
        "colocated": SyncSetup(raw, llama, FSDPLayout(G), RolloutLayout(G, tp=2)),
        "split-fp8": SyncSetup(raw, llama, FSDPLayout(G[:4]), RolloutLayout(G[4:], tp=1), rollout_dtype="fp8"),
        "cluster-32": setup_of({"model": "Qwen3-235B-A22B", "gpus": 32}),
    }


SETUPS = _setups()


def _run(setup: SyncSetup, strategy: Strategy, monkeypatch, *, declarative: bool) -> tuple:
    compiled = []
    real = simulation_module.run_compiled

    def counting(*a, **kw):
        compiled.append(1)
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(simulation_module, "run_compiled", counting)
        m.setattr(type(strategy), "declarative", declarative)
        res = simulate_sync(setup, strategy, keep_result=True)
    return res, bool(compiled)


@pytest.mark.parametrize("name", DECLARATIVE)
@pytest.mark.parametrize("where", list(SETUPS))
def test_declarative_strategy_on_the_compiled_loop_matches_the_procedural_run(name, where, monkeypatch) -> None:
    setup = SETUPS[where]
    strategy = get(name)
    assert strategy.declarative
    fast, took_compiled = _run(setup, strategy, monkeypatch, declarative=True)
    ref, ref_compiled = _run(setup, strategy, monkeypatch, declarative=False)
    assert fast.feasible == ref.feasible, (fast.reason, ref.reason)
    if not fast.feasible:
        assert fast.reason == ref.reason
        return
    assert took_compiled and not ref_compiled
    for metric in ("sync_s", "stall_s", "peak_extra_bytes", "stale_fraction", "decode_step_during_sync_s",
                   "read_retries", "version_lag"):
        a, b = getattr(fast, metric), getattr(ref, metric)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b)), (metric, a, b)
    assert fast.flow_events == ref.flow_events
    assert fast.bytes_by_class.keys() == ref.bytes_by_class.keys()
    for cls, b in ref.bytes_by_class.items():
        assert math.isclose(fast.bytes_by_class[cls], b, rel_tol=1e-9)
    _same_records(fast.sim_result.records, ref.sim_result.records)


def _same_records(fast: list, ref: list) -> None:
    """Every record of the reference run, at the same times; the fast run may add only joins (`Simulation.all_of`
    over declared items: zero delays, where the procedural run used a simpy condition, which leaves no record).
    Records are matched by their name less the context's sequence numbers (any all-digit part), in declaration
    order: the two runs number their items differently (a process names its items when it runs)."""
    def by_stem(records: list) -> dict[str, list]:
        out: dict[str, list] = {}
        for r in records:
            out.setdefault(".".join(p for p in r.id.split(".") if not p.isdigit()), []).append(r)
        return out

    mine, theirs = by_stem(fast), by_stem(ref)
    for stem, recs in theirs.items():
        assert len(mine.get(stem, ())) == len(recs), stem
        for ra, rb in zip(mine.pop(stem), recs, strict=True):
            for field in ("start_s", "begin_s", "finish_s"):
                x, y = getattr(ra, field), getattr(rb, field)
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15), (ra.id, field, x, y)
    for extra in (r for recs in mine.values() for r in recs):
        assert extra.kind == "delay" and extra.finish_s == extra.begin_s, extra


def _cluster_calibrated() -> SyncSetup:
    """A calibrated multi-node machine: copy engines on the NVLink hops, none across nodes."""
    from fabricsim.hwmodels.calibration import bundled_profile_path, load_profile

    c4 = presets.get("cluster-4x8-h200", calibration=load_profile(bundled_profile_path("h200x8")))
    g = c4.gpus()
    return SyncSetup(c4, models.get("Qwen3-30B-A3B"), MegatronLayout(g[:8], tp=2, ep=2), RolloutLayout(g[8:], tp=4),
                     rollout_dtype="fp8")


# (sync_s, stall_s) of the procedural implementations before any strategy was declarative (commit fc4c614: check it
# out and run the same `simulate_sync` calls). The fast paths since (ring hops' and loads' fixed costs folded where no
# copy engine queues, declared joins, watermark slots) must give these answers: the procedural run of the new code
# cannot catch a change of semantics. host-staged's c4cal and cluster-32 answers since its host-to-host copies
# between machines stripe over the sockets' NICs (`Topology._equal_routes`), on both paths.
GOLDEN = {
    # every stall_s below since a coarsened unit's first live write is its first real unit's, its share of the way
    # from the unit's start (`SyncContext.live_write_at(since=, first=)`; an rdma-p2p task's start is its previous
    # fetch's end, before its calls), not the whole unit's end: the sync times are the same
    # nccl-broadcast's since a simulated bucket's gather and loads pay each copy's latency once per real bucket
    # (`collectives.gather`'s repeats), and since its root gathers only what it does not hold (it counted a share
    # of the data-parallel replicas: +0.17% here, the rest now spread over every other GPU by what it holds), on
    # both paths
    ("c4cal", "nccl-broadcast", (("overlap", True), ("call_latency_s", 1e-3))):
        (0.8739948819055452, 0.8616360782811076),
    ("c4cal", "host-staged", ()): (2.017141184080392, 0.902997688569672),
    # rdma-p2p's since its full-tensor fetches are NCCL all-gathers, SM kernels that queue on no copy engine (they
    # waited behind the writes in the copy engine's FIFO), and each simulated task pays its real tasks' calls and
    # copy latencies (`task_overhead_s`; each copy its own mechanism's latency per real task, held on its engine:
    # `Simulation.transfers`' latencies), on both paths. hgx-pp4 came out 22% faster: its tasks
    # have nothing to fetch, so all of a GPU's tasks began writing at once, in lockstep on the same rotated peer
    # (one lane each); their calls now stagger them
    ("c4cal", "rdma-p2p", ()): (0.5329282769244199, 0.5194042134787837),
    ("c4cal", "rdma-p2p", (("task_bytes", 3.0 * 2**27), ("watermark_bytes", 9.0 * 2**27), ("max_sim_tasks", 7),
                           ("write_overhead_s", 1e-4))): (2.9124109716064788, 2.6534502116031753),
    ("hgx-pp4", "rdma-p2p", (("task_bytes", 2.0**27), ("watermark_bytes", 2.0**28), ("max_sim_tasks", 8),
                             ("outstanding", 1))): (0.013557858212033532, 0.013519122732128654),
    ("hgx-pp4", "host-staged", ()): (0.218233740770464, 0.10116353663151126),
    # host-staged's cluster-32 since a simulated round's H2D, IPC and reload copies pay each real round's latency
    # (+1.6e-6 relative; the others have one round a bucket), on both paths
    ("cluster-32", "host-staged", ()): (9.197432216350244, 6.975172611314837),
    ("cluster-32", "rdma-p2p", (("task_bytes", 2.0**30), ("watermark_bytes", 2.0**31), ("max_sim_tasks", 6))):
        (1.0174591340473063, 1.0049791375825912),
    # the shared pool's readers as processes (commit 46bb208), before its declared path; the relay's fp8 cases
    # (all but split-calibrated) since its chains convert at their head and forward fp8, as processes and declared;
    # fp8 engines' flip copies since they copy the weights' block scales too (`SyncSetup.rollout_ratio`, both paths)
    ("c4cal", "shared-pool:pull-on-publish", ()): (1.3418660246407044, 2e-05),
    ("c4cal", "shared-pool:pull-on-publish", (("flip_copy", True),)): (1.3454371001630616, 0.6715071812614879),
    ("hgx-pp4", "shared-pool:zero-copy", ()): (0.005428669839259117, 0.0),
    ("split-calibrated", "shared-pool:pull-on-publish", (("double_buffered", False), ("publish_s", 1e-3))):
        (0.1495219203604637, 2e-05),
    ("split-fp8", "shared-pool:pull-on-publish", ()): (0.05519327692975734, 2e-05),
    ("cluster-32", "shared-pool:pull-on-publish", ()): (1.3206866117640679, 2e-05),
    # the relay's, since each simulated chunk pays the version checks and copy latencies of the real chunks it stands
    # for (`SharedPool._checks`, `_head_latency`: a chain's head and every later hop; the same on both paths)
    ("c4cal", "shared-pool:relay", ()): (0.6737856154672095, 2e-05),
    ("c4cal", "shared-pool:relay", (("chunk_bytes", 2.0**24), ("max_sim_chunks", 5))): (0.7644011095569384, 2e-05),
    ("split-calibrated", "shared-pool:relay", ()): (0.11817909227068082, 2e-05),
    ("cluster-32", "shared-pool:relay", ()): (1.304585956967944, 2e-05),
    ("split-fp8", "shared-pool:relay", (("flip_copy", True),)): (0.051378549824337524, 0.004756833561246815),
}
# the decode step beside the pull, same commit
GOLDEN_STEP = {("c4cal", (("flip_copy", True),)): 0.0032304030245645997,
               ("split-calibrated", (("double_buffered", False), ("publish_s", 1e-3))): 0.005433726299410418,
               ("split-fp8", ()): 0.010656404299350898, ("cluster-32", ()): 0.009702553871900678}


def _golden_setup(where: str) -> SyncSetup:
    if where == "c4cal":
        return _cluster_calibrated()
    if where == "hgx-pp4":
        return SyncSetup(presets.get("hgx-h200-8", calibration=None), models.get("Llama-3-8B"),
                         MegatronLayout(G[:4], pp=4), RolloutLayout(G[4:], tp=4))
    return SETUPS[where]


@pytest.mark.parametrize("case", list(GOLDEN), ids=lambda c: f"{c[0]}-{c[1]}-{len(c[2])}knobs")
def test_answers_are_those_of_the_procedural_implementation(case) -> None:
    where, name, knobs = case
    res = simulate_sync(_golden_setup(where), get(name, **dict(knobs)))
    assert res.feasible, res.reason
    sync_s, stall_s = GOLDEN[case]
    assert math.isclose(res.sync_s, sync_s, rel_tol=1e-9), (res.sync_s, sync_s)
    assert math.isclose(res.stall_s, stall_s, rel_tol=1e-9), (res.stall_s, stall_s)


@pytest.mark.parametrize("case", list(GOLDEN_STEP), ids=lambda c: c[0])
def test_decode_step_beside_the_pull_is_that_of_the_procedural_readers(case) -> None:
    where, knobs = case
    res = simulate_sync(_golden_setup(where), get("shared-pool:pull-on-publish", **dict(knobs)))
    assert math.isclose(res.decode_step_during_sync_s, GOLDEN_STEP[case], rel_tol=1e-9)


def test_shared_pool_is_declarative_only_while_no_read_can_overlap_a_publish() -> None:
    """Later publishes can tear a read: a retry decided while the run goes, which only a process can follow."""
    for mode in ("pull-on-publish", "zero-copy", "relay"):
        assert get(f"shared-pool:{mode}").declarative
        assert not get(f"shared-pool:{mode}", publishes=3, publish_interval_s=1e-3).declarative


def test_rdma_is_declarative_only_while_no_task_can_wait_for_a_slot() -> None:
    """Tasks that outnumber watermark slots take them as any earlier task frees one (a semaphore): a process."""
    assert get("rdma-p2p").declarative  # 4 simulated tasks, 4 slots
    assert not get("rdma-p2p", watermark_bytes=2 * 2**30, task_bytes=2**30, max_sim_tasks=6).declarative
    assert get("rdma-p2p", watermark_bytes=6 * 2**30, task_bytes=2**30, max_sim_tasks=6).declarative


def test_simpy_loop_gives_the_same_declarative_answer(monkeypatch) -> None:
    setup, strategy = SETUPS["cluster-32"], get("host-staged")
    fast = simulate_sync(setup, strategy)
    monkeypatch.setenv("FABRICSIM_LOOP", "simpy")
    slow = simulate_sync(setup, strategy)
    assert math.isclose(fast.sync_s, slow.sync_s, rel_tol=1e-9)
    assert math.isclose(fast.stall_s, slow.stall_s, rel_tol=1e-9, abs_tol=1e-15)


def test_a_declarative_procedure_that_yields_twice_is_a_workload_error(monkeypatch) -> None:
    strategy = get("nccl-broadcast")
    real = type(strategy).procedure

    def twice(self, ctx):
        yield from real(self, ctx)
        yield ctx.sim.delay("late", 1.0)

    monkeypatch.setattr(type(strategy), "procedure", twice)
    with pytest.raises(WorkloadError, match="yielded after its end"):
        simulate_sync(SETUPS["colocated"], strategy)


def test_all_of_declared_items_is_a_declared_join_at_the_last_finish() -> None:
    sim = Simulation(presets.get("hgx-h200-8", calibration=None))
    a = sim.transfer("a", "gpu0", "gpu1", 1e9)
    b = sim.transfer("b", "gpu2", "gpu3", 3e9)
    both = sim.all_of([a, b], id="both")
    assert sim.declared(both) and sim.all_of([a]) is a
    after = sim.delay("after", 1e-3, after=[both])
    res = sim.run()
    rec = {r.id: r for r in res.records}
    assert rec["both"].finish_s == max(rec["a"].finish_s, rec["b"].finish_s)
    assert rec["after"].finish_s == pytest.approx(rec["both"].finish_s + 1e-3, rel=1e-12)
    assert after.value.finish_s == rec["after"].finish_s


def test_all_of_with_a_foreign_event_is_a_plain_condition() -> None:
    sim = Simulation(presets.get("hgx-h200-8", calibration=None))
    a = sim.transfer("a", "gpu0", "gpu1", 1e9)
    outside = sim.env.timeout(2.0)
    joined = sim.all_of([a, outside])
    assert not sim.declared(joined)
    sim.process(_wait(joined))
    sim.run()
    assert sim.now == pytest.approx(2.0)
    empty = Simulation(presets.get("hgx-h200-8", calibration=None)).all_of([])
    assert empty.env is not None


def _wait(ev):
    yield ev


@pytest.mark.parametrize("preset", ["hgx-h200-8", "cluster-4x8", "cluster-2x8-rail"])
def test_lone_copy_is_path_bandwidth_and_latency(preset) -> None:
    topo = presets.get(preset, calibration=None)
    sim = Simulation(topo)
    gpus = topo.gpus()
    for a, b in [(gpus[0], gpus[1]), (gpus[1], gpus[-1]), (gpus[-1], gpus[0])]:
        assert sim.lone_copy(a, b) == (path_bandwidth_Bps(topo, a, b), topo.path(a, b).latency_s)
        assert sim.lone_copy(a, b) is sim.lone_copy(a, b)  # kept


@pytest.mark.parametrize("preset", ["hgx-h200-8", "h200-2", "pcie-4gpu", "cluster-4x8", "cluster-2x8-rail"])
def test_nearest_host_index_agrees_with_a_scan_of_every_endpoint(preset) -> None:
    topo = presets.get(preset, calibration=None)
    for gpu in topo.gpus():
        node = gpu.rpartition(".")[0]
        prefix = f"{node}." if node else ""
        hosts = [e for e in topo.endpoints() if topo.kind(e) == "host" and e.startswith(prefix)]
        assert nearest_host(topo, gpu) == min(hosts, key=lambda h: (len(topo.path(h, gpu).nodes), h))


def test_fluid_ring_broadcast_is_declared_work_with_the_closed_form_time() -> None:
    topo = presets.get("cluster-4x8", calibration=None)
    ring = [f"node{n}.gpu{i}" for n in range(4) for i in range(8)]
    sim = Simulation(topo)
    S, chunk = 4e9, 4e6
    end = ring_broadcast(sim, ring, S, chunk_bytes=chunk, name="b", explicit=False)
    assert sim.declared(end)
    res = sim.run()
    B = ring_bottleneck_Bps(topo, ring)
    lat = [topo.path(a, b).latency_s for a, b in zip(ring, ring[1:], strict=False)]
    # the last hop starts after n-2 fills and the latencies before it, then moves S at B after its own latency
    expected = (len(ring) - 2) * (chunk / B) + sum(lat) + S / B
    assert res.makespan_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("calibrated", [False, True])
def test_load_setup_time_is_the_copys_fixed_cost_only_off_engines(calibrated) -> None:
    """`SyncContext.load(setup_s=...)` folds the software time into the copy's fixed cost where the copy queues on
    no engine (one item instead of two), and keeps it a delay before the copy where it does (a fixed cost is paid
    holding the engine). Either way the load ends when a delay followed by the copy ends."""
    from fabricsim.workloads.weightsync.base import SyncContext

    topo = presets.get("hgx-h200-8") if calibrated else presets.get("hgx-h200-8", calibration=None)
    setup = SyncSetup(topo, models.get("Llama-3-8B"), FSDPLayout(G[:4]), RolloutLayout(G[4:], tp=1))
    sim = Simulation(topo)
    ctx = SyncContext(sim, setup, None, ())
    first = sim.transfer("first", "gpu0", "gpu4", 1e9)
    folded = ctx.load("gpu4", 5e8, after=[first], setup_s=3e-3, setup_name="reload")
    ref_first = sim.transfer("ref-first", "gpu1", "gpu5", 1e9)
    ref = sim.transfer("ref", "gpu5", "gpu5", 5e8, after=[sim.delay("ref-setup", 3e-3, after=[ref_first])])
    res = sim.run()
    kinds = {r.id.split(".")[0] for r in res.records}
    assert ("reload" in kinds) == calibrated  # a separate delay only where the copy queues on an engine
    assert folded.value.finish_s == pytest.approx(ref.value.finish_s, rel=1e-12)


def test_a_task_larger_than_the_watermark_is_refused_not_raised_to_it():
    """The pipeline silently took the larger of the two as its memory (and reported that peak): a task cannot be
    in flight in less memory than it holds, so the knobs are refused, naming both, from the API as from the CLI."""
    with pytest.raises(WorkloadError, match=r"task_bytes \(2 GiB\) is larger than watermark_bytes \(1 GiB\)"):
        get("rdma-p2p", watermark_bytes=2**30, task_bytes=2 * 2**30)
    assert get("rdma-p2p", watermark_bytes=2**30, task_bytes=2**30)._slots() == 1


def test_rdma_knobs_built_directly_with_a_size_as_text_say_where_text_is_read():
    """`RdmaP2PKnobs(task_bytes="1GiB")` compared a string with a number in the watermark check: a raw TypeError."""
    from fabricsim.workloads.weightsync.rdma_p2p import RdmaP2PKnobs

    with pytest.raises(WorkloadError, match=r"task_bytes: expected a number of bytes, got '1GiB'"):
        RdmaP2PKnobs(task_bytes="1GiB")  # type: ignore[arg-type]
    assert get("rdma-p2p", task_bytes="1GiB").knobs.task_bytes == 2**30
