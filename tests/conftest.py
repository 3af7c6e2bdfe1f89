"""Shared fixtures: small hand-built topologies whose answers have closed forms."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from fabricsim.hwmodels.specs import GPU_MODELS
from fabricsim.hwmodels.topology import Topology

GBps = 1e9

# Property tests draw the same examples on every run by default, so the README's test command (and CI) gives the
# same verdict on the same code; `HYPOTHESIS_PROFILE=explore` draws fresh random examples (run it when changing
# the engine: it found the FIFO tie of two items starting at one instant that a fixed draw had missed).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def line_topology(n_links: int = 3, Bps: float = 10 * GBps, latency_s: float = 1e-6) -> Topology:
    """gpu0 - sw0 - sw1 - ... - gpuN: endpoints hang off a chain of switches so flows share chain links.

    Endpoint i is attached to switch i with a very wide link, so only the chain links (capacity `Bps`)
    constrain anything: a flow gpuI -> gpuJ crosses chain links I..J-1.
    """
    t = Topology("line")
    for i in range(n_links + 1):
        t.add_component(f"sw{i}", "pcie-switch")
        t.add_component(f"gpu{i}", "gpu", spec=GPU_MODELS["H100"])
        t.add_link(f"gpu{i}", f"sw{i}", "pcie", 1e6 * GBps, 0.0)
    for i in range(n_links):
        t.add_link(f"sw{i}", f"sw{i + 1}", "pcie", Bps, latency_s)
    return t


@pytest.fixture
def line() -> Topology:
    return line_topology()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load (on a fresh checkout: compile, ~40 s) the fluid engine's compiled core once, before any test runs,
    so its one-off cost is not charged to whichever test happens to simulate first."""
    from fabricsim.simcore.fluid import load_core
    from fabricsim.simcore.lowering import load_loop

    load_core()
    load_loop()


@pytest.fixture(params=["auto", "simpy"])
def both_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once with declared work on the compiled event loop ("auto") and once on the simpy reference
    path: every closed form and oracle must hold on both."""
    monkeypatch.setenv("FABRICSIM_LOOP", request.param)
    return request.param
