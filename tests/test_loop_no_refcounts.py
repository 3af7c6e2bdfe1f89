"""The compiled event loop and the solver's entry points run without numba's reference counting
(`_fluidcore.NO_REFCOUNT`: on a 2-core VM the atomic increments and decrements of their array arguments were
over half of the loop's samples at 8 transfers in flight). Without it nothing frees an array such a function is
handed by a callee, so what must hold is that every array the solver allocates while either loop runs is freed
by the solver itself: the runtime's allocation counters balance across a run (NUMBA_NRT_STATS, read in a fresh
process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, random
    from numba.core.runtime import rtsys
    from fabricsim.hwmodels import presets
    from fabricsim.simcore import Simulation

    def run(seed, loop):
        topo = presets.get("cluster-2x8-rail", calibration=None)
        gpus = [e for e in topo.endpoints() if ".gpu" in e]
        rng = random.Random(seed)
        sim = Simulation(topo, record_load=False)
        for w in range(24):
            prev = []
            for i in range(40):
                src, dst = rng.sample(gpus, 2)
                sim.transfer(f"w{w}.{i}", src, dst, int(2 ** rng.uniform(16, 26)), after=prev)
                prev = [f"w{w}.{i}"]
        return sim.run(loop=loop).events

    got = {}
    for loop in ("compiled", "simpy"):
        run(0, loop)  # compiled code loaded, caches warm
        before = rtsys.get_allocation_stats()
        events = run(1, loop)
        got[loop] = {"events": events, "before": list(before), "after": list(rtsys.get_allocation_stats())}
    print(json.dumps(got))
""")


@pytest.fixture(scope="module")
def counts() -> dict:
    """Both loops' runs in one fresh process (compiling or loading the engine once)."""
    env = dict(os.environ, NUMBA_NRT_STATS="1", FABRICSIM_PROGRESS="0")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("loop", ["compiled", "simpy"])
def test_a_run_frees_every_array_the_solver_allocates(loop: str, counts: dict) -> None:
    got = counts[loop]
    assert got["events"] > 1000
    (alloc0, free0, mi_alloc0, mi_free0), (alloc1, free1, mi_alloc1, mi_free1) = got["before"], got["after"]
    assert alloc1 - alloc0 > 0  # the solver did allocate while the loop ran (else this test checks nothing)
    assert alloc1 - alloc0 == free1 - free0
    assert mi_alloc1 - mi_alloc0 == mi_free1 - mi_free0
