"""The compiled fluid core's own machinery: array growth, slot reuse, heap compaction, and the same answers
compiled as interpreted (NUMBA_DISABLE_JIT=1 runs the identical Python source)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import simpy

from fabricsim.simcore.fluid import Flow, FluidNetwork

ROOT = Path(__file__).resolve().parents[1]


def _finish_times(capacity, flows, starts=None):
    """Run `flows` (Flow objects) on a bare network; returns each flow's finish time by key."""
    env = simpy.Environment()
    net = FluidNetwork(env, capacity)
    done: dict[object, float] = {}

    def launch(f, at):
        if at:
            yield env.timeout(at)
        yield net.start(f)
        done[f.key] = env.now

    for i, f in enumerate(flows):
        env.process(launch(f, (starts or [0.0] * len(flows))[i]))
    env.run()
    return done, net


def test_processor_sharing_closed_form_with_many_long_routes():
    """150 flows on one link (plus 8 wide resources each, so routes outgrow the initial width and the slot
    table outgrows its first 64 rows): with equal shares the k-th smallest finishes at
    t_k = t_(k-1) + (s_k - s_(k-1)) x (flows left) / C. Every departure re-rates all others, so the finish
    heap would hold ~n^2/2 stale entries without compaction."""
    rng = random.Random(7)
    C = 3.0e9
    n = 150
    sizes = [rng.uniform(1e6, 1e9) for _ in range(n)]
    caps = [C] + [1e30] * 8
    flows = [Flow(i, list(range(9)), [1.0] * 9, s) for i, s in enumerate(sizes)]
    done, net = _finish_times(caps, flows)
    order = sorted(range(n), key=lambda i: sizes[i])
    t, prev = 0.0, 0.0
    for k, i in enumerate(order):
        t += (sizes[i] - prev) * (n - k) / C
        prev = sizes[i]
        assert done[i] == pytest.approx(t, rel=1e-9)
    assert net.active == 0
    assert net._hk.shape[0] <= 8 * n  # compaction kept the heap near the number of flows


def test_reused_slot_ignores_the_previous_flows_stale_finish_entries():
    """A (4 B) and B (1 B) share a 1 B/s link: B ends at 2, A speeds up and ends at 5 while its first heap
    entry (t=8) is still queued, below D's valid one (D: 6 B alone on another link, ends at 6). C (10 B,
    started at 5) takes A's slot and must end at 15, not at 8."""
    env = simpy.Environment()
    net = FluidNetwork(env, [1.0, 1.0])
    a, b, c = Flow("a", [0], [1.0], 4.0), Flow("b", [0], [1.0], 1.0), Flow("c", [0], [1.0], 10.0)
    d = Flow("d", [1], [1.0], 6.0)
    seen = {}

    def run(f, after=None):
        if after is not None:
            yield after
        yield net.start(f)
        seen[f.key] = env.now

    env.process(run(b))
    env.process(run(d))
    pa = env.process(run(a))
    env.process(run(c, after=pa))
    env.run()
    assert seen == {"b": 2.0, "a": 5.0, "d": 6.0, "c": 15.0}
    assert c.slot == a.slot


_SCENARIO = """
import json, random, sys
sys.path.insert(0, {root!r})
from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
rng = random.Random(3)
topo = presets.get("hgx-h200-8", calibration=None)
ends = [e for e in topo.endpoints() if e.split(".")[-1].startswith(("gpu", "host"))]
sim = Simulation(topo, record_rates=True)
for i in range(120):
    sim.transfer(f"t{{i}}", rng.choice(ends), rng.choice(ends), int(2 ** rng.uniform(12, 28)),
                 start=rng.uniform(0, 2e-3), rate_cap_Bps=rng.choice([None, 30e9]))
res = sim.run()
print(json.dumps({{r.id: [r.finish_s, sim.rate_segments(r.id)] for r in res.records}}))
"""


def test_interpreted_core_gives_the_same_answers_as_compiled():
    script = _SCENARIO.format(root=str(ROOT))
    out = {}
    for jit in ("0", "1"):
        env = dict(os.environ, NUMBA_DISABLE_JIT="1" if jit == "0" else "0")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[jit] = json.loads(proc.stdout)
    assert out["0"].keys() == out["1"].keys()
    for k in out["1"]:
        assert out["0"][k][0] == pytest.approx(out["1"][k][0], rel=1e-12, abs=1e-18), k
        assert len(out["0"][k][1]) == len(out["1"][k][1]), k


def test_route_width_grows_while_flows_are_active():
    """Flows on 1-resource routes are running when a 12-resource flow arrives: the wider route renumbers every
    incidence, and the flows already running must still share their link (processor sharing: three equal
    flows of 3, 6 and 9 B on a 1 B/s link end at 9, 15 and 18)."""
    env = simpy.Environment()
    caps = [1.0] + [1e30] * 11
    net = FluidNetwork(env, caps)
    flows = [Flow("a", [0], [1.0], 3.0), Flow("b", [0], [1.0], 6.0),
             Flow("wide", list(range(12)), [1.0] * 12, 9.0)]
    seen = {}

    def run(f, at):
        yield env.timeout(at)
        yield net.start(f)
        seen[f.key] = env.now

    for f in flows:
        env.process(run(f, 0.0 if f.key != "wide" else 1e-9))
    env.run()
    assert net._width >= 12
    # a and b alone for 1e-9 s, then all three share the link equally
    assert seen["a"] == pytest.approx(9.0, rel=1e-8)
    assert seen["b"] == pytest.approx(15.0, rel=1e-8)
    assert seen["wide"] == pytest.approx(18.0, rel=1e-8)
