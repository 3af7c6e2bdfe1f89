"""Regressions found by reviewing the compiled fluid core: re-entrant `on_load`, route checks, array kinds."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from fabricsim.simcore.fluid import Flow, FluidNetwork, max_min_rates


def test_flow_started_from_on_load_during_a_departure_that_grows_the_slot_table():
    """`on_load` runs inside `_wake` (as it did in the pure-Python engine). A flow started from it that needs a
    65th slot reallocates the flow scratch arrays, `_finished` included, before `_wake` reads the finished
    slots from it: the old engine finished every flow (the late one at t=2); the new one read garbage slots."""
    env = simpy.Environment()
    seen: dict[object, float] = {}
    fired = []

    def on_load(now, _load):
        if now > 0 and not fired:
            fired.append(now)
            late = Flow("late", [1], [1.0], 1.0)
            net.start(late).callbacks.append(lambda _e: seen.__setitem__("late", env.now))

    net = FluidNetwork(env, [64.0, 1.0], on_load=on_load)

    def run(f):
        yield net.start(f)
        seen[f.key] = env.now

    for i in range(64):  # 64 flows fill the initial slot table
        env.process(run(Flow(i, [0], [1.0], 1.0 + i)))
    env.run()
    assert seen["late"] == 2.0
    assert seen[0] == 1.0 and seen[63] == 32.5
    assert len(seen) == 65 and net.active == 0


def test_a_route_naming_a_missing_resource_or_a_bad_coefficient_is_refused_before_anything_changes():
    """The compiled core does no bounds checks, so `start` and `max_min_rates` vet each route first."""
    env = simpy.Environment()
    net = FluidNetwork(env, [1.0, 2.0])
    for res, coef in (([2], [1.0]), ([-1], [1.0]), ([0, 1], [1.0, 0.0]), ([0], [float("nan")])):
        with pytest.raises(ValueError, match="route entry"):
            net.start(Flow("bad", res, coef, 1.0))
        with pytest.raises(ValueError, match="route entry"):
            max_min_rates([Flow("bad", res, coef, 1.0)], [1.0, 2.0])
    assert net.active == 0
    ok = Flow("ok", [1], [1.0], 4.0)
    net.start(ok)
    env.run()
    assert env.now == 2.0


def test_read_only_and_strided_route_arrays_are_accepted():
    route = np.array([0, 9, 1, 9], dtype=np.int64)[::2]  # strided view
    coef = np.ones(2)
    coef.flags.writeable = False
    rates, load = max_min_rates([Flow("f", route, coef, 1.0)], [3.0, 5.0])
    assert rates == [3.0] and load == {0: 3.0, 1: 3.0}
    assert all(type(k) is int and type(v) is float for k, v in load.items())
