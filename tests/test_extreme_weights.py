"""Rates with weights x coefficients spanning many orders of magnitude, against an exact (`Fraction`) max-min.

Progressive filling subtracts a frozen flow's demand (coefficient x weight) from each resource it uses; when the
terms span 1e11 and more, the small demands left over carried the rounding of the large ones in plain float64
((1e11 + 0.1) - 1e11 is 0.100006...), so rates came out off by up to 1e-2 relative, and from 1e16 on a resource
could be left with no demand at all ("unbounded flow"). The solver (and the floor's saturation level) now keep
those sums compensated; these tests hold every solver mode to 1e-9 of the exact allocation after every solve.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.simcore import _fluidlayout as L
from fabricsim.simcore.fluid import Flow, FluidNetwork, max_min_rates

MODES = {"full": L.FULL, "incremental": L.INCREMENTAL, "floor": L.FLOOR}


def exact_max_min(flows: list[Flow], capacity: list[float]) -> list[Fraction]:
    """Weighted max-min fair rates by progressive filling in exact rational arithmetic (every float input is a
    rational number, so this is the allocation the inputs define, with no rounding at all)."""
    fl = [([int(r) for r in f.res], [Fraction(float(c)) for c in f.coef], Fraction(f.weight),
           None if f.cap is None else Fraction(f.cap)) for f in flows]
    rem = {r: Fraction(capacity[r]) for res, *_ in fl for r in res}
    rates: list[Fraction] = [Fraction(0)] * len(fl)
    unfrozen = set(range(len(fl)))
    while unfrozen:
        demand: dict[int, Fraction] = {}
        for i in unfrozen:
            res, coef, w, _ = fl[i]
            for r, c in zip(res, coef, strict=True):
                demand[r] = demand.get(r, Fraction(0)) + c * w
        levels = [rem[r] / d for r, d in demand.items()]
        levels += [fl[i][3] / fl[i][2] for i in unfrozen if fl[i][3] is not None]
        level = min(levels)
        full = {r for r, d in demand.items() if rem[r] / d == level}
        freeze = {i for i in unfrozen
                  if full & set(fl[i][0]) or (fl[i][3] is not None and fl[i][3] / fl[i][2] == level)}
        for i in freeze:
            rates[i] = fl[i][2] * level
            for r, c in zip(fl[i][0], fl[i][1], strict=True):
                rem[r] -= c * rates[i]
        unfrozen -= freeze
    return rates


def _rel_err(got: float, want: Fraction) -> float:
    return float(abs(Fraction(got) - want) / want)


class ExactChecked(FluidNetwork):
    """A network in a given solver mode that, after every solve, compares every active flow's rate with the
    exact max-min of the active flows."""

    def __init__(self, env: simpy.Environment, capacity: list[float], mode: int) -> None:
        super().__init__(env, capacity)
        self._ctr[L.MODE] = mode
        self.worst = 0.0
        self.solves = 0

    def _flush(self, ev: simpy.Event) -> None:
        super()._flush(ev)
        active = [m for m, f in enumerate(self._flows) if f is not None]
        if not active:
            return
        self.solves += 1
        want = exact_max_min([self._flows[m] for m in active], self.capacity)
        cls = self._mi[active, L.MCLASS]
        got = self._ff[cls, L.RATE] / self._fi[cls, L.NMEM]
        self.worst = max(self.worst, *(_rel_err(float(g), w) for g, w in zip(got, want, strict=True)))


def _run(flows: list[tuple[float, Flow]], caps: list[float], mode: int) -> ExactChecked:
    env = simpy.Environment()
    net = ExactChecked(env, caps, mode)

    def one(t0: float, f: Flow):
        yield env.timeout(t0)
        yield net.start(f)

    for t0, f in flows:
        env.process(one(t0, f))
    env.run()
    return net


@pytest.mark.parametrize("span", [1e11, 1e13, 1e15, 1e17, 1e25])
def test_a_small_flow_beside_a_capped_heavy_one_gets_the_rest_exactly(span):
    """One resource of capacity 1; a flow of weight span x 0.1 capped at 0.5 and one of weight 0.1: the heavy
    one freezes at its cap first, and the light one must get exactly the 0.5 left (it got 0.499998 at 1e11, 0.533
    at 1e15, and an "unbounded flow" error from 1e16 on)."""
    def flows():
        return [Flow("heavy", [0], [1.0], 1.0, weight=0.1 * span, cap=0.5), Flow("light", [0], [1.0], 1.0, weight=0.1)]

    got, _ = max_min_rates(flows(), [1.0])
    assert got == [0.5, 0.5]
    for mode in MODES.values():
        assert _run([(0.0, f) for f in flows()], [1.0], mode).worst <= 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_a_tiny_flow_joining_a_full_resource_is_solved_with_the_flows_there(mode):
    """Two heavy flows fill a resource; a flow with ~1e-21 of their demand joins later. In FLOOR mode the floor's
    saturation level on that resource was (capacity - what the heavy flows draw) / (the tiny demand): rounding
    noise over a tiny number, far above the heavy flows' level, so they were left out as "under the floor" and
    the newcomer got the noise (7e-15 instead of 8.8e-20)."""
    caps = [0.01242981281673029, 98.74670540412961]
    flows = [(0.0, Flow(0, [0], [82.55558826190575], 0.43541529149666003, weight=6535175.469970182)),
             (0.7919175023737817, Flow(1, [1], [46.22956918716887], 0.24003005576195116, weight=7.446051103871542e-09,
                                       cap=194.17991796586782)),
             (0.0, Flow(2, [0], [38.64403484865861], 0.36228618985400857, weight=105.15820525620171)),
             (0.8528248187298693, Flow(3, [0, 1], [0.000247172904841068, 1.7969358355173295], 0.6230755338322035,
                                       weight=3.808535316180685e-09, cap=355.2101636592373))]
    net = _run(flows, caps, MODES[mode])
    assert net.solves >= 3
    assert net.worst <= 1e-9


_route = st.tuples(st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True),
                   st.lists(st.floats(-4.0, 4.0), min_size=3, max_size=3))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1 << 30), routes=st.lists(_route, min_size=1, max_size=6),
       caps=st.lists(st.floats(-2.0, 2.0), min_size=5, max_size=5), n=st.integers(2, 16),
       span=st.sampled_from([4.0, 6.0, 9.0]))
def test_extreme_weights_are_max_min_after_every_solve_in_every_mode(seed, routes, caps, n, span):
    """Random flows on a few shared routes (classes form) with weights 10^-span..10^span, coefficients
    1e-4..1e4 and capacities and caps 1e-2..1e2 (log-uniform), staggered: after every solve, in every mode,
    every rate is within 1e-9 of the exact allocation."""
    rng = random.Random(seed)
    capacity = [10.0 ** x for x in caps]
    spec = []
    weights = [10.0 ** rng.uniform(-span, span) for _ in range(4)]
    for i in range(n):
        res, coef = rng.choice(routes)
        spec.append((rng.choice([0.0, rng.uniform(0.0, 3.0)]), i, res, [10.0 ** c for c in coef[:len(res)]],
                     10.0 ** rng.uniform(-1.0, 1.0), rng.choice(weights),
                     rng.choice([None, None, 10.0 ** rng.uniform(-2.0, 2.0)])))
    for mode in MODES.values():
        flows = [(t0, Flow(i, res, coef, nbytes, weight=w, cap=cap)) for t0, i, res, coef, nbytes, w, cap in spec]
        net = _run(flows, capacity, mode)
        assert net.worst <= 1e-9, f"mode {mode}: off by {net.worst:.2e} relative"
