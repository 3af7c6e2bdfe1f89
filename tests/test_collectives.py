"""The one collective model (simcore.collectives): ring schedules, fitted parameters, closed forms, and its
three consumers (scenario files / validate, weight sync's builders, the serving loop's TP all-reduce)."""

from __future__ import annotations

import copy

import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import CollectiveParams
from fabricsim.hwmodels.topology import path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.simcore.collectives import OPS, collective_time, ring_schedule, schedule_collective
from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.scenario import parse_scenario
from fabricsim.workloads.models import get
from fabricsim.workloads.requests import Request
from fabricsim.workloads.serving import serve

MiB = 1 << 20


def _with(topo, **params: CollectiveParams):
    topo = copy.copy(topo)
    topo.collectives = dict(params)
    return topo


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("size", [4 * MiB + 3, 1 << 30])
@pytest.mark.parametrize("fitted", [False, True])
def test_a_lone_call_takes_its_closed_form(op: str, n: int, size: int, fitted: bool) -> None:
    topo = presets.get("hgx-h200-8", calibration=None)
    if fitted:  # a cap below the links, a size curve and a fixed cost: all three must show in the time
        topo = _with(topo, **{op: CollectiveParams(bus_Bps=150e9, fixed_s=12e-6,
                                                   size_efficiency=((1 << 20, 0.5), (1 << 28, 1.0)))})
    gpus = [f"gpu{i}" for i in range(n)]
    sim = Simulation(topo)
    schedule_collective(sim, "c", op, gpus, size)
    res = sim.run()
    assert res.makespan_s == pytest.approx(collective_time(topo, op, size, gpus), rel=1e-9)
    assert res["c"].finish_s == pytest.approx(res.makespan_s, rel=1e-12)


def test_the_fitted_parameters_slow_the_call_down_as_they_say() -> None:
    base = presets.get("hgx-h200-8", calibration=None)
    gpus = ["gpu0", "gpu1"]
    plain = collective_time(base, "all_reduce", 1 << 30, gpus)
    capped = collective_time(_with(base, all_reduce=CollectiveParams(bus_Bps=100e9, fixed_s=1e-3)), "all_reduce",
                             1 << 30, gpus)
    share = (1 << 30) / 2
    assert capped == pytest.approx(1e-3 + 2 * (share / 100e9) + 2 * base.path("gpu0", "gpu1").latency_s, rel=1e-9)
    assert capped > plain


def test_ring_schedules_conserve_what_a_ring_must_move() -> None:
    gpus = [f"gpu{i}" for i in range(5)]
    ar = ring_schedule("all_reduce", 10 * MiB, gpus)
    assert sum(t["bytes"] for t in ar) == 2 * 5 * (10 * MiB * 4 // 5)
    assert {(t["src"], t["dst"]) for t in ar} == {(a, b) for a, b in zip(gpus, gpus[1:] + gpus[:1], strict=True)}
    with pytest.raises(ValueError, match="unknown collective"):
        ring_schedule("all_to_some", 1, gpus)


def test_scenario_collectives_run_through_the_model_and_can_be_waited_for() -> None:
    scen = parse_scenario({
        "topology": "h200-2",
        "collectives": [{"id": "ar", "op": "all_reduce", "gpus": ["gpu0", "gpu1"], "bytes": "256MiB"}],
        "transfers": [{"id": "after-ar", "src": "gpu0", "dst": "host", "bytes": "1MiB", "after": ["ar"]}],
    })
    sim = scen.build()
    topo = sim.topology
    assert "all_reduce" in topo.collectives  # the bundled h200x2 profile fitted it
    res = sim.run()
    assert res["ar"].finish_s == pytest.approx(collective_time(topo, "all_reduce", 256 * MiB, ["gpu0", "gpu1"]),
                                               rel=1e-9)
    assert res["after-ar"].begin_s >= res["ar"].finish_s


@pytest.mark.parametrize("op", ["all_gather", "all_reduce"])
def test_a_call_of_fewer_bytes_than_ranks_sends_a_byte_on_every_link(op: str) -> None:
    """(n - 1) / n of 1 byte rounds down to 0, which a transfer refuses ("size must be > 0, got 0", for a size of
    1 the user gave): each link carries one byte instead."""
    gpus = [f"gpu{i}" for i in range(8)]
    assert {t["bytes"] for t in ring_schedule(op, 1, gpus)} == {1}
    res = parse_scenario({"topology": "hgx-h200-8", "collectives": [{"id": "c", "op": op, "gpus": gpus, "bytes": 1}]},
                         source="s.yaml").run()
    assert res["c"].finish_s > 0


def test_waiting_for_a_ring_copy_says_to_wait_for_the_call() -> None:
    scenario = {"topology": "hgx-h200-8",
                "collectives": [{"id": "ar", "op": "all_reduce", "gpus": "gpu0-3", "bytes": 1}],
                "transfers": [{"id": "t", "src": "gpu0", "dst": "gpu1", "bytes": 1, "after": ["ar.rs0"]}]}
    with pytest.raises(ScenarioError, match=r"unknown id 'ar.rs0' \(a collective's ring copies .* the call 'ar'"):
        parse_scenario(scenario, source="s.yaml")


def test_an_id_taken_from_an_items_position_that_clashes_is_named_as_such() -> None:
    scenario = {"topology": "hgx-h200-8", "transfers": [{"id": "c0", "src": "gpu0", "dst": "gpu1", "bytes": 1}],
                "collectives": [{"op": "all_reduce", "gpus": ["gpu0", "gpu1"], "bytes": 1}]}
    with pytest.raises(ScenarioError, match=r"duplicate id 'c0': transfers\[0\]\.id and collectives\[0\] \(no id: "
                                            r"named by its position\)"):
        parse_scenario(scenario, source="s.yaml")


@pytest.mark.parametrize("entry, match", [
    ({"op": "gossip", "gpus": ["gpu0", "gpu1"], "bytes": 1}, "op: expected one of"),
    ({"op": "all_reduce", "gpus": ["gpu0"], "bytes": 1}, "gpus: expected a list of two or more"),
    ({"op": "all_reduce", "gpus": ["gpu0", "gpu0"], "bytes": 1}, "appears twice"),
    ({"op": "all_reduce", "gpus": ["gpu0", "gpu1"]}, "bytes: missing"),
    ({"op": "all_reduce", "gpus": ["gpu0", "gpu1"], "bytes": 1, "root": 0}, "unknown key 'root'"),
])
def test_bad_collective_entries_name_the_field(entry: dict, match: str) -> None:
    with pytest.raises(ScenarioError, match=rf"s\.yaml: collectives\[0\].*{match}"):
        parse_scenario({"topology": "h200-2", "collectives": [entry]}, source="s.yaml")


def test_serving_tp_allreduce_uses_the_fitted_all_reduce() -> None:
    """h200x2's profile fitted `all_reduce`: the TP-2 ring pays its fixed cost per call (2 per layer) instead of
    the uncalibrated knob, so changing only the fitted fixed cost moves the decode step by exactly that much."""
    model = get("Llama-3-8B")
    reqs = [Request(i, 0.0, 512, 2) for i in range(4)]
    base = presets.get("h200-2")
    fitted = base.collectives["all_reduce"]

    def tpot(topo) -> float:
        res = serve(topo, reqs, "hbm-only", model=model, tp=2, token_budget=4 * 512 + 4, max_batch_seqs=4)
        return float(res.tpot_s[0])

    slower = _with(base, **{**base.collectives,
                            "all_reduce": CollectiveParams(fitted.bus_Bps, fitted.fixed_s + 1e-4,
                                                           fitted.size_efficiency)})
    assert tpot(slower) - tpot(base) == pytest.approx(2 * model.num_layers * 1e-4, rel=1e-6)


def test_ring_order_reads_node_numbers_as_numbers():
    """On 16 nodes the ring runs node0, node1, ..., node15 (text order put node10-15 between node1 and node2, so
    most hops crossed leaf switches that a real ring over ranks in node order keeps inside a leaf), GPUs in order
    within each node, and the root first when given."""
    from fabricsim.simcore.collectives import ring_order

    topo = presets.get("cluster-16x8", calibration=None)
    gpus = [f"node{n}.gpu{g}" for n in range(15, -1, -1) for g in (7, 0, 3)]
    ring = ring_order(topo, gpus)
    assert ring == [f"node{n}.gpu{g}" for n in range(16) for g in (0, 3, 7)]
    rooted = ring_order(topo, gpus, first="node9.gpu3")
    assert rooted[0] == "node9.gpu3" and rooted[1:] == [g for g in ring if g != "node9.gpu3"]


@pytest.mark.parametrize("calibration", [None, "default"])
@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("size", [1000, 1 << 20, (512 << 10) + 1, 64 * MiB + 5])
def test_a_scenario_broadcast_is_weight_syncs_ring(calibration, n: int, size: int) -> None:
    """One model of a broadcast: a scenario file's call (`schedule_collective`) takes what weight sync's ring
    (`ring_broadcast`, NCCL's 512 KiB chunks) takes, and its last rank has the data no sooner than the first chunk
    could cross every hop. All hops started at once before (a trial): 1 MiB to 8 GPUs took one 2-GPU copy's
    5.2 us where weight sync's ring took 28.2 us."""
    from fabricsim.simcore.collectives import NCCL_CHUNK_BYTES, ring_broadcast

    topo = presets.get("hgx-h200-8", calibration=calibration)
    gpus = [f"gpu{i}" for i in range(n)]
    sim = Simulation(topo)
    schedule_collective(sim, "c", "broadcast", gpus, size)
    scenario = sim.run().makespan_s
    sim = Simulation(topo)
    ring_broadcast(sim, gpus, float(size), chunk_bytes=NCCL_CHUNK_BYTES, name="b", explicit=False)
    assert scenario == pytest.approx(sim.run().makespan_s, rel=1e-9)
    assert scenario == pytest.approx(collective_time(topo, "broadcast", size, gpus), rel=1e-9)
    # by hand: the fitted call cost, each hop's latency, n-2 fills of the first chunk at link speed, and the bytes
    # at the ring's rate (the link, the fitted cap for the call's size, the path's efficiency for it)
    lat = topo.path("gpu0", "gpu1").latency_s
    link = path_bandwidth_Bps(topo, "gpu0", "gpu1")
    cal = topo.collectives.get("broadcast")
    rate = min(link, cal.rate_cap(size) if cal else link, path_bandwidth_Bps(topo, "gpu0", "gpu1", size))
    fixed = cal.fixed_s if cal else 0.0
    hand = fixed + (n - 1) * lat + (n - 2) * min(size, NCCL_CHUNK_BYTES) / link + size / rate
    assert scenario == pytest.approx(hand, rel=1e-12)


def test_a_broadcast_takes_no_less_time_for_more_bytes() -> None:
    """The fitted cap is a whole call's efficiency, measured on 2 GPUs (0.29 at 1 MiB); taken for the first chunk's
    fill too, an 8-GPU broadcast of 1 MiB took 85 us and one of 2 MiB 77 (a review). The fill is at link speed."""
    topo = presets.get("hgx-h200-8")
    gpus = [f"gpu{i}" for i in range(8)]
    sizes = sorted({int(2 ** (k / 4)) for k in range(40, 121)})
    times = [collective_time(topo, "broadcast", s, gpus) for s in sizes]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))


def test_a_one_gpu_call_takes_no_time() -> None:
    for op in OPS:
        sim = Simulation(presets.get("hgx-h200-8"))
        schedule_collective(sim, "c", op, ["gpu0"], 1 << 20)
        assert sim.run().makespan_s == 0.0
