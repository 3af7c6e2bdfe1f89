"""Compiled inner loops of the fluid model: flow bookkeeping, component search and max-min solves on arrays.

Why this module exists: an exact max-min re-solve at every arrival and departure touches every incidence
(flow x resource) of the affected component. In pure Python that cost ~3 us per active flow per event, far
from the 20,000 events/s the engine aims at with 64 flows in flight. Here the whole network lives in
persistent numpy arrays (one row per flow slot, one per resource, intrusive linked lists of the flows on
each resource) and the per-event work runs in numba-compiled functions, so an event costs one call from
Python. `simcore.fluid` owns the arrays and the simpy side; nothing else calls these functions.

Every function is plain Python over numpy arrays, so `NUMBA_DISABLE_JIT=1` runs the identical algorithm
interpreted (slow, but debuggable). Compiled code is cached beside this file (`cache=True`), so only the
first process on a machine pays the compile time.

Layout. Flow slot `s` has route `fres[s, :fn[s]]` with coefficients `fcoef[s, :fn[s]]`; incidence
`s * K + k` (K = fres.shape[1]) links slot `s` into the list of resource `fres[s, k]`. `ff[s]` holds the
float state, `fi[s]` the integer state (column numbers in `_fluidlayout`). The finish-time heap is an array heap of
(time; seq, version, slot) with lazy invalidation: an entry counts only while its version equals the flow's.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import Tuple, UniTuple, boolean, float64, int8, int64, void

from ._fluidlayout import (
    ACTIVE,
    BIND_TOL,
    BINDING,
    BYTE_TOL,
    BYTES,
    CAP,
    FRESH,
    HEAD,
    HSEQ,
    HSIZE,
    LOAD,
    RATE,
    RCAP,
    REM,
    ROUTE,
    SUMUB,
    TIME_TOL,
    TLAST,
    UB,
    VER,
    W,
)

# Explicit signatures: one compilation per function (no per-literal or int/float `now` variants), made when
# this module is imported, and cached on disk.
I, F, B = int64, float64, boolean
I1, I2, F1, F2, M1 = int64[::1], int64[:, ::1], float64[::1], float64[:, ::1], int8[::1]




# ---- array heap: key hk[i] (float), then hi[i, 0] (int) breaks ties; hi[i, 1:] ride along ------------------
# Sifts move a gap rather than swapping: the moving entry is held aside and written once at its final place,
# so each level costs one copy instead of a three-way swap of every column.
@njit(I(F1, I2, I, F, I, I, I), cache=True)
def heap_push(hk, hi, n, key, i0, i1, i2):
    """Push onto a heap of size n (capacity must allow it); returns the new size."""
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if key < hk[p] or (key == hk[p] and i0 < hi[p, 0]):
            hk[i] = hk[p]
            for c in range(hi.shape[1]):
                hi[i, c] = hi[p, c]
            i = p
        else:
            break
    hk[i] = key
    hi[i, 0] = i0
    hi[i, 1] = i1
    if hi.shape[1] > 2:
        hi[i, 2] = i2
    return n + 1


@njit(I(F1, I2, I), cache=True)
def heap_pop(hk, hi, n):
    """Remove the top of a heap of size n (its values must be read before); returns the new size."""
    n -= 1
    if n == 0:
        return 0
    key = hk[n]
    i0 = hi[n, 0]
    w = hi.shape[1]
    i1 = hi[n, 1]
    i2 = hi[n, 2] if w > 2 else 0
    i = 0
    while True:
        a = 2 * i + 1
        if a >= n:
            break
        b = a + 1
        if b < n and (hk[b] < hk[a] or (hk[b] == hk[a] and hi[b, 0] < hi[a, 0])):
            a = b
        if hk[a] < key or (hk[a] == key and hi[a, 0] < i0):
            hk[i] = hk[a]
            for c in range(w):
                hi[i, c] = hi[a, c]
            i = a
        else:
            break
    hk[i] = key
    hi[i, 0] = i0
    hi[i, 1] = i1
    if w > 2:
        hi[i, 2] = i2
    return n


# ---- the solver's own heap: one entry per item, key lv[i], ties broken by item number it[i] ------------------
@njit(void(F1, I1, I, I), cache=True)
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


@njit(I(F1, I1, I), cache=True)
def _pop_top(lv, it, n):
    """Drop the top of the heap lv/it[:n]; returns the new size."""
    n -= 1
    if n > 0:
        lv[0] = lv[n]
        it[0] = it[n]
        _sift_down(lv, it, n, 0)
    return n


# ---- max-min fair rates by progressive filling ---------------------------------------------------------------
@njit(void(I1, I, I2, F2, I1, F2, F2, I2, I1, F1, F1), cache=True)
def max_min(comp, nc, fres, fcoef, fn, ff, rf, ri, rloc, mult, rates):
    """Weighted max-min fair rates of the flows comp[:nc] into rates[:nc]; flow comp[i] stands for mult[i]
    identical flows (same route, weight and cap: max-min gives them the same rate, so a class of them is
    solved as one flow that draws mult x its rate).

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
    # local indices for the binding resources of the component
    nr = 0
    tot = 0
    ncap = 0
    for ii in range(nc):
        s = comp[ii]
        if ff[s, CAP] < inf:
            ncap += 1
        for k in range(fn[s]):
            r = fres[s, k]
            if ri[r, BINDING] != 0:
                tot += 1
                if rloc[r] < 0:
                    rloc[r] = nr
                    nr += 1
    res_of = np.empty(nr, np.int64)
    rem = np.empty(nr)
    demand = np.zeros(nr)
    start = np.zeros(nr + 1, np.int64)
    for ii in range(nc):
        s = comp[ii]
        w = ff[s, W] * mult[ii]
        for k in range(fn[s]):
            j = rloc[fres[s, k]]
            if j >= 0:
                res_of[j] = fres[s, k]
                demand[j] += fcoef[s, k] * w
                start[j + 1] += 1
    for j in range(nr):
        rem[j] = rf[res_of[j], RCAP]
        start[j + 1] += start[j]
    # users of each local resource, CSR
    fill = start[:nr].copy()
    users = np.empty(tot, np.int64)
    for ii in range(nc):
        s = comp[ii]
        for k in range(fn[s]):
            j = rloc[fres[s, k]]
            if j >= 0:
                users[fill[j]] = ii
                fill[j] += 1
    unfrozen_users = np.empty(nr, np.int64)
    for j in range(nr):
        unfrozen_users[j] = start[j + 1] - start[j]
    # heap items: j < nr is a resource, j >= nr the cap of flow comp[j - nr]
    lv = np.empty(nr + ncap)
    it = np.empty(nr + ncap, np.int64)
    hn = 0
    for j in range(nr):
        lv[hn] = rem[j] / demand[j] if demand[j] > 0 else inf
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
    stale = np.zeros(nr, np.bool_)
    frozen = np.zeros(nc, np.bool_)
    freeze = np.empty(nc, np.int64)
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
                stale[j] = False
                lv[0] = rem[j] / demand[j] if demand[j] > 0 else inf
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
                    frozen[ii] = True
                    freeze[nf] = ii
                    nf += 1
                continue
            if unfrozen_users[j] == 0:
                hn = _pop_top(lv, it, hn)
                continue
            if stale[j]:  # its true level may lie above the threshold: re-score, and look again
                stale[j] = False
                lv[0] = rem[j] / demand[j] if demand[j] > 0 else inf
                _sift_down(lv, it, hn, 0)
                continue
            hn = _pop_top(lv, it, hn)
            for u in range(start[j], start[j + 1]):
                ii = users[u]
                if not frozen[ii]:
                    frozen[ii] = True
                    freeze[nf] = ii
                    nf += 1
        for q in range(nf):
            ii = freeze[q]
            s = comp[ii]
            w = ff[s, W]
            rate = w * level
            if rate > ff[s, CAP]:
                rate = ff[s, CAP]
            rates[ii] = rate
            m = mult[ii]
            for k in range(fn[s]):
                j = rloc[fres[s, k]]
                if j < 0:
                    continue
                c = fcoef[s, k] * m
                x = rem[j] - c * rate
                rem[j] = x if x > 0.0 else 0.0
                demand[j] -= c * w
                unfrozen_users[j] -= 1
                stale[j] = True
        left -= nf
    for j in range(nr):
        rloc[res_of[j]] = -1


# ---- network state updates ---------------------------------------------------------------------------------
@njit(I(F2, I), cache=True)
def _binding_of(rf, r):
    return 1 if rf[r, SUMUB] >= rf[r, RCAP] * (1 - BIND_TOL) else 0


@njit(void(I, I2, I1, I2, I1, I1), cache=True)
def _link(s, fres, fn, ri, inc_next, inc_prev):
    """Put slot s at the head of the flow list of each resource on its route."""
    K = fres.shape[1]
    for k in range(fn[s]):
        r = fres[s, k]
        e = s * K + k
        h = ri[r, HEAD]
        inc_next[e] = h
        inc_prev[e] = -1
        if h >= 0:
            inc_prev[h] = e
        ri[r, HEAD] = e


@njit(I(I1, F1, I), cache=True)
def bad_route_entry(res, coef, nres):
    """Index of the first route entry that names no resource in 0..nres-1 or has a coefficient that is not a
    positive finite number; -1 when the route is sound. Checked before `register`, because compiled code
    does no bounds checks: a bad index would corrupt memory rather than raise."""
    for k in range(len(res)):
        if res[k] < 0 or res[k] >= nres or not (0.0 < coef[k] < np.inf):
            return k
    return -1


@njit(void(I, I1, F1, I, F, F, F, F, I2, F2, I1, F2, I2, F2, I2, I1, I1), cache=True)
def register(s, res, coef, route, weight, cap, nbytes, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev):
    """Make slot s an active flow at rate 0 over route `res` (coefficients `coef`); cap is inf when none.
    `route` numbers the route (-1 if unknown): the same number must always mean the same res and coef."""
    fi[s, ROUTE] = route
    n = len(res)
    fn[s] = n
    for k in range(n):
        fres[s, k] = res[k]
        fcoef[s, k] = coef[k]
    ff[s, W] = weight
    ff[s, CAP] = cap
    ff[s, BYTES] = nbytes
    ff[s, TLAST] = now
    ub = cap
    for k in range(fn[s]):
        x = rf[fres[s, k], RCAP] / fcoef[s, k]
        if x < ub:
            ub = x
    ff[s, UB] = ub
    ff[s, REM] = ff[s, BYTES]
    ff[s, RATE] = 0.0
    fi[s, ACTIVE] = 1
    fi[s, VER] += 1
    fi[s, FRESH] = 1
    for k in range(fn[s]):
        r = fres[s, k]
        rf[r, SUMUB] += fcoef[s, k] * ub
        ri[r, BINDING] = _binding_of(rf, r)
    _link(s, fres, fn, ri, inc_next, inc_prev)


@njit(void(I, I2, F2, I1, F2, I2, F2, I2, I1, I1), cache=True)
def _retire(s, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev):
    """Take finished slot s off its resources (its rate must already be 0)."""
    K = fres.shape[1]
    fi[s, ACTIVE] = 0
    ff[s, REM] = 0.0
    ub = ff[s, UB]
    for k in range(fn[s]):
        r = fres[s, k]
        e = s * K + k
        p = inc_prev[e]
        n = inc_next[e]
        if p >= 0:
            inc_next[p] = n
        else:
            ri[r, HEAD] = n
        if n >= 0:
            inc_prev[n] = p
        rf[r, SUMUB] = rf[r, SUMUB] - fcoef[s, k] * ub if ri[r, HEAD] >= 0 else 0.0
        ri[r, BINDING] = _binding_of(rf, r)


@njit(I(I, I2, I1, I2, M1, I1, I), cache=True)
def _visit_resources(s, fres, fn, ri, rmark, rstack, nvis):
    """Queue the binding resources of flow s not seen yet; returns the new queue length."""
    for k in range(fn[s]):
        r = fres[s, k]
        if ri[r, BINDING] != 0 and rmark[r] == 0:
            rmark[r] = 1
            rstack[nvis] = r
            nvis += 1
    return nvis


@njit(I(I1, I, I1, I, I2, I1, I2, I2, I1, M1, M1, I1), cache=True)
def _grow_component(seeds, nseeds, comp, nc, fres, fn, fi, ri, inc_next, fmark, rmark, rstack):
    """`_component`, with comp[:nc] already found (and marked in fmark): those flows are not expanded again."""
    K = fres.shape[1]
    nvis = 0
    for q in range(nseeds):
        s = seeds[q]
        if fi[s, ACTIVE] != 0 and fmark[s] == 0:
            fmark[s] = 1
            comp[nc] = s
            nc += 1
            nvis = _visit_resources(s, fres, fn, ri, rmark, rstack, nvis)
    top = 0
    while top < nvis:  # rstack doubles as the visit list, so every marked resource is cleared at the end
        r = rstack[top]
        top += 1
        e = ri[r, HEAD]
        while e >= 0:
            g = e // K
            e = inc_next[e]
            if fmark[g] == 0 and fi[g, ACTIVE] != 0:
                fmark[g] = 1
                comp[nc] = g
                nc += 1
                nvis = _visit_resources(g, fres, fn, ri, rmark, rstack, nvis)
    for q in range(nvis):
        rmark[rstack[q]] = 0
    return nc


@njit(I(I1, I, I1, I2, I1, I2, I2, I1, M1, M1, I1), cache=True)
def _component(seeds, nseeds, comp, fres, fn, fi, ri, inc_next, fmark, rmark, rstack):
    """Active flows connected to seeds[:nseeds] through binding resources, into comp; returns the count.

    Leaves fmark set for the flows found (the caller clears it); rmark is cleared here.
    """
    return _grow_component(seeds, nseeds, comp, 0, fres, fn, fi, ri, inc_next, fmark, rmark, rstack)


@njit(I(I, F, F, I2, F2, I1, F2, I2, F2, I1, I, M1), cache=True)
def _set_rate(s, rate, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark):
    delta = rate - ff[s, RATE]
    for k in range(fn[s]):
        r = fres[s, k]
        rf[r, LOAD] += fcoef[s, k] * delta
        if rcmark[r] == 0:
            rcmark[r] = 1
            rchanged[nrch] = r
            nrch += 1
    ff[s, REM] -= ff[s, RATE] * (now - ff[s, TLAST])
    ff[s, TLAST] = now
    ff[s, RATE] = rate
    fi[s, VER] += 1
    fi[s, FRESH] = 0
    return nrch


@njit(F1(I1, I, I2, F2, I1, F2, I2, F2, I2, I1), cache=True)
def _class_rates(comp, nc, fres, fcoef, fn, ff, fi, rf, ri, rloc):
    """Max-min rates of comp[:nc], solved over route classes: flows with the same route number, weight and cap
    always get the same rate, so each class is solved once with its member count (on the 8-GPU star, 512
    flows in flight use about 40 routes). Flows without a route number (-1) are classes of their own.

    Classes are found with an open-addressing hash table on the route number (linear probing; a slot holds
    a class, and a probe matches on route, weight and cap), in one pass over comp: O(nc) rather than a sort,
    and the classes come out numbered in the order their first members have in comp, so the answer does not
    depend on how routes are numbered (the simpy path and the compiled loop number them in different orders).
    """
    size = 16
    while size < 2 * nc:
        size <<= 1
    mask = size - 1
    table = np.full(size, -1, np.int64)  # slot -> class
    rep = np.empty(nc, np.int64)  # per class: its first member (a flow slot)
    mult = np.empty(nc)
    group = np.empty(nc, np.int64)
    ng = 0
    for q in range(nc):
        s = comp[q]
        route = fi[s, ROUTE]
        if route >= 0:
            h = (route * 2654435761) & mask  # Knuth's multiplicative hash (odd, so a bijection mod size)
            while True:
                g = table[h]
                if g < 0:
                    table[h] = ng
                    break
                r = rep[g]
                if fi[r, ROUTE] == route and ff[r, W] == ff[s, W] and ff[r, CAP] == ff[s, CAP]:
                    break
                h = (h + 1) & mask
            if g >= 0:
                mult[g] += 1.0
                group[q] = g
                continue
        rep[ng] = s
        mult[ng] = 1.0
        group[q] = ng
        ng += 1
    grates = np.empty(ng)
    max_min(rep, ng, fres, fcoef, fn, ff, rf, ri, rloc, mult, grates)
    rates = np.empty(nc)
    for q in range(nc):
        rates[q] = grates[group[q]]
    return rates


@njit(UniTuple(I, 2)(I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, F1, I2, I1, I1, I, I1, I, M1), cache=True)
def _solve(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, rloc, hk, hi, ctr, fchanged, nfch, rchanged, nrch,
           rcmark):
    """Max-min over comp[:nc] and apply the rates: flows whose rate changed get a new finish-time heap entry
    and are listed in fchanged."""
    if nc == 0:
        return nfch, nrch
    rates = _class_rates(comp, nc, fres, fcoef, fn, ff, fi, rf, ri, rloc)
    for q in range(nc):
        s = comp[q]
        rate = rates[q]
        if rate == ff[s, RATE] and fi[s, FRESH] == 0:
            continue
        nrch = _set_rate(s, rate, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark)
        fchanged[nfch] = s
        nfch += 1
        if rate > 0:
            ctr[HSEQ] += 1
            ctr[HSIZE] = heap_push(hk, hi, ctr[HSIZE], now + ff[s, REM] / rate, ctr[HSEQ], fi[s, VER], s)
    return nfch, nrch


@njit(void(F2, I2, I1, I, M1), cache=True)
def _finish_resources(rf, ri, rchanged, nrch, rcmark):
    for q in range(nrch):
        r = rchanged[q]
        rcmark[r] = 0
        if ri[r, HEAD] < 0:
            rf[r, LOAD] = 0.0  # no drift once a resource is idle


@njit(F(F1, I2, I2, I1), cache=True)
def next_finish(hk, hi, fi, ctr):
    """The earliest valid finish time (stale heap entries are dropped); inf when nothing is running."""
    n = ctr[HSIZE]
    while n > 0 and hi[0, 1] != fi[hi[0, 2], VER]:
        n = heap_pop(hk, hi, n)
    ctr[HSIZE] = n
    return hk[0] if n > 0 else np.inf


@njit(Tuple((I, I, F))(I1, I, I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, I1,
                       M1), cache=True)
def arrive(closed, nclosed, seeds, nseeds, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, rloc, fmark, rmark,
           rstack, comp, hk, hi, ctr, fchanged, rchanged, rcmark):
    """Re-solve what changed at this instant: the survivors of its departures, closed[:nclosed] (a set already
    closed under sharing a binding resource, from `depart`), and the components of the flows registered at
    this instant, seeds[:nseeds]. Survivors are not searched again: a resource binding now either bound
    before the departures (so all its flows are survivors, departed, or new) or lies on a new flow's route.

    Returns (flows whose rate changed, in fchanged; resources whose load changed, in rchanged; the next
    finish time).
    """
    nc = 0
    for q in range(nclosed):
        s = closed[q]
        if fi[s, ACTIVE] != 0 and fmark[s] == 0:
            fmark[s] = 1
            comp[nc] = s
            nc += 1
    nc = _grow_component(seeds, nseeds, comp, nc, fres, fn, fi, ri, inc_next, fmark, rmark, rstack)
    for q in range(nc):
        fmark[comp[q]] = 0
    nfch, nrch = _solve(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, rloc, hk, hi, ctr, fchanged, 0,
                        rchanged, 0, rcmark)
    _finish_resources(rf, ri, rchanged, nrch, rcmark)
    return nfch, nrch, next_finish(hk, hi, fi, ctr)


@njit(Tuple((I, I, I, I))(F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, I1, I1, M1),
      cache=True)
def depart(now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, fmark, rmark, rstack, comp, hk, hi,
           ctr, finished, fchanged, rchanged, rcmark):
    """Finish every flow due at `now`, and list the flows they shared binding resources with, unsolved.

    Flows whose heap entry lies within a relative TIME_TOL of now finish; so do neighbours with fewer than
    BYTE_TOL of their bytes left (floating-point dust), so ties never cause zero-time event loops. The
    survivors keep their old rates (no time passes) until the caller re-solves them together with whatever
    else changes at this instant (`arrive` with them as seeds): one solve per instant, however many
    departures and arrivals it holds. Re-solving from the survivors as seeds is exact even if the departures
    split their component (each part is then searched from its own seeds).
    Returns (finished flows, in finished; changed flows; changed resources; survivors, in comp), or
    survivors = -1 when nothing was due (a stale wake-up).
    """
    horizon = now * (1 + TIME_TOL) + 1e-18
    nfin = 0
    n = ctr[HSIZE]
    while n > 0 and hk[0] <= horizon:
        ver = hi[0, 1]
        s = hi[0, 2]
        n = heap_pop(hk, hi, n)
        if ver == fi[s, VER] and fi[s, ACTIVE] != 0 and fmark[s] == 0:
            fmark[s] = 2
            finished[nfin] = s
            nfin += 1
    ctr[HSIZE] = n
    if nfin == 0:
        return 0, 0, 0, -1
    for q in range(nfin):
        fmark[finished[q]] = 0
    nc = _component(finished, nfin, comp, fres, fn, fi, ri, inc_next, fmark, rmark, rstack)
    for q in range(nfin):
        fmark[finished[q]] = 2
    for q in range(nc):
        g = comp[q]
        if fmark[g] != 2 and ff[g, REM] - ff[g, RATE] * (now - ff[g, TLAST]) <= BYTE_TOL * ff[g, BYTES]:
            fmark[g] = 2
            finished[nfin] = g
            nfin += 1
    nrch = 0
    nfch = 0
    for q in range(nfin):
        s = finished[q]
        nrch = _set_rate(s, 0.0, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark)
        fchanged[nfch] = s
        nfch += 1
        _retire(s, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev)
    m = 0
    for q in range(nc):
        g = comp[q]
        mark = fmark[g]
        fmark[g] = 0
        if mark != 2:
            comp[m] = g
            m += 1
    for q in range(nfin):
        fmark[finished[q]] = 0
    _finish_resources(rf, ri, rchanged, nrch, rcmark)
    return nfin, nfch, nrch, m


@njit(void(F1, I2, I2, I1), cache=True)
def compact_heap(hk, hi, fi, ctr):
    """Drop stale finish-heap entries (rebuilding it), so the heap stays near the number of active flows."""
    n = ctr[HSIZE]
    keep_k = np.empty(n)
    keep_i = np.empty((n, 3), np.int64)
    m = 0
    for q in range(n):
        if hi[q, 1] == fi[hi[q, 2], VER] and fi[hi[q, 2], ACTIVE] != 0:
            keep_k[m] = hk[q]
            keep_i[m] = hi[q]
            m += 1
    n = 0
    for q in range(m):
        n = heap_push(hk, hi, n, keep_k[q], keep_i[q, 0], keep_i[q, 1], keep_i[q, 2])
    ctr[HSIZE] = n


@njit(void(I2, I1, I2, I2, I1, I1), cache=True)
def relink(fres, fn, fi, ri, inc_next, inc_prev):
    """Rebuild every resource's list of flows (after the route width K changed, which renumbers incidences)."""
    for r in range(ri.shape[0]):
        ri[r, HEAD] = -1
    for s in range(fi.shape[0]):
        if fi[s, ACTIVE] != 0:
            _link(s, fres, fn, ri, inc_next, inc_prev)
