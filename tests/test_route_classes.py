"""Route classes and the lazy max-min against per-flow answers, on random inputs.

The core keeps flows with one route, weight and cap in one class slot, which `max_min` solves as a single flow
of the members' total weight and cap (n x w, n x cap); each member's rate is the class's over n. That must be
exactly the rate a per-flow solve gives each of them (and the textbook oracle in test_fluid). `max_min`
re-scores saturation levels lazily, which must not change any level."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fluid import reference_max_min

from fabricsim.simcore.fluid import Flow, max_min_rates

_route = st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True)


@settings(max_examples=150, deadline=None)
@given(routes=st.lists(_route, min_size=1, max_size=6),
       members=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([1.0, 2.5]), st.sampled_from([None, 0.7, 3.0])),
                        min_size=1, max_size=60),
       caps=st.lists(st.floats(0.5, 100.0), min_size=12, max_size=12),
       coef=st.sampled_from([1.0, 2.0]))
def test_class_solve_gives_each_flow_its_per_flow_rate(routes, members, caps, coef):
    """Many flows on few routes, two weights and caps: one flow per class, of n x the weight and cap, gives
    each member (class rate / n) the rate solving every flow alone gives it."""
    flows, key = [], []
    for i, (r, w, cap) in enumerate(members):
        res = routes[r % len(routes)]
        flows.append(Flow(i, res, [coef] * len(res), 1.0, weight=w, cap=cap))
        key.append((r % len(routes), w, cap))
    per_flow, _ = max_min_rates(flows, caps)
    count = Counter(key)
    classes = list(count)
    slots = [Flow(j, routes[r], [coef] * len(routes[r]), 1.0, weight=count[c] * w,
                  cap=None if cap is None else count[c] * cap) for j, c in enumerate(classes) for r, w, cap in [c]]
    class_rate, _ = max_min_rates(slots, caps)
    per_member = {c: class_rate[j] / count[c] for j, c in enumerate(classes)}
    assert [per_member[k] for k in key] == pytest.approx(per_flow, rel=1e-12, abs=1e-15)
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
