"""`simcore.gcpause`: the cyclic collector is off inside a simulation's declare-and-run and exactly as it was
after it, however the block ends."""

from __future__ import annotations

import gc

import pytest

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
from fabricsim.simcore.gcpause import gc_paused
from fabricsim.workloads import models
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync


@pytest.fixture(autouse=True)
def _restore_gc():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled) -> None:
    (gc.enable if enabled else gc.disable)()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # an inner block leaves it off for the outer one
    assert gc.isenabled() == enabled


def test_an_exception_inside_restores_it() -> None:
    gc.enable()
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("x")
    assert gc.isenabled()


def _wait(sim: Simulation):
    yield sim.env.timeout(1e-3)


def test_a_run_and_a_sync_leave_the_collector_on() -> None:
    gc.enable()
    seen = []
    sim = Simulation(presets.get("hgx-h200-8", calibration=None))
    sim.transfer("a", "gpu0", "gpu1", 1e9)
    sim.process(_wait(sim))  # procedural: the simpy path
    real = sim.env.run

    def spy(*a, **kw):
        seen.append(gc.isenabled())
        return real(*a, **kw)

    sim.env.run = spy
    sim.run()
    assert seen == [False] and gc.isenabled()
    g = [f"gpu{i}" for i in range(8)]
    setup = SyncSetup(presets.get("hgx-h200-8", calibration=None), models.get("Llama-3-8B"), FSDPLayout(g[:4]),
                      RolloutLayout(g[4:], tp=1))
    assert simulate_sync(setup, get("nccl-broadcast")).feasible
    assert gc.isenabled()


def test_the_pause_can_be_turned_off(monkeypatch) -> None:
    gc.enable()
    monkeypatch.setenv("FABRICSIM_GC_PAUSE", "0")
    with gc_paused():
        assert gc.isenabled()
    assert gc.isenabled()


@pytest.mark.parametrize("strategy", ["nccl-broadcast", "host-staged", "rdma-p2p", "shared-pool:pull-on-publish",
                                      "shared-pool:relay"])
def test_a_finished_sync_is_freed_by_reference_counting(monkeypatch, strategy) -> None:
    """No reference cycle runs through a simulation: with the collector held off, what a run allocated is freed
    by reference counting when its result is all that is left. (A cycle — a memory pool's clock closing over the
    simulation was one — would leave a 1,024-GPU run's ~2M objects to one collection pass of ~2 s.)"""
    import weakref

    from fabricsim.workloads.weightsync import base

    made = []

    class Watched(Simulation):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            made.append(weakref.ref(self))

    monkeypatch.setattr(base, "Simulation", Watched)
    g = [f"gpu{i}" for i in range(8)]
    setup = SyncSetup(presets.get("hgx-h200-8", calibration=None), models.get("Llama-3-8B"), FSDPLayout(g[:4]),
                      RolloutLayout(g[4:], tp=1))
    gc.collect()
    gc.disable()
    res = simulate_sync(setup, get(strategy))
    assert res.feasible and made
    assert all(ref() is None for ref in made)


def test_a_simulation_with_memory_pools_is_freed_by_reference_counting() -> None:
    import weakref

    gc.disable()
    sim = Simulation(presets.get("hgx-h200-8", calibration=None))
    sim.memory("gpu0").alloc(1 << 20, "x")
    sim.transfer("a", "gpu0", "gpu1", 1e9)
    sim.run()
    ref = weakref.ref(sim)
    del sim
    assert ref() is None
