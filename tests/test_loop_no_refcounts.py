"""The compiled event loop and the solver run without numba's reference counting or allocation
(`_maxmin.NO_REFCOUNT`: on a 2-core VM the atomic increments and decrements of array arguments were over half of
the loop's samples at 8 transfers in flight). Compiled code has no bounds checks and, without reference counting,
nothing frees an array a callee hands back, so what must hold is:
- by construction: no compiled function returns an array, and the entry points are compiled without reference
  counting (else the speed is gone silently);
- on runs of every solver mode, on both loops, with the flow tables grown mid-run: the runtime's allocation
  counters balance across `run()`, the mode's own solves did run, and no solve writes past the scratch
  `_fluidlayout.scratch_sizes` promises (a guard tail after each scratch array stays as it was)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from numba import types

from fabricsim.simcore import _eventloop, _fluidcore, _maxmin
from fabricsim.simcore.lowering import load_loop

ENTRY_POINTS = {
    _fluidcore: ("join", "arrive", "depart", "relink", "bad_route_entry", "next_finish", "_solve", "_solve_above",
                 "_incremental", "_saturation_floor"),
    _maxmin: ("max_min",),
    _eventloop: ("run",),
}


def _holds_array(t: types.Type) -> bool:
    if isinstance(t, types.Array):
        return True
    return isinstance(t, types.BaseTuple) and any(_holds_array(x) for x in t.types)


def test_no_compiled_function_returns_an_array_and_entry_points_count_no_references() -> None:
    load_loop()  # compiles (or loads) the loop, and with it every solver function it calls
    seen = 0
    for mod in (_maxmin, _fluidcore, _eventloop):
        for name in dir(mod):
            f = getattr(mod, name)
            for cres in getattr(f, "overloads", {}).values():
                seen += 1
                assert not _holds_array(cres.signature.return_type), f"{mod.__name__}.{name} returns an array"
    # the inline helpers are compiled only inside their callers (no signature of their own), where numba refuses
    # to compile an allocation without its runtime; every entry point is compiled on its own and was looked at
    assert seen >= sum(map(len, ENTRY_POINTS.values()))
    for mod, names in ENTRY_POINTS.items():
        for name in names:
            f = getattr(mod, name)
            assert f.overloads, f"{mod.__name__}.{name} is not compiled"
            assert f.targetoptions.get("_nrt") is False, f"{mod.__name__}.{name} counts references"


CHILD = textwrap.dedent("""
    import json, random, sys
    import numpy as np
    from numba.core.runtime import rtsys
    from fabricsim.hwmodels import presets
    from fabricsim.simcore import Simulation, _fluidlayout as L
    from fabricsim.simcore.fluid import FluidNetwork

    GUARD, MARK = 64, -7
    scratch = []  # every scratch pair handed out: (ints, floats, their promised lengths)
    grow = FluidNetwork._grow_flows
    def guarded(self, slots, width):  # the scratch as long as scratch_sizes says, then a guard tail
        grow(self, slots, width)
        ni, nf = L.scratch_sizes(slots, width)
        self._xi = np.concatenate([np.empty(ni, np.int64), np.full(GUARD, MARK, np.int64)])
        self._xf = np.concatenate([np.empty(nf), np.full(GUARD, float(MARK))])
        scratch.append((self._xi, self._xf, ni, nf))
    FluidNetwork._grow_flows = guarded

    def declare(loop, seed):
        # cross-machine GPU copies (long routes, one component through the spine) with more flows in flight than
        # either loop starts with room for: the simpy path's 64 slots, the compiled loop's first 1,024
        topo = presets.get("cluster-4x8-rail", calibration=None)
        gpus = [e for e in topo.endpoints() if ".gpu" in e]
        rng = random.Random(seed)
        sim = Simulation(topo, record_load=False)
        chains = 1100 if loop == "compiled" else 150
        for w in range(chains):
            prev = []
            for i in range(3):
                src, dst = rng.sample(gpus, 2)
                sim.transfer(f"w{w}.{i}", src, dst, int(2 ** rng.uniform(16, 26)), after=prev)
                prev = [f"w{w}.{i}"]
        return sim

    out = {}
    for loop in ("compiled", "simpy"):
        declare(loop, 0).run(loop=loop)  # compiled code loaded, caches warm
        sim = declare(loop, 1)
        scratch.clear()  # (the network made with the simulation has its first, unused by the compiled loop)
        before = list(rtsys.get_allocation_stats())
        res = sim.run(loop=loop)
        after = list(rtsys.get_allocation_stats())
        ctr = sim.net._ctr
        out[loop] = {"events": res.events, "before": before, "after": after, "grown": len(scratch),
                     "fallbacks": int(ctr[L.N_FALLBACKS]), "floor": int(ctr[L.N_FLOOR]),
                     "whole": int(ctr[L.N_WHOLE]), "solves": int(ctr[L.N_SOLVES]),
                     "guards_intact": all(bool(np.all(xi[ni:] == MARK)) and bool(np.all(xf[nf:] == MARK))
                                          for xi, xf, ni, nf in scratch)}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module", params=["incremental", "floor", "full"])
def mode_runs(request) -> tuple[str, dict]:
    """Both loops' runs under one solver mode, in a fresh process (the mode is read when a network is made)."""
    env = dict(os.environ, NUMBA_NRT_STATS="1", FABRICSIM_PROGRESS="0", FABRICSIM_SOLVER=request.param)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return request.param, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("loop", ["compiled", "simpy"])
def test_every_solver_mode_runs_in_its_scratch_and_leaves_nothing_allocated(loop: str, mode_runs) -> None:
    mode, runs = mode_runs
    got = runs[loop]
    assert got["events"] == 2 * 3 * (1100 if loop == "compiled" else 150)  # an arrival and a departure a transfer
    assert got["grown"] >= 2  # the flow tables (and the scratch with them) grew during the run, more than once
    # the mode's own solves ran
    if mode == "incremental":
        assert got["solves"] > 0 and got["fallbacks"] > 0 and got["floor"] > 0
    elif mode == "floor":
        assert got["floor"] > 0 and got["solves"] == 0
    else:
        assert got["whole"] > 0 and got["solves"] == 0 and got["floor"] == 0
    assert got["guards_intact"]
    (alloc0, free0, mi_alloc0, mi_free0), (alloc1, free1, mi_alloc1, mi_free1) = got["before"], got["after"]
    assert alloc1 - alloc0 == free1 - free0
    assert mi_alloc1 - mi_alloc0 == mi_free1 - mi_free0
