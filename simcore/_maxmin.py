"""Weighted max-min fair rates by progressive filling, compiled: the solve every re-rating of the fluid network
ends in (`simcore._fluidcore` calls it on a component, a region or the classes above a floor; `fluid.max_min_rates`
on a one-off set of flows).

Kept apart from the network's bookkeeping because it is a pure function of the arrays it is given (it reads
routes, weights, caps and capacities and writes rates and bottlenecks, nothing else), and the part of the core
the tests and notebooks call directly. The type aliases below are the whole core's: every compiled function that
is called (rather than inlined) has an explicit signature.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import float64, int8, int64, void

from ._fluidlayout import BINDING, CAP, W

# Explicit signatures on the entry points (called from Python, or called, not inlined, from compiled code): one
# compilation per function (no per-literal or int/float `now` variants), made when this module is imported, and
# cached on disk. Helpers called once per item are inlined at Numba IR level (inline="always"): a call hands over
# its arrays, each reference-counted on the way in and out (before `NO_REFCOUNT` below), which cost more than the
# helper's own work (a 128-GPU rdma-p2p sync: 11.7 -> 9.4 s). The inline helpers have no signature: with one, each
# was compiled once more on its own, for no caller; inlined, each takes its caller's types. (Without those standalone
# compiles, and with `compact_heap` no longer assigning array rows, a machine's first import of the solver took
# about 21 s instead of 33-34 s on the 2-core Xeon VM: `benchmarks/compile_time.py`, README.)
I, F = int64, float64
I1, I2, F1, F2, M1 = int64[::1], int64[:, ::1], float64[::1], float64[:, ::1], int8[::1]

# The event loop, the solver's entry points (called from Python or from the loop) and the solves they call are
# compiled without numba's reference counting (`_nrt`, numba's own option): each array argument otherwise costs
# an atomic increment and decrement per call and use (over half of the event loop's samples at 8 transfers in
# flight on a 2-core VM), and an array from Python a runtime object made per argument per call. Such a function
# may not allocate, nor take an array a callee allocated (nothing would free it): the solves carve their tables
# from scratch arrays the caller owns (`_fluidlayout.scratch_sizes`); tests/test_loop_no_refcounts.py checks
# that no compiled function returns an array, that the runtime's allocation counters balance across a run, and
# that no solve writes past its scratch. (`compact_heap`, called from Python now and then, still allocates.)
NO_REFCOUNT = {"_nrt": False}


# ---- the solver's own heap: one entry per item, key lv[i], ties broken by item number it[i] ------------------
@njit(cache=True, inline="always")
def _sift_down(lv, it, n, i):
    """Move the entry at position i down to its place in the heap lv/it[:n] (a gap moves; one write)."""
    key = lv[i]
    j = it[i]
    while True:
        a = 2 * i + 1
        if a >= n:
            break
        b = a + 1
        if b < n and (lv[b] < lv[a] or (lv[b] == lv[a] and it[b] < it[a])):
            a = b
        if lv[a] < key or (lv[a] == key and it[a] < j):
            lv[i] = lv[a]
            it[i] = it[a]
            i = a
        else:
            break
    lv[i] = key
    it[i] = j


@njit(cache=True, inline="always")
def _pop_top(lv, it, n):
    """Drop the top of the heap lv/it[:n]; returns the new size."""
    n -= 1
    if n > 0:
        lv[0] = lv[n]
        it[0] = it[n]
        _sift_down(lv, it, n, 0)
    return n


# ---- compensated sums: a resource's demand is a sum of coefficient x weight terms that may span many orders of
# magnitude, and progressive filling subtracts the large terms again as their flows freeze. In plain float64 the
# small terms that remain carry the rounding error of the large ones ((1e11 + 0.1) - 1e11 is 0.100006...), so the
# demand is kept as an unevaluated sum hi + lo, updated by TwoSum (exact: hi + lo gains x up to rounding of lo).
# A term subtracted is the same float product that was added, so its own rounding cancels exactly.
@njit(cache=True, inline="always")
def two_sum(hi, lo, x):
    """(hi, lo) with hi + lo increased by x, compensated (Knuth's TwoSum: exact up to the rounding of lo; needs
    strict IEEE evaluation, numba's default)."""
    s = hi + x
    bb = s - hi
    return s, lo + ((hi - (s - bb)) + (x - bb))


@njit(cache=True, inline="always")
def _add_comp(hi, lo, j, x):
    """hi[j] + lo[j] += x, compensated (`two_sum`)."""
    hi[j], lo[j] = two_sum(hi[j], lo[j], x)


@njit(cache=True, inline="always")
def _sat_level(rem, hi, lo, j):
    """The level at which local resource j saturates: residual / (compensated) demand, inf without demand."""
    d = hi[j] + lo[j]
    return rem[j] / d if d > 0 else np.inf


# ---- max-min fair rates by progressive filling ---------------------------------------------------------------
@njit(cache=True, inline="always")
def _lone(s, fres, fcoef, fn, ff, rf, ri, rates, capcol, bots):
    """`max_min` of class s alone: its level is the least of its binding resources' capacity / demand (coefficient
    x weight, summed over the entries that name the resource) and its cap / weight (ties go to the first on its
    route, then to the cap)."""
    w = ff[s, W]
    level = np.inf
    b = -2
    n = fn[s]
    for k in range(n):
        r = fres[s, k]
        if ri[r, BINDING] == 0:
            continue
        demand = 0.0
        for j in range(n):
            if fres[s, j] == r:
                if j < k:
                    break  # an entry before this one named r: counted there
                demand += fcoef[s, j] * w
        else:
            x = rf[r, capcol] / demand
            if x < level:
                level = x
                b = r
    if ff[s, CAP] / w < level:
        level = ff[s, CAP] / w
        b = -1
    if level == np.inf:
        raise ValueError("unbounded flow: no resource and no rate cap")
    rate = w * level
    if rate > ff[s, CAP]:
        rate = ff[s, CAP]
        b = -1
    rates[0] = rate
    bots[0] = b


@njit(void(I1, I, I2, F2, I1, F2, F2, I2, I1, F1, I, I1, I1, F1), cache=True, **NO_REFCOUNT)
def max_min(comp, nc, fres, fcoef, fn, ff, rf, ri, rloc, rates, capcol, bots, xi, xf):
    """Weighted max-min fair rates of the flows comp[:nc] into rates[:nc] (a route class is one flow here, of
    its members' total weight and cap: max-min gives identical flows the same rate). Resource r offers
    rf[r, capcol]: its capacity (RCAP), or what the flows outside a region leave it (RESID). bots[i] gets the
    resource that froze flow comp[i] (its bottleneck), or -1 when its cap did. `xi`, `xf`: scratch the tables
    below are carved from, at least 8 m + 4 nc + 2 and 5 m + nc long (m: the classes' route entries; the
    caller's `_fluidlayout.scratch_sizes` bounds them).

    The filling level rises for all unfrozen flows (rate = weight x level); a resource saturates at level
    residual / (sum of coeff x weight of its unfrozen flows), a capped flow at cap / weight. The smallest such
    level freezes everything that hits it. Only binding resources (ri[r, BINDING] != 0) take part: the others
    are provably slack. `rloc` is scratch of size R filled with -1, and is left that way.

    Saturation levels sit in one heap with one entry per resource and per capped flow, re-scored lazily: a
    freeze only marks the resources of the frozen flows stale. This is exact because freezing flows at the
    current level never lowers a resource's saturation level (residual and demand drop by c x w x level and
    c x w, and level <= residual / demand), so a stale key is a lower bound: the top is re-scored when it is
    stale and sifted down, and a clean top is the true minimum. A resource is re-scored only when it reaches
    the top, not after every freeze that touches it (on a 500-flow component of `cluster-8x8-rail` that
    cut the solve ~4x); the levels computed are the same numbers the eager version computes.
    """
    inf = np.inf
    if nc == 1:  # a lone class (most incremental rounds' regions): no tables to build, the same arithmetic
        _lone(comp[0], fres, fcoef, fn, ff, rf, ri, rates, capcol, bots)
        return
    # local indices for the binding resources of the component, and each flow's binding entries as flat arrays
    # (local resource, coefficient; flow ii's are eoff[ii]:eoff[ii + 1]): the passes below read them in order
    # instead of looking each resource up again
    m = 0
    for ii in range(nc):
        m += fn[comp[ii]]
    # scratch: two buffers carved into the tables below, one after the other, from the caller's (`xi`, `xf`: at
    # least `_fluidlayout.scratch_sizes` of its classes and route width; allocating them here cost more than a
    # small region's whole solve, and the runtime's reference counting of them more again); sizes are bounds,
    # as nr and tot are at most m
    ib = xi[:8 * m + 4 * nc + 2]
    fb = xf[:5 * m + nc]
    ent_j, o = ib[:m], m
    eoff, o = ib[o:o + nc + 1], o + nc + 1
    res_of, o = ib[o:o + m], o + m
    start, o = ib[o:o + m + 1], o + m + 1
    fill, o = ib[o:o + m], o + m
    users, o = ib[o:o + m], o + m
    unfrozen_users, o = ib[o:o + m], o + m
    it, o = ib[o:o + m + nc], o + m + nc  # heap items: at most a resource each and a capped flow each
    stale, o = ib[o:o + m], o + m  # 0 / 1
    frozen, o = ib[o:o + nc], o + nc  # 0 / 1
    freeze = ib[o:o + nc]
    ent_c = fb[:m]
    rem = fb[m:2 * m]
    demand = fb[2 * m:3 * m]
    dlo = fb[3 * m:4 * m]  # demand[j] + dlo[j]: the compensated demand (see `_add_comp`)
    lv = fb[4 * m:]
    nr = 0
    tot = 0
    for ii in range(nc):
        s = comp[ii]
        eoff[ii] = tot
        for k in range(fn[s]):
            r = fres[s, k]
            if ri[r, BINDING] != 0:
                j = rloc[r]
                if j < 0:
                    j = nr
                    rloc[r] = nr
                    res_of[nr] = r
                    nr += 1
                ent_j[tot] = j
                ent_c[tot] = fcoef[s, k]
                tot += 1
    eoff[nc] = tot
    for j in range(nr):
        demand[j] = 0.0
        dlo[j] = 0.0
        stale[j] = 0
    for j in range(nr + 1):
        start[j] = 0
    for ii in range(nc):
        frozen[ii] = 0
    for ii in range(nc):
        w = ff[comp[ii], W]
        for t in range(eoff[ii], eoff[ii + 1]):
            j = ent_j[t]
            _add_comp(demand, dlo, j, ent_c[t] * w)
            start[j + 1] += 1
    for j in range(nr):
        rem[j] = rf[res_of[j], capcol]
        start[j + 1] += start[j]
    # users of each local resource, CSR
    for j in range(nr):
        fill[j] = start[j]
    for ii in range(nc):
        for t in range(eoff[ii], eoff[ii + 1]):
            j = ent_j[t]
            users[fill[j]] = ii
            fill[j] += 1
    for j in range(nr):
        unfrozen_users[j] = start[j + 1] - start[j]
    # heap items: j < nr is a resource, j >= nr the cap of flow comp[j - nr]
    hn = 0
    for j in range(nr):
        lv[hn] = _sat_level(rem, demand, dlo, j)
        it[hn] = j
        hn += 1
    for ii in range(nc):
        s = comp[ii]
        if ff[s, CAP] < inf:
            lv[hn] = ff[s, CAP] / ff[s, W]
            it[hn] = nr + ii
            hn += 1
    for i in range((hn >> 1) - 1, -1, -1):
        _sift_down(lv, it, hn, i)
    left = nc
    level = 0.0
    while left > 0:
        # settle the top: drop resources with no unfrozen flow and frozen capped flows, re-score stale levels
        while hn > 0:
            j = it[0]
            if j >= nr:
                if not frozen[j - nr]:
                    break
                hn = _pop_top(lv, it, hn)
            elif unfrozen_users[j] == 0:
                hn = _pop_top(lv, it, hn)
            elif stale[j]:
                stale[j] = 0
                lv[0] = _sat_level(rem, demand, dlo, j)
                _sift_down(lv, it, hn, 0)
            else:
                break
        if hn == 0 or lv[0] == inf:
            raise ValueError("unbounded flow: no resource and no rate cap")
        if lv[0] > level:  # rounding may put a level a hair below the previous one
            level = lv[0]
        thresh = level * (1 + 1e-12) + 1e-300
        nf = 0
        while hn > 0 and lv[0] <= thresh:
            j = it[0]
            if j >= nr:
                hn = _pop_top(lv, it, hn)
                ii = j - nr
                if not frozen[ii]:
                    frozen[ii] = 1
                    freeze[nf] = ii
                    bots[ii] = -1
                    nf += 1
                continue
            if unfrozen_users[j] == 0:
                hn = _pop_top(lv, it, hn)
                continue
            if stale[j]:  # its true level may lie above the threshold: re-score, and look again
                stale[j] = 0
                lv[0] = _sat_level(rem, demand, dlo, j)
                _sift_down(lv, it, hn, 0)
                continue
            hn = _pop_top(lv, it, hn)
            for u in range(start[j], start[j + 1]):
                ii = users[u]
                if not frozen[ii]:
                    frozen[ii] = 1
                    freeze[nf] = ii
                    bots[ii] = res_of[j]
                    nf += 1
        for q in range(nf):
            ii = freeze[q]
            s = comp[ii]
            w = ff[s, W]
            rate = w * level
            if rate > ff[s, CAP]:
                rate = ff[s, CAP]
                bots[ii] = -1
            rates[ii] = rate
            for t in range(eoff[ii], eoff[ii + 1]):
                j = ent_j[t]
                c = ent_c[t]
                x = rem[j] - c * rate
                rem[j] = x if x > 0.0 else 0.0
                _add_comp(demand, dlo, j, -(c * w))
                unfrozen_users[j] -= 1
                stale[j] = 1
        left -= nf
    for j in range(nr):
        rloc[res_of[j]] = -1
