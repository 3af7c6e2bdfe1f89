"""Route classes with virtual clocks: flows with one route, weight and cap share a class slot, which the solver
sees as one flow, and each class keeps the bytes served per member and a skew heap of its members' targets.

Aggregation must change no answer: finish times with classes equal those of every flow on its own (random
routes drawn from a small pool so classes form, grow and shrink; both solver modes; both event loops), equal
processor sharing's closed form, and the members' heap pops in target order. A class costs one slot however
many members it has."""

from __future__ import annotations

import random

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_invariants import random_topology

from fabricsim.simcore import Simulation
from fabricsim.simcore import _fluidlayout as L
from fabricsim.simcore.fluid import Flow, FluidNetwork, load_core


class PerFlowNetwork(FluidNetwork):
    """Every flow a class of its own (no route number): the per-flow reference."""

    def _route_number(self, flow: Flow) -> int:
        return -1


def _run(flows: list[tuple[float, Flow]], caps: list[float], net_cls=FluidNetwork,
         mode: str = "incremental") -> tuple[dict, FluidNetwork]:
    env = simpy.Environment()
    net = net_cls(env, caps)
    net._ctr[L.MODE] = L.FULL if mode == "full" else L.INCREMENTAL
    done: dict = {}
    peak = [0]

    def one(t0: float, f: Flow):
        yield env.timeout(t0)
        ev = net.start(f)
        peak[0] = max(peak[0], int(net._ctr[L.N_ACTIVE]))
        yield ev
        done[f.key] = env.now

    for t0, f in flows:
        env.process(one(t0, f))
    env.run()
    net.peak_classes = peak[0]
    return done, net


def _pooled_flows(seed: int, nres: int, n: int, nroutes: int) -> list[tuple[float, Flow]]:
    """n flows on nroutes random routes, two weights, two caps, starts on a coarse grid (so flows join classes
    that are running) and sizes from a small set (so members of one class finish together)."""
    rng = random.Random(seed)
    routes = []
    for _ in range(nroutes):
        res = rng.sample(range(nres), rng.randint(1, min(4, nres)))
        routes.append((res, [rng.choice([1.0, 2.0]) for _ in res]))
    out = []
    for i in range(n):
        res, coef = rng.choice(routes)
        out.append((rng.choice([0.0, 0.0, 0.5, 1.0, rng.uniform(0, 2.0)]),
                    Flow(i, res, coef, rng.choice([1.0, 2.0, 4.0, rng.uniform(0.1, 8.0)]),
                         weight=rng.choice([1.0, 1.0, 2.5]), cap=rng.choice([None, None, 0.7]))))
    return out


def _copy(flows):
    return [(t, Flow(f.key, f.res, f.coef, f.bytes, f.weight, f.cap)) for t, f in flows]


@pytest.mark.parametrize("mode", ["incremental", "full"])
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 1 << 30), nres=st.integers(1, 8), n=st.integers(1, 60), nroutes=st.integers(1, 5),
       caps=st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0]), min_size=8, max_size=8))
def test_classes_change_no_finish_time(mode, seed, nres, n, nroutes, caps):
    flows = _pooled_flows(seed, nres, n, nroutes)
    got, net = _run(flows, caps, mode=mode)
    want, _ = _run(_copy(flows), caps, PerFlowNetwork, mode=mode)
    assert got.keys() == want.keys() == {f.key for _, f in flows}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_capped_class_that_shrinks_frees_its_resource(mode):
    """A capped class's upper bound falls when members leave, which can make a resource stop binding; the
    flows bottlenecked there must still be found and sped up. r0 (10 B/s) carries class A (4 flows capped at
    2.2, 2+2+1000+1000 bytes) and B (100 bytes, also on r1 = 5 B/s): A = 8, B = 2 until t = 1, when two of A
    finish; then B runs at 5 (r1), finishing at 1 + 98 / 5 = 20.6, not at 2 B/s until A is done."""
    a = [(0.0, Flow(f"a{i}", [0], [1.0], b, cap=2.2)) for i, b in enumerate([2.0, 2.0, 1000.0, 1000.0])]
    flows = [*a, (0.0, Flow("b", [0, 1], [1.0, 1.0], 100.0))]
    got, net = _run(flows, [10.0, 5.0], mode=mode)
    want, _ = _run(_copy(flows), [10.0, 5.0], PerFlowNetwork, mode=mode)
    assert net.peak_classes == 2
    assert got["b"] == pytest.approx(20.6, rel=1e-12)
    assert got == pytest.approx(want, rel=1e-12)


def test_processor_sharing_closed_form():
    """n flows on one link from t=0 (one class): the k-th smallest finishes when every flow has received its
    bytes, t_k = t_(k-1) + (b_k - b_(k-1)) (n - k + 1) / C; a flow joining later splits the rest the same way."""
    rng = np.random.default_rng(3)
    sizes = rng.uniform(1.0, 50.0, 12)
    C = 7.0
    flows = [(0.0, Flow(i, [0], [1.0], float(b))) for i, b in enumerate(sizes)]
    got, net = _run(flows, [C])
    assert net.peak_classes == 1
    order = np.argsort(sizes)
    t, prev = 0.0, 0.0
    for k, i in enumerate(order):
        t += (sizes[i] - prev) * (len(sizes) - k) / C
        prev = sizes[i]
        assert got[int(i)] == pytest.approx(t, rel=1e-12)


def test_late_joiner_takes_its_share():
    """Two flows of 10 bytes at t=0 on a 1 B/s link, a third (5 bytes) joins at t=4: by then each of the first
    two has 8 left; three share until the joiner's 5 bytes are done (t=19), the others finish at t=25."""
    flows = [(0.0, Flow("a", [0], [1.0], 10.0)), (0.0, Flow("b", [0], [1.0], 10.0)),
             (4.0, Flow("c", [0], [1.0], 5.0))]
    got, net = _run(flows, [1.0])
    assert net.peak_classes == 1
    assert got == pytest.approx({"a": 25.0, "b": 25.0, "c": 19.0}, rel=1e-12)


def test_many_flows_few_classes():
    """1,000 flows on three routes hold three class slots, not a thousand."""
    routes = [([0], [1.0]), ([0, 1], [1.0, 1.0]), ([1], [2.0])]
    flows = [(0.0, Flow(i, *routes[i % 3], 1.0 + (i % 7))) for i in range(1000)]
    got, net = _run(flows, [10.0, 4.0])
    assert net.peak_classes == 3
    want, _ = _run(_copy(flows), [10.0, 4.0], PerFlowNetwork)
    assert [got[k] for k in range(1000)] == pytest.approx([want[k] for k in range(1000)], rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(targets=st.lists(st.sampled_from([0.0, 1.0, 2.5, 1e9]) | st.floats(0, 1e6), min_size=1, max_size=80),
       seed=st.integers(0, 1 << 20))
def test_members_heap_pops_in_target_order(targets, seed):
    """The skew heap of members, melded in random order and popped, gives targets in order (ties by slot)."""
    core = load_core()
    n = len(targets)
    mf = np.zeros((n, L.NMF))
    mf[:, L.TARGET] = targets
    mi = np.full((n, L.NMI), -1, np.int64)
    root = -1
    for m in random.Random(seed).sample(range(n), n):
        mi[m, L.LEFT] = mi[m, L.RIGHT] = -1
        root = core._meld(root, m, mf, mi)
    popped = []
    while root >= 0:
        popped.append(root)
        root = core._meld(mi[root, L.LEFT], mi[root, L.RIGHT], mf, mi)
    assert popped == sorted(range(n), key=lambda m: (targets[m], m))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1 << 20), n=st.integers(1, 80))
def test_compiled_loop_with_classes_equals_simpy_per_flow(seed, n):
    """Declared transfers between few GPU pairs (so classes form) on a random topology: the compiled loop, with
    classes, finishes every transfer when the simpy path with every flow alone does."""
    rng = random.Random(seed)
    topo = random_topology(seed, 3, 4)
    pairs = [(rng.randrange(4), rng.randrange(4)) for _ in range(3)]
    cap = rng.choice([None, 3e9])  # a capped class's bound shrinks with its members

    def declare() -> Simulation:
        sim = Simulation(topo)
        r = random.Random(seed)
        for i in range(n):
            s, d = r.choice(pairs)
            after = [f"t{r.randrange(i)}"] if i and r.random() < 0.3 else []
            sim.transfer(f"t{i}", f"gpu{s}", f"gpu{d}", r.choice([1e6, 4e6, r.uniform(1e5, 1e7)]),
                         start=r.choice([0.0, 0.0, 1e-4]), after=after, rate_cap_Bps=r.choice([None, cap]),
                         weight=r.choice([1.0, 2.0]))
        return sim

    compiled = declare().run(loop="compiled")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FluidNetwork, "_route_number", PerFlowNetwork._route_number)
        reference = declare().run(loop="simpy")
    for i in range(n):
        assert compiled[f"t{i}"].finish_s == pytest.approx(reference[f"t{i}"].finish_s, rel=1e-9, abs=1e-15)
