"""Compute tasks (roofline, HBM shared with copies), memory accounting, Perfetto traces, utilisation."""

from __future__ import annotations

import json

import pytest

from fabricsim.hwmodels import presets
from fabricsim.simcore import OutOfMemory, ScenarioError, Simulation
from fabricsim.simcore.memory import MemoryPool

pytestmark = pytest.mark.usefixtures("both_loops")  # every case on the compiled loop and on simpy


@pytest.fixture
def h100():
    return presets.get("h100-1", calibration=None)


def test_compute_bound_task_takes_flops_over_peak(h100):
    sim = Simulation(h100)
    sim.task("k", "gpu0", flops=989e12 * 0.01, hbm_bytes=1e6, dtype="bf16")
    assert sim.run()["k"].finish_s == pytest.approx(0.01, rel=1e-9)


def test_memory_bound_task_takes_bytes_over_hbm_and_shares_hbm_with_a_copy(h100):
    hbm = h100.resources()["gpu0.hbm"]
    sim = Simulation(h100)
    sim.task("k", "gpu0", flops=1e9, hbm_bytes=hbm * 0.01)
    assert sim.run()["k"].finish_s == pytest.approx(0.01, rel=1e-9)
    # Beside a local copy (which draws 2x its rate), max-min gives each flow a level of hbm/3:
    # the task at hbm/3, the copy at hbm/3 (drawing 2hbm/3).
    sim = Simulation(h100)
    sim.task("k", "gpu0", flops=1e9, hbm_bytes=hbm * 0.01)
    sim.transfer("c", "gpu0", "gpu0", hbm * 0.01)
    r = sim.run()
    assert r["k"].finish_s == pytest.approx(0.03, rel=1e-9)
    assert r["c"].finish_s == pytest.approx(0.03, rel=1e-9)


def test_task_unknown_dtype_is_named(h100):
    with pytest.raises(Exception, match="dtype 'fp4'"):
        Simulation(h100).task("k", "gpu0", flops=1.0, dtype="fp4")


def test_memory_alloc_free_and_clear_oom(h100):
    sim = Simulation(h100)
    hbm = sim.memory("gpu0")
    hbm.alloc(60 * 2**30, "weights")
    with pytest.raises(OutOfMemory, match=r"out of memory on gpu0: 30.000 GiB requested for 'kv', 20.000 GiB free"):
        hbm.alloc(30 * 2**30, "kv")
    assert hbm.used_bytes == 60 * 2**30  # the failed allocation changed nothing
    hbm.free("weights")
    hbm.alloc(30 * 2**30, "kv")
    assert hbm.peak_bytes == 60 * 2**30


def test_a_free_dated_earlier_lowers_the_levels_after_it_and_the_peak():
    """`free(tag, at=t)` (a declared item's release, applied after the compiled run): the timeline gains the
    release at t, every level recorded after t drops by the freed bytes, and the peak is the new maximum."""
    now = [0.0]
    pool = MemoryPool("gpu0", 100, clock=lambda: now[0])
    for t, nbytes, tag in [(1.0, 30, "a"), (2.0, 40, "b"), (4.0, 20, "c")]:
        now[0] = t
        pool.alloc(nbytes, tag)
    now[0] = 9.0
    assert pool.free("a", at=3.0) == 30
    assert pool.timeline == [(0.0, 0), (1.0, 30), (2.0, 70), (3.0, 40), (4.0, 60)]
    assert (pool.used_bytes, pool.peak_bytes) == (60, 70)
    for tag, at in (("b", 1.5), ("c", 9.5), ("c", -1.0)):  # before its allocation, after now, before the start
        with pytest.raises(ScenarioError, match=f"free of '{tag}' on gpu0 dated"):
            pool.free(tag, at=at)
    assert pool.used_bytes == 60  # a refused release changed nothing
    pool2 = MemoryPool("gpu0", 100, clock=lambda: now[0])
    pool2.alloc(10, "x")
    now[0] = 20.0
    assert pool2.free("x", at=20.0) == 10 and pool2.timeline[-1] == (20.0, 0)  # later than the last change: appended


def test_trace_is_valid_perfetto_json_with_non_overlapping_lanes(tmp_path):
    topo = presets.get("hgx-h200-8", calibration=None)
    sim = Simulation(topo)
    for g in range(8):
        sim.transfer(f"h{g}", "host0" if g < 4 else "host1", f"gpu{g}", 2**28)
        sim.transfer(f"p{g}", "gpu0", f"gpu{g}", 2**27, start=1e-4)
    sim.task("k", "gpu3", flops=1e12, hbm_bytes=1e9)
    res = sim.run()
    out = tmp_path / "trace.json"
    res.write_trace(str(out))
    doc = json.loads(out.read_text())
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert {e["name"] for e in slices} >= {"h0", "p7", "k"} and counters
    lanes: dict = {}
    for e in slices:
        lanes.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in lanes.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:], strict=False))


def test_utilisation_dataframe_and_mean(h100):
    sim = Simulation(h100)
    sim.transfer("a", "host", "gpu0", 2**30)
    res = sim.run()
    df = res.utilisation()
    assert set(df.columns) >= {"resource", "t_s", "load_Bps", "utilisation"}
    assert df["utilisation"].max() == pytest.approx(1.0)
    assert max(res.mean_utilisation().values()) == pytest.approx(1.0, rel=1e-3)
    assert res.bytes_by_link_class() == {"h2d": 2**30}


@pytest.mark.parametrize("loop", ["compiled", "simpy"])
def test_a_copy_is_drawn_on_its_links_from_its_first_byte(tmp_path, loop):
    """latency_s is the path latency plus fixed cost and setup, on both loops; the trace slice starts after it, so a
    copy that waits (a pipeline's fill folded into its setup) does not look busy on its links."""
    topo = presets.get("hgx-h200-8", calibration=None)
    sim = Simulation(topo)
    sim.transfer("a", "gpu0", "gpu1", 2**28, fixed_cost_s=1e-3, setup_s=2e-3)
    sim.delay("d", 5e-3)
    res = sim.run(loop=loop)
    rec = res["a"]
    lat = topo.path("gpu0", "gpu1").latency_s
    assert rec.latency_s == pytest.approx(lat + 3e-3, rel=1e-12)
    assert res["d"].latency_s == 0.0
    out = tmp_path / "trace.json"
    res.write_trace(str(out))
    slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X" and e["name"] == "a"]
    assert slices and all(e["ts"] == pytest.approx((rec.begin_s + rec.latency_s) * 1e6) for e in slices)
    assert all(e["ts"] + e["dur"] == pytest.approx(rec.finish_s * 1e6) for e in slices)
