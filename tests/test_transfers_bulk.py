"""`Simulation.transfers` declares exactly what one `transfer` call per copy declares.

Its definition is the loop in `Simulation._transfers_one_by_one`; the fast path must give the same declared items
(every field of each `Work` tuple: times, route, caps, engines, sequence numbers, ids, dependencies), the same
results, and the same errors, on topologies with FIFO engines, size-dependent caps and fitted mechanisms, with
copies that need their full checks or queue on an engine mixed in, with `lanes`, and when the work is already
procedural.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.topology import path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.simcore.errors import ScenarioError
from fabricsim.workloads.weightsync.base import SyncContext

TOPOS = {name: presets.get(name) for name in ("hgx-h200-8", "h200-2", "cluster-2x8-rail")}


def _copies(topo, rng: random.Random, n: int, stem: str) -> list[tuple]:
    eps = [e for e in topo.endpoints() if topo.kind(e) in ("gpu", "host")]
    out = []
    for k in range(n):
        src, dst = rng.choice(eps), rng.choice(eps)
        size = rng.choice([1, 4096, 65536.5, 1 << 20, 3 << 24, float(1 << 30), int(2 ** rng.uniform(0, 34)),
                           np.float64(1 << 22), np.int64(5000)])  # numpy scalars take the full checks
        if rng.random() < 0.05:
            size = f"{rng.randint(1, 64)} MiB"  # a string takes the full checks
        rid = None if rng.random() < 0.05 else f"{stem}{k}"
        if rng.random() < 0.4:
            setup = rng.choice([0.0, 1e-6, 3e-5, 0, None, np.float64(2e-6), np.float32(0.0), -0.0])
            out.append((rid, src, dst, size, setup, None if rng.random() < 0.5 else f"{stem}{k}.s"))
        else:
            out.append((rid, src, dst, size))
    return out


class _Progress:
    """Stands in for the progress line: what declaring told it."""

    def __init__(self) -> None:
        self.told: list[int] = []

    def declaring(self, n: int) -> None:
        self.told.append(n)

    def __getattr__(self, name: str):  # what a run tells it: nothing to keep
        return lambda *a, **kw: None


def _idle(sim: Simulation):
    yield sim.env.timeout(0.0)


def _typed(work: list[tuple]) -> list[tuple]:
    """Declared items with each field's type: == alone takes 1 == 1.0 == np.float32(1.0)."""
    return [tuple((type(x).__name__, x) for x in w) for w in work]


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())  # the same on every run (hash() of a str is not)


def _declare(topo, copies, bulk: bool, *, lanes: int, cap, mechanism: str, procedural: bool):
    sim = Simulation(topo, record_load=False)
    sim._progress = _Progress()
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
@pytest.mark.parametrize("cap", [None, 20e9, 30_000_000_000, np.float64(25e9)])
@pytest.mark.parametrize("mechanism", ["ce", "sm"])
def test_bulk_declares_the_same_items(name: str, lanes: int, cap, mechanism: str) -> None:
    topo = TOPOS[name]
    rng = random.Random(_seed(name, lanes, cap, mechanism))
    copies = _copies(topo, rng, 120, "c")
    a, ea = _declare(topo, copies, True, lanes=lanes, cap=cap, mechanism=mechanism, procedural=False)
    b, eb = _declare(topo, copies, False, lanes=lanes, cap=cap, mechanism=mechanism, procedural=False)
    assert _typed(a._work) == _typed(b._work)
    assert [e.item for e in ea] == [e.item for e in eb]
    ra, rb = a.run(), b.run()
    assert [(r.id, r.start_s, r.begin_s, r.finish_s) for r in ra.records] == \
           [(r.id, r.start_s, r.begin_s, r.finish_s) for r in rb.records]


def test_bulk_on_procedural_work_runs_as_declared_work() -> None:
    """Procedural work takes one call per copy onto the simpy path; it must finish as the declared work does on
    the compiled loop (the loops agree to 1e-9)."""
    topo = TOPOS["hgx-h200-8"]
    copies = _copies(topo, random.Random(3), 40, "p")
    a, _ = _declare(topo, copies, True, lanes=2, cap=None, mechanism="ce", procedural=True)
    b, _ = _declare(topo, copies, True, lanes=2, cap=None, mechanism="ce", procedural=False)
    ra, rb = a.run(), b.run()
    assert [r.id for r in ra.records] == [r.id for r in rb.records]
    assert [r.finish_s for r in ra.records] == pytest.approx([r.finish_s for r in rb.records], rel=1e-9)


def test_the_progress_line_hears_the_same() -> None:
    topo = TOPOS["cluster-2x8-rail"]
    copies = [(f"c{k}", f"node{k % 2}.gpu{k % 8}", f"node{(k + 1) % 2}.gpu{k % 7}", 1e6) for k in range(9000)]
    a, _ = _declare(topo, copies, True, lanes=8, cap=None, mechanism="ce", procedural=False)
    b, _ = _declare(topo, copies, False, lanes=8, cap=None, mechanism="ce", procedural=False)
    assert a._progress.told == b._progress.told == [4096, 8192]


def test_a_route_changed_between_calls_is_taken() -> None:
    """Kept path shapes are forgotten when the topology changes (a pinned route) between two calls."""
    got = []
    for bulk in (True, False):
        topo = presets.get("hgx-h200-8")
        sim = Simulation(topo, record_load=False)
        first, then = [("a", "gpu0", "gpu1", 1e6)], [("b", "gpu0", "gpu1", 1e6), ("c", "gpu0", "gpu1", 1e6, 1e-6, None)]
        for copies in (first, then):
            if bulk:
                sim.transfers(copies)
            else:
                sim._transfers_one_by_one(copies, [], 0, None, None, "ce")
            topo.pin_route("gpu0", "gpu1", ["host0"])
        got.append(_typed(sim._work))
    assert got[0] == got[1]
    assert got[0][0][2] != got[0][1][2]  # the second call's copies took the pinned route


def _ctx(topo, wire_ratio: float, decode_hbm: float) -> SyncContext:
    ctx = SyncContext.__new__(SyncContext)  # what `load` reads of a sync's context, without a sync
    ctx.sim, ctx._wire_ratio, ctx.decode_hbm, ctx._seq = Simulation(topo, record_load=False), wire_ratio, decode_hbm, 0
    return ctx


@pytest.mark.parametrize("wire, decode", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.5), (0.0, 0.0)])
@pytest.mark.parametrize("sizes", [(1e6, 2e6, 3e6, 4e6), (1e6, 0.0, 3e6, 4e6), (1 << 20, 7, 3.5, np.float64(1e9))])
@pytest.mark.parametrize("setups", [(0.0, 0.0, 0.0, 0.0), (1e-6, 0.0, 2e-6, 0), (np.float64(1e-6),) * 4])
def test_loads_are_load_one_by_one(wire: float, decode: float, sizes, setups) -> None:
    topo = TOPOS["cluster-2x8-rail"]
    items = list(zip(topo.gpus()[:4], sizes, setups, strict=True))
    got = []
    for bulk in (True, False):
        ctx = _ctx(topo, wire, decode)
        first = ctx.sim.delay("first", 1e-6)
        evs = (ctx.loads(items, after=[first], setup_name="reload") if bulk else
               [ctx.load(g, b, [first], setup_s=s, setup_name="reload") for g, b, s in items])
        got.append((_typed(ctx.sim._work), [e.item for e in evs], ctx._seq))
    assert got[0] == got[1]


@pytest.mark.parametrize("items", [[("node0.gpu0", float("inf"), 0.0)], [("node0.gpu0", 1e6, float("nan"))],
                                   [("node0.gpu0", 1e6, -1.0)]])
def test_bad_loads_raise_what_load_raises(items) -> None:
    msgs = []
    for bulk in (True, False):
        ctx = _ctx(TOPOS["cluster-2x8-rail"], 1.0, 0.0)
        with pytest.raises(ScenarioError) as exc:
            if bulk:
                ctx.loads(items)
            else:
                [ctx.load(g, b, setup_s=s) for g, b, s in items]
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]


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
    ((("a", "gpu0", "gpu1", 1.0), ("b", "gpu0", "gpu1", float(2 ** 61))), "bytes"),
    ((("a", "gpu0", "gpu1", 1.0), ("b", "gpu0", "gpu1", 1.0, 1e12, None)), "setup"),
    ((("a", "gpu0", "gpu1", float("nan")),), "bytes"),
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


@pytest.mark.parametrize("lanes", [-1, 1.5, "3", None, True])
def test_lanes_that_are_not_a_count_are_refused(lanes) -> None:
    with pytest.raises(ScenarioError, match="lanes must be a whole number >= 0"):
        Simulation(TOPOS["hgx-h200-8"]).transfers([("a", "gpu0", "gpu1", 1.0)], lanes=lanes)


@pytest.mark.parametrize("bad", [("a", "gpu0", "gpu1"), ("a", "gpu0", "gpu1", 1.0, 0.0, None, "x"), "abcd", 7])
def test_a_malformed_copy_is_named_and_nothing_is_declared(bad) -> None:
    sim = Simulation(TOPOS["hgx-h200-8"])
    with pytest.raises(ScenarioError, match=r"transfers: copy 1 must be \(id, src, dst, nbytes"):
        sim.transfers([("a", "gpu0", "gpu1", 1.0), bad])
    assert sim._work == []


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


@pytest.mark.parametrize("latencies", [0, 1, 3, 17])
def test_a_copy_standing_for_several_pays_its_latency_that_many_times(latencies):
    """A lone copy takes latency + bytes / bandwidth; one that stands for `latencies` real copies in a row (a
    coarsened bucket's or pipeline task's) pays its route's latency that many times and moves its bytes once, the
    same declared in bulk (`transfers`) as one call at a time (`transfer`); 0 (a copy riding behind an earlier one
    on its route) pays none; a negative or fractional count is refused."""
    topo = presets.get("hgx-h200-8", calibration=None)
    lat = topo.path("gpu0", "gpu1").latency_s
    bw = path_bandwidth_Bps(topo, "gpu0", "gpu1")
    for bulk in (True, False):
        sim = Simulation(topo)
        if bulk:
            sim.transfers([("a", "gpu0", "gpu1", 2**30)], latencies=latencies)
        else:
            sim.transfer("a", "gpu0", "gpu1", 2**30, latencies=latencies)
        assert sim.run().makespan_s == pytest.approx(latencies * lat + 2**30 / bw, rel=1e-12)
    for bad in (-1, 1.5, True):
        with pytest.raises(ScenarioError, match="latencies must be a whole number >= 0"):
            Simulation(topo).transfers([("a", "gpu0", "gpu1", 1.0)], latencies=bad)


def test_a_copys_setup_starts_no_earlier_than_its_start():
    """`setup_s` is software work from `start` (or its `after`) on; where the copy queues on an engine the setup is
    a delay of its own, which began at 0 whatever `start` said (a review): both kinds now begin it at `start`."""
    for calibration in (None, "default"):  # no engine queue on the datasheet preset; the profile's copy engines
        topo = presets.get("hgx-h200-8", calibration=calibration)
        sim = Simulation(topo)
        sim.transfer("a", "gpu0", "gpu1", 2**20, start=1e-3, setup_s=1e-4)
        lat, bw = topo.path("gpu0", "gpu1", 2**20).latency_s, path_bandwidth_Bps(topo, "gpu0", "gpu1", 2**20)
        assert sim.run().makespan_s == pytest.approx(1e-3 + 1e-4 + lat + 2**20 / bw, rel=1e-9)
