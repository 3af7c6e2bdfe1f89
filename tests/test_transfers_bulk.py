"""`Simulation.transfers` declares exactly what one `transfer` call per copy declares.

Its definition is the loop in `Simulation._transfers_one_by_one`; the fast path must give the same declared items
(every field of each `Work` tuple: times, route, caps, engines, sequence numbers, ids, dependencies), the same
results, and the same errors, on topologies with FIFO engines, size-dependent caps and fitted mechanisms, with
copies that need their full checks or queue on an engine mixed in, with `lanes`, and when the work is already
procedural.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
from fabricsim.simcore.errors import ScenarioError

TOPOS = {name: presets.get(name) for name in ("hgx-h200-8", "h200-2", "cluster-2x8-rail")}


def _copies(topo, rng: random.Random, n: int, stem: str) -> list[tuple]:
    eps = [e for e in topo.endpoints() if topo.kind(e) in ("gpu", "host")]
    out = []
    for k in range(n):
        src, dst = rng.choice(eps), rng.choice(eps)
        size = rng.choice([1, 4096, 65536.5, 1 << 20, 3 << 24, float(1 << 30), int(2 ** rng.uniform(0, 34))])
        if rng.random() < 0.05:
            size = f"{rng.randint(1, 64)} MiB"  # a string takes the full checks
        rid = None if rng.random() < 0.05 else f"{stem}{k}"
        if rng.random() < 0.4:
            setup = rng.choice([0.0, 1e-6, 3e-5, 0])
            out.append((rid, src, dst, size, setup, None if rng.random() < 0.5 else f"{stem}{k}.s"))
        else:
            out.append((rid, src, dst, size))
    return out


def _idle(sim: Simulation):
    yield sim.env.timeout(0.0)


def _declare(topo, copies, bulk: bool, *, lanes: int, cap, mechanism: str, procedural: bool):
    sim = Simulation(topo, record_load=False)
    first = sim.delay("first", 1e-6)
    if procedural:
        sim.process(_idle(sim))  # anything procedural: every item launches on the simpy clock
    after = [first, "first"]
    if bulk:
        evs = sim.transfers(copies, after=after, lanes=lanes, tag="x", rate_cap_Bps=cap, mechanism=mechanism)
    else:
        evs = sim._transfers_one_by_one(list(copies), after, lanes, "x", cap, mechanism)
    return sim, evs


@pytest.mark.parametrize("name", list(TOPOS))
@pytest.mark.parametrize("lanes", [0, 1, 3])
@pytest.mark.parametrize("cap", [None, 20e9])
@pytest.mark.parametrize("mechanism", ["ce", "sm"])
def test_bulk_declares_the_same_items(name: str, lanes: int, cap, mechanism: str) -> None:
    topo = TOPOS[name]
    rng = random.Random(hash((name, lanes, cap, mechanism)) & 0xFFFF)
    copies = _copies(topo, rng, 120, "c")
    a, ea = _declare(topo, copies, True, lanes=lanes, cap=cap, mechanism=mechanism, procedural=False)
    b, eb = _declare(topo, copies, False, lanes=lanes, cap=cap, mechanism=mechanism, procedural=False)
    assert a._work == b._work
    assert [e.item for e in ea] == [e.item for e in eb]
    ra, rb = a.run(), b.run()
    assert [(r.id, r.start_s, r.begin_s, r.finish_s) for r in ra.records] == \
           [(r.id, r.start_s, r.begin_s, r.finish_s) for r in rb.records]


def test_bulk_on_procedural_work_is_the_same() -> None:
    topo = TOPOS["hgx-h200-8"]
    copies = _copies(topo, random.Random(3), 40, "p")
    a, _ = _declare(topo, copies, True, lanes=2, cap=None, mechanism="ce", procedural=True)
    b, _ = _declare(topo, copies, False, lanes=2, cap=None, mechanism="ce", procedural=True)
    ra, rb = a.run(), b.run()
    assert [(r.id, r.finish_s) for r in ra.records] == [(r.id, r.finish_s) for r in rb.records]


def test_lanes_bound_the_copies_in_flight() -> None:
    """Four equal copies from one GPU in two lanes: two at a time, so the last lands at twice a lone pair's time."""
    topo = TOPOS["hgx-h200-8"]
    sim = Simulation(topo)
    evs = sim.transfers([(f"l{k}", "gpu0", f"gpu{k + 1}", 1 << 30) for k in range(4)], lanes=2)
    res = sim.run()
    pair = Simulation(topo)
    pair.transfers([(f"l{k}", "gpu0", f"gpu{k + 1}", 1 << 30) for k in range(2)])
    one = pair.run().makespan_s
    assert res.makespan_s == pytest.approx(2 * one, rel=1e-9)
    assert [e.value.start_s for e in evs[2:]] == [evs[0].value.finish_s, evs[1].value.finish_s]


@pytest.mark.parametrize("bad, match", [
    ((("a", "gpu0", "gpu1", float("nan")),), "bytes"),
    ((("a", "gpu0", "nowhere", 1.0),), "nowhere"),
    ((("a", "gpu0", "gpu1", 1.0), ("a", "gpu0", "gpu1", 1.0)), "duplicate id 'a'"),
    ((("a", "gpu0", "gpu1", 1.0, -1.0, None),), "setup"),
])
def test_bad_copies_raise_what_transfer_raises(bad, match: str) -> None:
    for bulk in (True, False):
        sim = Simulation(TOPOS["hgx-h200-8"])
        with pytest.raises(ScenarioError, match=match):
            if bulk:
                sim.transfers(list(bad))
            else:
                sim._transfers_one_by_one(list(bad), [], 0, None, None, "ce")


def test_an_unknown_dependency_is_named_with_the_copy() -> None:
    for bulk in (True, False):
        sim = Simulation(TOPOS["hgx-h200-8"])
        copies = [("a", "gpu0", "gpu1", 1.0)]
        with pytest.raises(ScenarioError, match="'a' waits for unknown id 'nope'"):
            if bulk:
                sim.transfers(copies, after=["nope"])
            else:
                sim._transfers_one_by_one(copies, ["nope"], 0, None, None, "ce")
    assert Simulation(TOPOS["hgx-h200-8"]).transfers([], after=["nope"]) == []


def test_negative_lanes_are_refused() -> None:
    with pytest.raises(ScenarioError, match="lanes must be >= 0"):
        Simulation(TOPOS["hgx-h200-8"]).transfers([("a", "gpu0", "gpu1", 1.0)], lanes=-1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(0, 5), st.sampled_from([None, 1e9, float("inf"), 0.0]))
def test_bulk_matches_one_by_one_property(seed: int, lanes: int, cap) -> None:
    """Random copies, lanes and caps (an infinite or zero cap is refused by both, with the same message)."""
    topo = TOPOS["cluster-2x8-rail"]
    copies = _copies(topo, random.Random(seed), 30, "h")
    got = []
    for bulk in (True, False):
        try:
            sim, _ = _declare(topo, copies, bulk, lanes=lanes, cap=cap, mechanism="ce", procedural=False)
            got.append(("ok", sim._work))
        except ScenarioError as exc:
            got.append(("error", str(exc)))
    assert got[0] == got[1]
