"""The fast ways of declaring work give what the plain ones gave.

`Simulation.transfer` keeps one path shape per (src, dst, mechanism) (`Topology.path_shape`) and asks it for each
copy's size-dependent rate cap; `Topology.path` is built from the same shape. Both are checked here against the
path computation as it was written before the split (`_reference_path`), for random endpoint pairs, sizes and
mechanisms, on uncalibrated, calibrated (size-efficiency curves, FIFO engines, fitted mechanisms) and corner
(unfitted-mechanism scale) topologies. The quick argument tests are checked against the full ones.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.intervals import corner_topology
from fabricsim.hwmodels.topology import Path, Topology
from fabricsim.simcore import Simulation
from fabricsim.simcore.errors import ScenarioError


def _reference_path(topo: Topology, src: str, dst: str, nbytes: float | None, mechanism: str) -> Path:
    """`Topology.path` as written before `path_shape` existed."""
    s, d = topo.resolve(src), topo.resolve(dst)
    nodes, cls, resources, link_latency, engine = topo._build_path(s, d)
    pp = topo.path_params.get(cls)
    mech = topo.mechanisms.get(mechanism, {}).get(cls) if mechanism != "ce" else None
    if mech is not None:
        pp, engine = mech, None
    latency = link_latency
    cap = None
    if pp is not None:
        if pp.latency_s is not None:
            latency = pp.latency_s
        if pp.bandwidth_Bps is not None:
            cap = pp.bandwidth_Bps * (pp.efficiency(nbytes) if nbytes else 1.0)
    if mechanism != "ce" and mech is None and mechanism in topo.unfitted_mechanism_scale:
        lat_f, rate_f = topo.unfitted_mechanism_scale[mechanism]
        latency *= lat_f
        if cap is None:
            cap = min(topo.graph.edges[u, v]["bw"][(u, v)] for u, v in zip(nodes, nodes[1:], strict=False))
        cap *= rate_f
    return Path(s, d, cls, nodes, resources, latency, cap, engine)


def _topologies() -> dict[str, Topology]:
    return {
        "cluster-2x8-rail raw": presets.get("cluster-2x8-rail", calibration=None),
        "hgx-h200-8": presets.get("hgx-h200-8"),
        "h200-2 slow corner": corner_topology(presets.get("h200-2"), "slow"),
        "pcie-4gpu": presets.get("pcie-4gpu"),
    }


def _cases(topo: Topology, n: int, seed: int) -> list[tuple[str, str, float, str]]:
    rng = random.Random(seed)
    eps = [e for e in topo.endpoints() if topo.kind(e) in ("gpu", "host")]
    sizes = [1, 4096, 65536.5, 1 << 20, 3 << 24, 1 << 30, 7 << 33]
    out = []
    while len(out) < n:
        size = rng.choice(sizes) if rng.random() < 0.3 else int(2 ** rng.uniform(0, 36))
        src, dst, mech = rng.choice(eps), rng.choice(eps), rng.choice(("ce", "ce", "pageable", "sm"))
        if src == dst and mech != "ce" and mech in topo.unfitted_mechanism_scale:
            continue  # the reference raised ValueError here (no link to scale); see test_topology.py for the fix
        out.append((src, dst, size, mech))
    return out


@pytest.mark.parametrize("name", list(_topologies()))
def test_path_and_path_shape_match_the_reference(name: str) -> None:
    topo = _topologies()[name]
    for src, dst, nbytes, mech in _cases(topo, 300, 7):
        ref = _reference_path(topo, src, dst, nbytes, mech)
        for got in (topo.path(src, dst, nbytes, mech), topo.path_shape(src, dst, mech).path(nbytes)):
            assert got == ref
            assert type(got.rate_cap_Bps) is type(ref.rate_cap_Bps)
    for src, dst, _, mech in _cases(topo, 20, 8):  # no size: the cap of a size-less copy
        assert topo.path(src, dst, None, mech) == _reference_path(topo, src, dst, None, mech)


@pytest.mark.parametrize("name", list(_topologies()))
def test_declared_transfers_take_the_path_of_their_size(name: str) -> None:
    """Repeated (src, dst, mechanism) pairs with different sizes: each item gets its own size's cap."""
    topo = _topologies()[name]
    sim = Simulation(topo)
    cases = _cases(topo, 400, 11)
    cases += [(s, d, n * 3 + 1, m) for s, d, n, m in cases[:50]]  # same ends again, other sizes
    for i, (src, dst, nbytes, mech) in enumerate(cases):
        cap = None if i % 3 else 2.5e10
        sim.transfer(f"t{i}", src, dst, nbytes, mechanism=mech, rate_cap_Bps=cap, fixed_cost_s=1e-6 * (i % 2))
    for i, ((src, dst, nbytes, mech), rec, w) in enumerate(zip(cases, sim.result().records, sim._work, strict=True)):
        ref = _reference_path(topo, src, dst, nbytes, mech)
        ref_cap = ref.rate_cap_Bps
        if i % 3 == 0:
            ref_cap = 2.5e10 if ref_cap is None else min(ref_cap, 2.5e10)
        assert (rec.src, rec.dst, rec.path_class, rec.route, rec.engine, rec.bytes) == (
            ref.src, ref.dst, ref.path_class, ref.nodes, ref.engine, float(nbytes))
        assert w[1] == ref.latency_s + 1e-6 * (i % 2)
        assert w[5] == ref_cap
        res, coef = sim._routes.arrays(w[2])
        assert [sim._res_names[r] for r in res.tolist()] == [r for r, _ in ref.resources]
        assert coef.tolist() == [c for _, c in ref.resources]


def test_a_changed_topology_is_asked_again() -> None:
    """The simulation's shapes live beside the topology's path cache: a change there starts them afresh."""
    topo = presets.get("h200-2", calibration=None)
    sim = Simulation(topo)
    sim.transfer("a", "gpu0", "gpu1", 1 << 20)
    topo.pin_route("gpu0", "gpu1", ["host0"])
    sim.transfer("b", "gpu0", "gpu1", 1 << 20)
    res = sim.result()
    assert res["b"].route == _reference_path(topo, "gpu0", "gpu1", 1 << 20, "ce").nodes
    assert res["b"].route != res["a"].route


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nbytes": 0}, "size must be > 0"),
    ({"nbytes": -1.5}, "size must be > 0"),
    ({"nbytes": float("nan")}, "finite"),
    ({"nbytes": float("inf")}, "finite"),
    ({"nbytes": 2.0**61}, "beyond 1 EiB"),
    ({"nbytes": True}, "expected a size"),
    ({"nbytes": "12 parsecs"}, "unknown unit"),
    ({"weight": 0.0}, "weight: expected a finite number > 0"),
    ({"weight": float("inf")}, "weight"),
    ({"weight": True}, "weight"),
    ({"start": -1e-9}, "start: time must be"),
    ({"start": float("nan")}, "start"),
    ({"start": 2e9}, "beyond 10"),
    ({"fixed_cost_s": float("inf")}, "fixed cost"),
    ({"rate_cap_Bps": 0.0}, "rate cap"),
    ({"rate_cap_Bps": float("nan")}, "rate cap"),
    ({"rate_cap_Bps": "fast"}, "rate cap"),
])
def test_bad_transfer_arguments_are_refused_as_before(kwargs: dict, message: str) -> None:
    sim = Simulation(presets.get("h200-2", calibration=None))
    args = {"nbytes": 1 << 20, **kwargs}
    nbytes = args.pop("nbytes")
    with pytest.raises(ScenarioError, match=message) as err:
        sim.transfer("x", "gpu0", "gpu1", nbytes, **args)
    assert str(err.value).startswith("transfer 'x': ") and "\n" not in str(err.value)
    assert "x" not in sim._done and not sim.result().records


def test_other_number_types_give_the_same_items_as_floats() -> None:
    """ints, numpy scalars and size strings take the full checks and end up as the floats the quick path keeps."""
    topo = presets.get("hgx-h200-8")
    plain, other = Simulation(topo), Simulation(topo)
    plain.transfer("a", "gpu0", "gpu1", 1048576.0, start=1.0, weight=2.0, fixed_cost_s=0.0, rate_cap_Bps=1e10)
    other.transfer("a", "gpu0", "gpu1", "1MiB", start=1, weight=np.float64(2.0), fixed_cost_s=0,
                   rate_cap_Bps=np.float64(1e10))
    plain.transfer("b", "gpu1", "host", 4096.0, after=["a"])
    other.transfer("b", "gpu1", "host", np.int64(4096), after=(e for e in [other.done("a")]))
    assert plain._work == other._work
    assert [type(v) for w in plain._work for v in w[:6]] == [type(v) for w in other._work for v in w[:6]]
    r1, r2 = plain.run(), other.run()
    assert [(r.start_s, r.finish_s) for r in r1.records] == [(r.start_s, r.finish_s) for r in r2.records]
    assert math.isfinite(r1.makespan_s)


def test_declared_events_behave_as_simpy_events() -> None:
    sim = Simulation(presets.get("h200-2", calibration=None))
    ev = sim.transfer("a", "gpu0", "gpu1", 1 << 20)
    assert repr(ev).startswith("<Event() object at ")
    assert not ev.triggered and not ev.processed
    seen = []

    def waiter():
        rec = yield ev
        seen.append(rec.id)

    sim.process(waiter())
    sim.run()
    assert seen == ["a"] and ev.processed and ev.value is sim.result()["a"]


def test_simpy_event_init_sets_what_declared_events_set() -> None:
    """`_Declared.__init__` stands in for simpy.Event.__init__ (env, and callbacks made on first use)."""
    import simpy

    from fabricsim.simcore.simulation import _Declared

    env = simpy.Environment()
    assert set(vars(simpy.Event(env))) == {"env", "callbacks"}
    assert simpy.Event._value is simpy.events.PENDING
    plain, ours = simpy.Event(env), _Declared(env, 0)
    assert not hasattr(ours, "_ok") and not hasattr(plain, "_ok") and ours.defused == plain.defused is False
    assert ours._value is plain._value and not ours.__dict__
    ev = _Declared(env, 3)
    assert ev.env is env and ev.item == 3 and not ev.waited_on() and ev.callbacks == [] and not ev.triggered
    ev.callbacks.append(lambda e: None)
    assert ev.waited_on()
    ev.succeed(7)
    env.run()
    assert ev.processed and ev.value == 7 and ev.callbacks is None
