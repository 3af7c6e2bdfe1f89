"""The compiled solver's route classes and lazy max-min against per-flow answers, on random inputs.

`_class_rates` groups flows with one route number, weight and cap (a hash table in one pass) and solves each
class once with its member count; `max_min` re-scores saturation levels lazily. Both must give exactly the
rates a per-flow solve gives (and the textbook oracle in test_fluid), whatever the route numbering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fluid import reference_max_min

from fabricsim.simcore import _fluidlayout as L
from fabricsim.simcore.fluid import Flow, load_core, max_min_rates

_route = st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True)


def _class_rates(flows: list[Flow], routes: list[int], capacity: list[float]) -> list[float]:
    """Rates from the core's class solve, with route numbers `routes` (same number = same resources and
    coefficients, -1 = no class), every resource binding."""
    core = load_core()
    n, width = len(flows), max(len(f.res) for f in flows)
    fres, fcoef = np.zeros((n, width), np.int64), np.zeros((n, width))
    fn, ff, fi = np.zeros(n, np.int64), np.zeros((n, L.NFF)), np.zeros((n, L.NFI), np.int64)
    for s, f in enumerate(flows):
        fn[s] = len(f.res)
        fres[s, :fn[s]], fcoef[s, :fn[s]] = f.res, f.coef
        ff[s, L.W], ff[s, L.CAP] = f.weight, np.inf if f.cap is None else f.cap
        fi[s, L.ROUTE] = routes[s]
    rf = np.zeros((len(capacity), L.NRF))
    rf[:, L.RCAP] = capacity
    ri = np.zeros((len(capacity), L.NRI), np.int64)
    ri[:, L.BINDING] = 1
    comp = np.arange(n, dtype=np.int64)
    rloc = np.full(len(capacity), -1, np.int64)
    rates = core._class_rates(comp, n, fres, fcoef, fn, ff, fi, rf, ri, rloc, L.RCAP, np.empty(n, np.int64))
    assert (rloc == -1).all()  # scratch left as found
    return rates.tolist()


@settings(max_examples=150, deadline=None)
@given(routes=st.lists(_route, min_size=1, max_size=6),
       members=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([1.0, 2.5]), st.sampled_from([None, 0.7, 3.0])),
                        min_size=1, max_size=60),
       caps=st.lists(st.floats(0.5, 100.0), min_size=12, max_size=12),
       coef=st.sampled_from([1.0, 2.0]), offset=st.integers(0, 1 << 20))
def test_class_solve_gives_each_flow_its_per_flow_rate(routes, members, caps, coef, offset):
    """Many flows on few routes, two weights and caps: classes (route numbers shifted by `offset`, so hash
    slots collide differently) give the same rates as solving every flow alone."""
    flows, numbers = [], []
    for i, (r, w, cap) in enumerate(members):
        res = routes[r % len(routes)]
        flows.append(Flow(i, res, [coef] * len(res), 1.0, weight=w, cap=cap))
        numbers.append(offset + r % len(routes))
    per_flow, _ = max_min_rates(flows, caps)
    assert _class_rates(flows, numbers, caps) == pytest.approx(per_flow, rel=1e-12, abs=1e-15)
    assert _class_rates(flows, [-1] * len(flows), caps) == pytest.approx(per_flow, rel=1e-12, abs=1e-15)
    assert per_flow == pytest.approx(reference_max_min(flows, caps), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(flows=st.lists(st.tuples(st.lists(st.integers(0, 39), min_size=1, max_size=8, unique=True),
                                st.sampled_from([0.5, 1.0, 3.0]), st.one_of(st.none(), st.floats(0.05, 20.0))),
                      min_size=1, max_size=120),
       caps=st.lists(st.floats(0.5, 100.0), min_size=40, max_size=40))
def test_lazy_max_min_matches_textbook_on_large_components(flows, caps):
    """Long routes over many resources, so most saturation levels go stale before they are looked at."""
    fs = [Flow(i, res, [1.0] * len(res), 1.0, weight=w, cap=cap) for i, (res, w, cap) in enumerate(flows)]
    got, load = max_min_rates(fs, caps)
    assert got == pytest.approx(reference_max_min(fs, caps), rel=1e-9, abs=1e-12)
    for r, v in load.items():
        assert v <= caps[r] * (1 + 1e-9)
