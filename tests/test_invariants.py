"""Invariants on random topologies and flow sets (hypothesis): bytes conserved, no resource over capacity,
finish times independent of listing order, determinism."""

from __future__ import annotations

import math

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabricsim.hwmodels.memcaps import add_memory_caps
from fabricsim.hwmodels.specs import GPU_MODELS
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore import Simulation

pytestmark = pytest.mark.usefixtures("both_loops")  # every case on the compiled loop and on simpy


def random_topology(seed: int, n_switches: int, n_gpus: int) -> Topology:
    """A random tree of switches (so every pair is connected) with GPUs hung off random switches."""
    rng = __import__("random").Random(seed)
    t = Topology(f"random{seed}")
    tree = nx.random_labeled_tree(n_switches, seed=seed) if n_switches > 1 else nx.empty_graph(1)
    for s in range(n_switches):
        t.add_component(f"sw{s}", "pcie-switch")
    for a, b in tree.edges:
        t.add_link(f"sw{a}", f"sw{b}", "pcie", rng.uniform(1, 50) * 1e9, rng.uniform(0, 3e-6),
                   Bps_reverse=rng.uniform(1, 50) * 1e9)
    for g in range(n_gpus):
        t.add_component(f"gpu{g}", "gpu", spec=GPU_MODELS["H100"])
        t.add_link(f"gpu{g}", f"sw{rng.randrange(n_switches)}", "pcie", rng.uniform(5, 60) * 1e9, 1e-6)
    add_memory_caps(t)
    return t


flow_st = st.tuples(st.integers(0, 5), st.integers(0, 5), st.floats(1e3, 1e9), st.floats(0, 0.05),
                    st.sampled_from([None, 2e9, 20e9]))


def _simulate(topo, flows, order=None, record_rates=False):
    sim = Simulation(topo, record_rates=record_rates)
    idx = order or range(len(flows))
    for i in idx:
        s, d, nbytes, start, cap = flows[i]
        sim.transfer(f"f{i}", f"gpu{s}", f"gpu{d}", nbytes, start=start, rate_cap_Bps=cap)
    return sim, sim.run()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_switches=st.integers(1, 5), flows=st.lists(flow_st, min_size=1, max_size=14))
def test_invariants_on_random_flow_sets(seed, n_switches, flows):
    topo = random_topology(seed, n_switches, 6)
    sim, res = _simulate(topo, flows, record_rates=True)

    # Bytes delivered (integral of each flow's rate) equal bytes requested.
    for i, (_, _, nbytes, _, _) in enumerate(flows):
        segs = sim.rate_segments(f"f{i}")
        delivered = sum(r * (t1 - t0) for (t0, r), (t1, _) in zip(segs, segs[1:], strict=False))
        assert math.isclose(delivered, nbytes, rel_tol=1e-6), (i, delivered, nbytes)
        assert res[f"f{i}"].finish_s >= res[f"f{i}"].start_s

    # No resource ever above capacity.
    for name, series in res.load.items():
        cap = res.capacity[name]
        assert all(v <= cap * (1 + 1e-9) for _, v in series), name

    # Finish times do not depend on the order transfers are listed in.
    _, rev = _simulate(topo, flows, order=list(reversed(range(len(flows)))))
    for i in range(len(flows)):
        assert math.isclose(rev[f"f{i}"].finish_s, res[f"f{i}"].finish_s, rel_tol=1e-9, abs_tol=1e-15)

    # Determinism: the same input gives the identical output, bit for bit.
    _, again = _simulate(topo, flows)
    assert [r.finish_s for r in again.records] == [r.finish_s for r in res.records]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), flows=st.lists(flow_st, min_size=1, max_size=10))
def test_no_flow_beats_its_lone_time(seed, flows):
    """Sharing can only slow a flow down: each finishes no earlier than start + latency + bytes / bottleneck."""
    topo = random_topology(seed, 3, 6)
    caps = topo.resources()
    _, res = _simulate(topo, flows)
    for i, (s, d, nbytes, start, cap) in enumerate(flows):
        path = topo.path(f"gpu{s}", f"gpu{d}", nbytes)
        bottleneck = min([caps[r] / c for r, c in path.resources] + ([cap] if cap else []))
        lone = start + path.latency_s + nbytes / bottleneck
        assert res[f"f{i}"].finish_s >= lone * (1 - 1e-9)
