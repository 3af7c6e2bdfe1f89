"""A compiled run's records are made when first looked at (`records.LazyRecords`): the same records, the same
objects as the items' events carry, in declaration order, and the summaries a sync needs without making them."""

from __future__ import annotations

import random

import pytest

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
from fabricsim.simcore.records import LazyRecords


def _declare(seed: int = 3, n: int = 60) -> Simulation:
    topo = presets.get("hgx-h200-8", calibration=None)
    eps = [e for e in topo.endpoints() if e.split(".")[-1].startswith(("gpu", "host"))]
    rng = random.Random(seed)
    sim = Simulation(topo)
    prev: list = []
    for i in range(n):
        ev = sim.transfer(f"t{i}", rng.choice(eps), rng.choice(eps), rng.uniform(1e6, 1e9), after=prev[-1:])
        prev.append(ev)
        if i % 7 == 0:
            sim.delay(f"d{i}", 1e-4, after=[ev])
        if i % 11 == 0:
            sim.task(f"k{i}", "gpu0", hbm_bytes=5e8, after=[ev])
    return sim


def test_lazy_records_equal_the_simpy_paths_records_and_summaries() -> None:
    fast, ref = _declare(), _declare()
    a, b = fast.run(loop="compiled"), ref.run(loop="simpy")
    assert isinstance(a.records, LazyRecords) and isinstance(b.records, list)
    # summaries first, before anything makes the records
    assert a.records._list is None
    assert a.makespan_s == pytest.approx(b.makespan_s, rel=1e-9)
    assert a.bytes_by_link_class() == pytest.approx(b.bytes_by_link_class(), rel=1e-12)
    assert a.records._list is None
    assert len(a.records) == len(b.records)
    for ra, rb in zip(a.records, b.records, strict=True):
        assert (ra.id, ra.kind, ra.src, ra.dst, ra.path_class, ra.route) == (rb.id, rb.kind, rb.src, rb.dst,
                                                                           rb.path_class, rb.route)
        assert ra.finish_s == pytest.approx(rb.finish_s, rel=1e-9)
    assert a.records == list(a.records) and a.records[2:4] == list(a.records)[2:4]
    assert a.makespan_s == max(r.finish_s for r in a.records)  # the summary is the records' own, exactly
    by_class: dict[str, float] = {}
    for r in a.transfers:
        by_class[r.path_class] = by_class.get(r.path_class, 0.0) + r.bytes
    assert a.bytes_by_link_class() == by_class


def test_an_events_value_is_its_record_whichever_is_asked_first() -> None:
    sim = _declare()
    late, early = sim._done["t50"], sim._done["t3"]
    res = sim.run(loop="compiled")
    rec = late.value  # out of order, before the records are made
    assert rec.id == "t50" and rec.finish_s > 0
    records = list(res.records)
    assert records[sim._done["t50"].item] is rec
    assert early.value is records[early.item]
    assert [r.id for r in records] == list(sim._done)  # declaration order


def test_work_declared_after_a_compiled_run_keeps_the_order() -> None:
    sim = _declare(n=20)
    sim.run(loop="compiled")
    first = sim._done["t19"]
    sim.transfer("more", "gpu0", "gpu1", 1e8, after=[first])
    res = sim.run()
    ids = [r.id for r in res.records]
    assert ids == list(sim._done) and ids[-1] == "more"
    assert res["more"].start_s == pytest.approx(first.value.finish_s)
    assert first.value is res["t19"]
