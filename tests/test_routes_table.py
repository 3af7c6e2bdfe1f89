"""`simcore.routes.RouteTable`: routes numbered once by content, kept flat, and gathered for the compiled loop
exactly as the per-route arrays they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fabricsim.hwmodels import presets
from fabricsim.simcore import Simulation
from fabricsim.simcore.routes import RouteTable

NAMES = [f"r{i}" for i in range(12)]
INDEX = {n: 10 * i + 3 for i, n in enumerate(NAMES)}  # resource numbers unlike positions

routes_st = st.lists(
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([0.5, 1.0, 2.0])), min_size=1, max_size=5,
             unique_by=lambda p: p[0]).map(lambda rs: tuple(sorted(rs))),
    min_size=1, max_size=30)


@given(routes_st)
def test_equal_routes_share_a_number_and_every_route_reads_back(routes) -> None:
    table = RouteTable(INDEX)
    numbers = [table.number(r) for r in routes]
    distinct = list(dict.fromkeys(routes))
    assert len(table) == len(distinct)
    assert numbers == [distinct.index(r) for r in routes]  # numbered in order of first sight
    for r, n in zip(routes, numbers, strict=True):
        res, coef = table.arrays(n)
        assert res.dtype == np.int64 and coef.dtype == np.float64
        assert res.tolist() == [INDEX[name] for name, _ in r] and coef.tolist() == [c for _, c in r]
        assert table.arrays(n)[0] is res  # made once


@given(routes_st, st.data())
def test_gather_is_the_concatenation_of_the_chosen_routes(routes, data) -> None:
    table = RouteTable(INDEX)
    for r in routes:
        table.number(r)
    used = np.array(data.draw(st.lists(st.integers(0, len(table) - 1), unique=True)), np.int64)
    roff, rres, rcoef = table.gather(used)
    assert roff[0] == 0 and len(roff) == len(used) + 1
    for k, n in enumerate(used.tolist()):
        res, coef = table.arrays(n)
        assert rres[roff[k]:roff[k + 1]].tolist() == res.tolist()
        assert rcoef[roff[k]:roff[k + 1]].tolist() == coef.tolist()
    assert len(rres) == roff[-1] == len(rcoef)


def test_a_simulation_numbers_a_pair_once_and_a_task_by_its_hbm() -> None:
    sim = Simulation(presets.get("hgx-h200-8", calibration=None))
    sim.transfer("a", "gpu0", "gpu1", 1e9)
    sim.transfer("b", "gpu0", "gpu1", 2e9)
    sim.transfer("c", "gpu1", "gpu0", 1e9)
    sim.task("k", "gpu0", hbm_bytes=1e9)
    sim.task("k2", "gpu0", hbm_bytes=2e9)
    routes = [w[2] for w in sim._work]
    assert routes[0] == routes[1] != routes[2] and routes[3] == routes[4] and len(sim._routes) == 3
    res, coef = sim._routes.arrays(routes[3])
    assert [sim._res_names[i] for i in res.tolist()] == ["gpu0.hbm"] and coef.tolist() == [1.0]
    path = sim.topology.path("gpu0", "gpu1")
    res, coef = sim._routes.arrays(routes[0])
    assert [(sim._res_names[i], c) for i, c in zip(res.tolist(), coef.tolist(), strict=True)] == list(path.resources)
