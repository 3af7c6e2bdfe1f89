"""The fluid engine against closed forms: lone flows, equal sharing, textbook max-min, weights and caps."""

from __future__ import annotations

import pytest
import simpy
from conftest import GBps, line_topology

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
from fabricsim.simcore.fluid import Flow, FluidNetwork, max_min_rates

pytestmark = pytest.mark.usefixtures("both_loops")  # every case on the compiled loop and on simpy


def test_lone_transfer_takes_latency_plus_bytes_over_bandwidth(line):
    sim = Simulation(line)
    sim.transfer("t", "gpu0", "gpu3", 3 * 2**30)
    r = sim.run()
    expected = 3 * 1e-6 + 3 * 2**30 / (10 * GBps)
    assert r["t"].finish_s == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("preset,src,dst", [("h100-1", "host", "gpu0"), ("hgx-h200-8", "gpu0", "gpu5"),
                                            ("hgx-h100-8", "gpu2", "host1"), ("pcie-4gpu", "gpu0", "gpu3"),
                                            ("cluster-2x8", "node0.gpu1", "node1.gpu6"), ("h200-2", "gpu1", "gpu1")])
def test_lone_transfer_on_presets_matches_path_bottleneck(preset, src, dst):
    topo = presets.get(preset, calibration=None)
    nbytes = 1 << 30
    path = topo.path(src, dst, nbytes)
    caps = topo.resources()
    bottleneck = min(caps[r] / c for r, c in path.resources)
    sim = Simulation(topo)
    sim.transfer("t", src, dst, nbytes)
    assert sim.run()["t"].finish_s == pytest.approx(path.latency_s + nbytes / bottleneck, rel=1e-12)


def test_two_equal_transfers_on_one_link_take_twice_as_long(line):
    sim = Simulation(line)
    for i in range(2):
        sim.transfer(f"t{i}", "gpu0", "gpu1", 2**30)
    r = sim.run()
    for i in range(2):
        assert r[f"t{i}"].finish_s == pytest.approx(1e-6 + 2 * 2**30 / (10 * GBps), rel=1e-12)


def test_unequal_sizes_short_flow_leaves_its_share():
    # Sizes S and 2S on one link of capacity B: the short one ends at 2S/B, the long one at 3S/B.
    t = line_topology(1, latency_s=0.0)
    S, B = 1e9, 10 * GBps
    sim = Simulation(t)
    sim.transfer("short", "gpu0", "gpu1", S)
    sim.transfer("long", "gpu0", "gpu1", 2 * S)
    r = sim.run()
    assert r["short"].finish_s == pytest.approx(2 * S / B, rel=1e-12)
    assert r["long"].finish_s == pytest.approx(3 * S / B, rel=1e-12)


def test_textbook_line_one_long_three_short_flows_get_half_each():
    t = line_topology(3, latency_s=0.0)
    sim = Simulation(t, record_rates=True)
    sim.transfer("long", "gpu0", "gpu3", 1e9)
    for i in range(3):
        sim.transfer(f"s{i}", f"gpu{i}", f"gpu{i + 1}", 1e9)
    r = sim.run()
    for rid in ("long", "s0", "s1", "s2"):
        assert sim.rate_segments(rid)[0][1] == pytest.approx(5 * GBps, rel=1e-12)
        assert r[rid].finish_s == pytest.approx(1e9 / (5 * GBps), rel=1e-12)


def test_flow_limited_elsewhere_leaves_its_share_to_others():
    # Link A (cap 1) carries f0, f1; link B (cap 1) carries f0, f2, f3. B is the bottleneck at 1/3 for
    # f0, f2, f3; f1 then takes the rest of A: 2/3.
    flows = [Flow(0, [0, 1], [1, 1], 1.0), Flow(1, [0], [1], 1.0), Flow(2, [1], [1], 1.0), Flow(3, [1], [1], 1.0)]
    rates, load = max_min_rates(flows, [1.0, 1.0])
    assert rates == pytest.approx([1 / 3, 2 / 3, 1 / 3, 1 / 3], rel=1e-12)
    assert load[0] == pytest.approx(1.0) and load[1] == pytest.approx(1.0)


def test_weights_and_rate_caps():
    flows = [Flow(0, [0], [1], 1.0, weight=1.0), Flow(1, [0], [1], 1.0, weight=3.0)]
    rates, _ = max_min_rates(flows, [8.0])
    assert rates == pytest.approx([2.0, 6.0])
    capped = [Flow(0, [0], [1], 1.0, cap=1.0), Flow(1, [0], [1], 1.0), Flow(2, [0], [1], 1.0)]
    rates, _ = max_min_rates(capped, [9.0])
    assert rates == pytest.approx([1.0, 4.0, 4.0])


def test_coefficients_local_copy_draws_hbm_twice():
    topo = presets.get("h100-1", calibration=None)
    hbm = topo.resources()["gpu0.hbm"]
    sim = Simulation(topo)
    sim.transfer("copy", "gpu0", "gpu0", 2**30)
    assert sim.run()["copy"].finish_s == pytest.approx(2 * 2**30 / hbm, rel=1e-12)


def test_many_ties_finish_together_without_event_storm(line):
    sim = Simulation(line)
    for i in range(50):
        sim.transfer(f"t{i}", "gpu0", "gpu1", 1e6 / 3)
    r = sim.run()
    finishes = {round(x.finish_s, 15) for x in r.transfers}
    assert len(finishes) == 1
    assert r.events <= 2 * 50  # one arrival and one departure each, no zero-time loops


def test_staggered_start_and_after_dependencies(line):
    sim = Simulation(line)
    sim.transfer("a", "gpu0", "gpu1", 1e9)
    sim.transfer("b", "gpu1", "gpu2", 1e9, start=0.5)
    sim.transfer("c", "gpu2", "gpu3", 1e9, after=["a", "b"])
    r = sim.run()
    lone = 1e-6 + 1e9 / (10 * GBps)
    assert r["a"].finish_s == pytest.approx(lone)
    assert r["b"].start_s == 0.5 and r["b"].finish_s == pytest.approx(0.5 + lone)
    assert r["c"].start_s == pytest.approx(r["b"].finish_s)
    assert r["c"].finish_s == pytest.approx(r["b"].finish_s + lone)


def test_engine_queue_serialises_in_fifo_order(line):
    sim = Simulation(line)
    for i in range(3):
        sim.transfer(f"t{i}", "gpu0", f"gpu{i + 1}", 1e9, engine="gpu0.ce0")
    r = sim.run()
    lone = [1e-6 * (i + 1) + 1e9 / (10 * GBps) for i in range(3)]
    assert r["t0"].finish_s == pytest.approx(lone[0])
    assert r["t1"].begin_s == pytest.approx(r["t0"].finish_s)
    assert r["t1"].finish_s == pytest.approx(r["t0"].finish_s + lone[1])
    assert r["t2"].finish_s == pytest.approx(r["t1"].finish_s + lone[2])


def test_procedural_generator_waits_on_transfers(line):
    sim = Simulation(line)
    seen = []

    def pipeline():
        for i in range(3):
            yield sim.transfer(f"chunk{i}", "gpu0", "gpu1", 1e8)
            seen.append(sim.now)

    sim.process(pipeline())
    sim.run()
    step = 1e-6 + 1e8 / (10 * GBps)
    assert seen == pytest.approx([step, 2 * step, 3 * step])


def reference_max_min(flows, capacity):
    """Textbook progressive filling, rescanning every resource at every level: the oracle for the engine's."""
    rates = [0.0] * len(flows)
    rem = {r: capacity[r] for f in flows for r in f.res}
    unfrozen = set(range(len(flows)))
    while unfrozen:
        demand = {r: 0.0 for r in rem}
        for i in unfrozen:
            for r, c in zip(flows[i].res, flows[i].coef, strict=True):
                demand[r] += c * flows[i].weight
        levels = [rem[r] / d for r, d in demand.items() if d > 0]
        levels += [flows[i].cap / flows[i].weight for i in unfrozen if flows[i].cap is not None]
        level = min(levels)
        hit = {r for r, d in demand.items() if d > 0 and rem[r] / d <= level * (1 + 1e-12)}
        freeze = {i for i in unfrozen if set(flows[i].res) & hit
                  or (flows[i].cap is not None and flows[i].cap / flows[i].weight <= level * (1 + 1e-12))}
        for i in freeze:
            rates[i] = min(flows[i].weight * level, flows[i].cap if flows[i].cap is not None else float("inf"))
            for r, c in zip(flows[i].res, flows[i].coef, strict=True):
                rem[r] = max(0.0, rem[r] - c * rates[i])
        unfrozen -= freeze
    return rates


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_flow = st.tuples(st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True),
                  st.floats(0.1, 5.0), st.one_of(st.none(), st.floats(0.01, 50.0)), st.sampled_from([1.0, 2.0]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flows=st.lists(_flow, min_size=1, max_size=25), caps=st.lists(st.floats(0.5, 100.0), min_size=8, max_size=8))
def test_engine_max_min_matches_textbook_progressive_filling(flows, caps):
    fs = [Flow(i, res, [coef] * len(res), 1.0, weight=w, cap=cap) for i, (res, w, cap, coef) in enumerate(flows)]
    got, load = max_min_rates(fs, caps)
    assert got == pytest.approx(reference_max_min(fs, caps), rel=1e-9, abs=1e-12)
    for r, v in load.items():
        assert v <= caps[r] * (1 + 1e-9)


_lone_flow = st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=5),  # may name a resource twice
                       st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=5, max_size=5), st.floats(0.1, 5.0),
                       st.one_of(st.none(), st.floats(0.01, 50.0)))


@settings(max_examples=200, deadline=None)
@given(flow=_lone_flow, caps=st.lists(st.floats(0.5, 100.0), min_size=4, max_size=4))
def test_a_lone_flow_gets_its_tightest_resource_or_its_cap(flow, caps):
    """The solver's shortcut for a single class (no tables built): the textbook filling's rate, with a resource
    named twice on the route drawing twice, and a bottleneck that is the cap or a resource where it is full."""
    res, coefs, weight, cap = flow
    f = Flow(0, res, coefs[:len(res)], 1.0, weight=weight, cap=cap)
    got, load = max_min_rates([f], caps)
    assert got == pytest.approx(reference_max_min([f], caps), rel=1e-12)
    full = [r for r, v in load.items() if v >= caps[r] * (1 - 1e-9)]
    assert full or (cap is not None and got[0] == pytest.approx(cap, rel=1e-12))


def test_a_finished_flow_and_its_event_do_not_hold_each_other():
    """The event's value is its flow; the flow keeps the event only while it runs (both ways is a reference cycle
    per finished flow, which only the cyclic collector frees: 3,320 of them in a 60-request serving run)."""
    env = simpy.Environment()
    net = FluidNetwork(env, [1.0])
    f = Flow("f", [0], [1.0], 2.0)
    ev = net.start(f)
    assert f.done is ev
    env.run()
    assert ev.value is f and f.done is None
    empty = Flow("e", [0], [1.0], 0.0)
    assert net.start(empty).value is empty and empty.done is None
