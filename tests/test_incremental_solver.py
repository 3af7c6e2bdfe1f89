"""The incremental solve against the whole-component solve (the reference path, `FABRICSIM_SOLVER=full`).

After every change the core re-rates a region (the flows that lost their bottleneck, and new ones) and checks
that every flow is at its cap or has a bottleneck; a feasible allocation with that property is the unique
weighted max-min fair one. These tests check the allocation itself after every solve against a from-scratch
solve of all active flows (random topologies, weights, caps, coefficients, staggered arrivals), and the
finish times of both paths against each other and against closed forms.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_invariants import random_topology

from fabricsim.simcore import Simulation
from fabricsim.simcore import _fluidlayout as L
from fabricsim.simcore.fluid import Flow, FluidNetwork, max_min_rates


class CheckedNetwork(FluidNetwork):
    """A network that, after every solve, compares every active flow's rate (its route class's rate over the
    class's members) with a from-scratch max-min of the flows one by one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ctr[L.REGION_PCT] = 100  # let regions grow (small networks would mostly solve whole components)

    def _flush(self, ev: simpy.Event) -> None:
        super()._flush(ev)
        active = [m for m, f in enumerate(self._flows) if f is not None]  # member slots
        if not active:
            return
        ref, _ = max_min_rates([self._flows[m] for m in active], self.capacity)  # every resource, binding or not
        cls = self._mi[active, L.MCLASS]  # a flow's rate is its class's, shared by the members
        got = self._ff[cls, L.RATE] / self._fi[cls, L.NMEM]
        err = np.abs(got - np.array(ref)) / np.maximum(np.array(ref), 1e-300)
        assert err.max() <= 1e-9, f"t={self.env.now}: rate off by {err.max():.2e} relative"


def _random_flows(rng: random.Random, nres: int, n: int) -> list[tuple[float, Flow]]:
    out = []
    for i in range(n):
        res = rng.sample(range(nres), rng.randint(1, min(4, nres)))
        coef = [rng.choice([1.0, 1.0, 2.0]) for _ in res]
        cap = rng.choice([None, None, rng.uniform(0.2, 3.0)])
        out.append((rng.choice([0.0, rng.uniform(0, 3.0)]),
                    Flow(i, res, coef, rng.uniform(0.1, 10.0), weight=rng.choice([1.0, 1.0, 2.5]), cap=cap)))
    return out


def _run(flows: list[tuple[float, Flow]], caps: list[float], net_cls=FluidNetwork) -> tuple[dict, FluidNetwork]:
    env = simpy.Environment()
    net = net_cls(env, caps)
    done: dict = {}

    def one(t0: float, f: Flow):
        yield env.timeout(t0)
        yield net.start(f)
        done[f.key] = env.now

    for t0, f in flows:
        env.process(one(t0, f))
    env.run()
    return done, net


def declare_chains(sim: Simulation, ends: list[str], rng: random.Random, chains: int = 48, each: int = 6) -> None:
    """`chains` chains of `each` transfers (each `after` the one before) between random pairs of `ends`."""
    for w in range(chains):
        prev: list[str] = []
        for i in range(each):
            rid = f"w{w}.{i}"
            a, b = rng.sample(ends, 2)
            sim.transfer(rid, a, b, int(2 ** rng.uniform(16, 26)), after=prev)
            prev = [rid]


def _copy(flows):
    return [(t, Flow(f.key, f.res, f.coef, f.bytes, f.weight, f.cap)) for t, f in flows]


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 1 << 30), nres=st.integers(1, 10), n=st.integers(1, 40),
       caps=st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0, 7.5]), min_size=10, max_size=10))
def test_every_incremental_allocation_is_the_max_min_one(seed, nres, n, caps):
    """Random flows on random routes (shared capacities make ties common): after every solve the rates
    equal a from-scratch max-min of all active flows, and the finish times equal the reference path's."""
    flows = _random_flows(random.Random(seed), nres, n)
    got, net = _run(_copy(flows), caps[:nres], CheckedNetwork)
    assert net._ctr[L.MODE] == L.INCREMENTAL
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FABRICSIM_SOLVER", "full")
        ref, ref_net = _run(_copy(flows), caps[:nres])
    assert ref_net._ctr[L.MODE] == L.FULL and ref_net._ctr[L.N_SOLVES] == 0
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_the_incremental_path_is_taken_and_falls_back_where_changes_spread():
    """On the 8-GPU star the region often grows to most of the network (the solve then does the whole
    component); on a rail cluster it stays small. Both are exercised, and both give max-min rates."""
    from fabricsim.hwmodels import presets

    counters = {}
    for name in ("hgx-h200-8", "cluster-2x8-rail"):
        topo = presets.get(name, calibration=None)
        ends = [e for e in topo.endpoints() if e.split(".")[-1].startswith("gpu")]
        rng = random.Random(3)
        sim = Simulation(topo, record_load=False)
        sim.net.__class__ = CheckedNetwork  # checks every solve; the shipped region limit stays
        declare_chains(sim, ends, rng)
        sim.run(loop="simpy")
        c = sim.net._ctr
        counters[name] = (int(c[L.N_SOLVES]), int(c[L.N_FALLBACKS]), int(c[L.N_REGION]))
    for name, (solves, _, region) in counters.items():
        assert solves > 50, name
        assert region > 0, name
    assert counters["hgx-h200-8"][1] > 0  # the star falls back at times


def test_incremental_and_full_agree_on_a_chain_free_cluster_workload():
    """Independent transfers with staggered starts on a rail cluster, compiled loop: both solver modes give
    the same finish times (to 1e-9)."""
    from fabricsim.hwmodels import presets

    def run(mode: str) -> dict[str, float]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FABRICSIM_SOLVER", mode)
            topo = presets.get("cluster-4x8-rail", calibration=None)
            ends = [e for e in topo.endpoints() if e.split(".")[-1].startswith("gpu")]
            rng = random.Random(11)
            sim = Simulation(topo, record_load=False)
            for i in range(600):
                a, b = rng.sample(ends, 2)
                sim.transfer(f"t{i}", a, b, int(2 ** rng.uniform(18, 27)), start=rng.uniform(0, 5e-3))
            return {r.id: r.finish_s for r in sim.run(loop="compiled").records}

    inc, full = run("incremental"), run("full")
    for k in full:
        assert inc[k] == pytest.approx(full[k], rel=1e-9), k


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_all_to_all_pulls_with_tied_ends_are_max_min_after_every_solve(seed):
    """The pull-on-publish shape: every reader pulls from every trainer at once, through its own port and the
    trainer's (equal capacities, so both ends saturate at the same level: ties everywhere), across a shared
    spine that never saturates but carries every flow, in chunks that finish at many distinct times. Region
    flows then often lack a bottleneck until outside flows on a saturated port give way; the check collects
    those from each port once per level (a port carries hundreds of region flows at 1,024 GPUs), skips
    ports that are not saturated and the spine, and every allocation is still the max-min one."""
    rng = random.Random(seed)
    n = 8  # trainers and readers: ports 0..n-1 trainers', n..2n-1 readers', 2n the spine
    caps = [1.0] * (2 * n) + [4.0 * n]
    flows = []
    key = 0
    for chunk in range(3):
        for t in range(n):
            for r in range(n):
                size = rng.choice([1.0, 1.0, 1.5]) * (1 + 0.01 * ((t * 7 + r * 3) % 5))
                flows.append((chunk * rng.choice([0.0, 0.5]), Flow(key, [t, n + r, 2 * n], [1.0, 1.0, 1.0], size)))
                key += 1
    got, net = _run(_copy(flows), caps, CheckedNetwork)
    assert net._ctr[L.N_SOLVES] > 20 and net._ctr[L.N_ROUNDS] > net._ctr[L.N_SOLVES]  # regions grew
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FABRICSIM_SOLVER", "full")
        ref, _ = _run(_copy(flows), caps)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_switches=st.integers(1, 5),
       flows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.floats(1e3, 1e9), st.floats(0, 0.05),
                                st.sampled_from([None, 2e9, 20e9])), min_size=1, max_size=14))
def test_random_topologies_agree_with_the_reference_path(seed, n_switches, flows):
    """The invariants' random trees of switches, both modes, both loops: the same finish times."""
    topo = random_topology(seed, n_switches, 6)
    out = {}
    for mode in ("incremental", "full"):
        for loop in ("compiled", "simpy"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("FABRICSIM_SOLVER", mode)
                sim = Simulation(topo)
                for i, (s, d, nbytes, start, cap) in enumerate(flows):
                    sim.transfer(f"f{i}", f"gpu{s}", f"gpu{d}", nbytes, start=start, rate_cap_Bps=cap)
                out[mode, loop] = [r.finish_s for r in sim.run(loop=loop).records]
    ref = out["full", "simpy"]
    for key, got in out.items():
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-15), key


def test_bad_solver_mode_is_refused():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FABRICSIM_SOLVER", "fast")
        with pytest.raises(ValueError, match="FABRICSIM_SOLVER"):
            FluidNetwork(simpy.Environment(), [1.0])
