"""Compiled inner loops of the fluid model: flow bookkeeping, component search, and which classes to re-solve
after a change (incremental regions, solves above the floor, whole components); the max-min solve itself is
`simcore._maxmin`.

Why this module exists: an exact max-min re-solve at every arrival and departure touches every incidence
(flow x resource) of the affected component. In pure Python that cost ~3 us per active flow per event, far
from the 20,000 events/s the engine aims at with 64 flows in flight. Here the whole network lives in
persistent numpy arrays (one row per flow slot, one per resource, intrusive linked lists of the flows on
each resource) and the per-event work runs in numba-compiled functions, so an event costs one call from
Python. `simcore.fluid` owns the arrays and the simpy side, `simcore._eventloop` drives them for declared work;
nothing else calls these functions.

Every function is plain Python over numpy arrays, so `NUMBA_DISABLE_JIT=1` runs the identical algorithm
interpreted (slow, but debuggable). Compiled code is cached beside this file (`cache=True`), so only the
first process on a machine pays the compile time.

Layout. A flow slot `s` holds a route class (flows with one route, weight and cap; the solver treats it as
one flow of their total weight and cap, and "flow" below means such a class): its route is `fres[s, :fn[s]]`
with coefficients `fcoef[s, :fn[s]]`; incidence `s * K + k` (K = fres.shape[1]) links slot `s` into the list
of resource `fres[s, k]`. `ff[s]` holds the float state, `fi[s]` the integer state (column numbers in
`_fluidlayout`). The flows themselves are members, by member slot: `mf`/`mi` hold each one's target on its
class's clock and its place in the class's skew heap (see `join`, `_pop_members`). The finish-time heap is an
array heap of (time; seq, version, class slot) with lazy invalidation: an entry counts only while its version
equals the class's, and it times the class's first finisher only.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import Tuple, UniTuple, void

from ._fluidlayout import (
    ACTIVE,
    BIND_TOL,
    BINDING,
    BOT,
    BYTE_TOL,
    CAP,
    CAP0,
    CHECK_TOL,
    DLEV,
    DLIST,
    DSEEN,
    FLOOR,
    FLOOR_TOL,
    FRESH,
    FULL,
    HEAD,
    HSEQ,
    HSIZE,
    LEFT,
    LOAD,
    LOAD_MARGIN,
    LOADP,
    MAX_ROUNDS,
    MAX_SKIP,
    MAXLEV,
    MBYTES,
    MCLASS,
    MODE,
    MROOT,
    N_ACTIVE,
    N_CHANGED,
    N_DRES,
    N_FALLBACKS,
    N_FLOOR,
    N_FLOOR_CLS,
    N_REGION,
    N_ROUNDS,
    N_SKIP,
    N_SOLVES,
    N_STREAK,
    N_WHOLE,
    N_WHOLE_CLS,
    NBOT,
    NCFREE,
    NFL,
    NMEM,
    NREG,
    OUT,
    RATE,
    RCAP,
    REBASE,
    REGION_PCT,
    RESID,
    RIGHT,
    ROUTE,
    SCANLV,
    SCANNED,
    SCANTOP,
    SHORT_LIST,
    SUMUB,
    TARGET,
    TBOT,
    TIME_TOL,
    TLAST,
    TRATE,
    UB,
    VER,
    VSERV,
    W0,
    W,
)
from ._maxmin import (  # the core's type aliases, the solve itself
    F1,
    F2,
    I1,
    I2,
    M1,
    NO_REFCOUNT,
    F,
    I,
    max_min,
    two_sum,
)

# Helpers called once per event, flow, member or resource are inlined at Numba IR level (inline="always"): a
# call hands over up to 21 arrays (reference-counted on the way in and out, before `_maxmin.NO_REFCOUNT`).


# ---- array heap: key hk[i] (float), then hi[i, 0] (int) breaks ties; hi[i, 1:] ride along ------------------
# Sifts move a gap rather than swapping: the moving entry is held aside and written once at its final place,
# so each level costs one copy instead of a three-way swap of every column.
@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


# ---- network state updates ---------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _binding_of(rf, r):
    return 1 if rf[r, SUMUB] >= rf[r, RCAP] * (1 - BIND_TOL) else 0


@njit(cache=True, inline="always")
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
        ri[r, NFL] += 1


@njit(I(I1, F1, I), cache=True, **NO_REFCOUNT)
def bad_route_entry(res, coef, nres):
    """Index of the first route entry that names no resource in 0..nres-1 or has a coefficient that is not a
    positive finite number; -1 when the route is sound. Checked before `join`, because compiled code
    does no bounds checks: a bad index would corrupt memory rather than raise."""
    for k in range(len(res)):
        if res[k] < 0 or res[k] >= nres or not (0.0 < coef[k] < np.inf):
            return k
    return -1


@njit(cache=True, inline="always")
def _class_ub(s, fres, fcoef, fn, ff, rf):
    """An upper bound on class s's total rate: its cap (n x a member's), or the least capacity / coefficient on
    its route (the class as a whole can draw no more than a lone flow could)."""
    ub = ff[s, CAP]
    for k in range(fn[s]):
        x = rf[fres[s, k], RCAP] / fcoef[s, k]
        if x < ub:
            ub = x
    return ub


@njit(cache=True, inline="always")
def _set_ub(s, ub, fres, fcoef, fn, ff, rf, ri):
    """Make ub class s's upper bound, keeping its resources' sums of upper bounds (and so BINDING) current."""
    d = ub - ff[s, UB]
    ff[s, UB] = ub
    for k in range(fn[s]):
        r = fres[s, k]
        rf[r, SUMUB] += fcoef[s, k] * d
        ri[r, BINDING] = _binding_of(rf, r)


@njit(cache=True, inline="always")
def _advance(s, now, ff, fi):
    """Bring class s's virtual clock (bytes served to each member) up to `now`, at its current rate and members.
    Called before anything changes either."""
    n = fi[s, NMEM]
    if n > 0 and ff[s, RATE] > 0.0:
        ff[s, VSERV] += ff[s, RATE] / n * (now - ff[s, TLAST])
    ff[s, TLAST] = now


@njit(cache=True, inline="always")
def _before(a, b, mf):
    """Member a finishes before member b (ties by slot, so the order is deterministic)."""
    return mf[a, TARGET] < mf[b, TARGET] or (mf[a, TARGET] == mf[b, TARGET] and a < b)


@njit(cache=True, inline="always")
def _meld(a, b, mf, mi):
    """Skew heap of members: the union of the heaps rooted at a and b (-1: empty); returns its root.

    Top-down and iterative: walk down the right spine, hanging the other heap where it belongs, and swap each
    visited node's children (amortised O(log n), no balance data to keep)."""
    if a < 0:
        return b
    if b < 0:
        return a
    if _before(b, a, mf):
        a, b = b, a
    root = a
    while True:
        r = mi[a, RIGHT]
        mi[a, RIGHT] = mi[a, LEFT]
        if r < 0:
            mi[a, LEFT] = b
            return root
        if _before(b, r, mf):
            r, b = b, r
        mi[a, LEFT] = r
        a = r


@njit(cache=True, inline="always")
def _found(s, res, coef, route, weight, cap, now, fres, fcoef, fn, ff, fi, ri, inc_next, inc_prev, ctr):
    """Make slot s an active class with no member yet (see `join`), at rate 0 over route `res` (coefficients
    `coef`); cap is inf when none. `route` numbers the route (-1 if unknown): the same number must always mean
    the same res and coef."""
    fi[s, ROUTE] = route
    n = len(res)
    fn[s] = n
    for k in range(n):
        fres[s, k] = res[k]
        fcoef[s, k] = coef[k]
    ff[s, W0] = weight
    ff[s, CAP0] = cap
    ff[s, W] = 0.0
    ff[s, CAP] = 0.0
    ff[s, UB] = 0.0
    ff[s, VSERV] = 0.0
    ff[s, TLAST] = now
    ff[s, RATE] = 0.0
    fi[s, NMEM] = 0
    fi[s, MROOT] = -1
    fi[s, ACTIVE] = 1
    fi[s, VER] += 1
    fi[s, FRESH] = 1
    fi[s, BOT] = -2  # a slot is retired (its count dropped) before reuse
    ctr[N_ACTIVE] += 1
    _link(s, fres, fn, ri, inc_next, inc_prev)


@njit(cache=True, inline="always")
def _scale(s, n, ff, fi):
    """Class s now has n members: its weight and cap are n x a member's (its upper bound follows separately:
    at once when it grows, in `depart` after the neighbour search when it shrinks)."""
    fi[s, NMEM] = n
    ff[s, W] = n * ff[s, W0]
    ff[s, CAP] = n * ff[s, CAP0]


@njit(I(I, I1, F1, I, F, F, F, F, I2, F2, I1, F2, I2, F2, I2, I1, I1, F2, I2, I1, I1, I1), cache=True, **NO_REFCOUNT)
def join(m, res, coef, route, weight, cap, nbytes, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, mf, mi,
         rclass, cfree, ctr):
    """Start flow m (a member slot) now; returns its class slot, which the caller must re-solve at this instant.

    A flow joins the open class of its route (rclass[route]) when weight and cap match, else founds a class
    in a free slot (which becomes the route's open class if it has none). Joining changes the class's weight
    but not yet its rate: nothing is misplaced because the instant's solve comes before any time passes. A
    class whose clock has run past REBASE x the newcomer's size is not joined: the newcomer's remaining bytes
    would be a difference of two large numbers, losing the digits a small flow needs."""
    s = -1
    open_c = rclass[route] if route >= 0 else -1
    if open_c >= 0 and (fi[open_c, ACTIVE] == 0 or fi[open_c, ROUTE] != route):
        open_c = -1
    if (open_c >= 0 and ff[open_c, W0] == weight and ff[open_c, CAP0] == cap
            and ff[open_c, VSERV] <= REBASE * nbytes):
        s = open_c
    if s < 0:
        ctr[NCFREE] -= 1
        s = cfree[ctr[NCFREE]]
        _found(s, res, coef, route, weight, cap, now, fres, fcoef, fn, ff, fi, ri, inc_next, inc_prev, ctr)
        if route >= 0 and (open_c < 0 or ff[open_c, VSERV] > REBASE * nbytes):
            rclass[route] = s
    else:
        _advance(s, now, ff, fi)
        fi[s, FRESH] = 1  # its members' finish times move even if its total rate does not
        fi[s, VER] += 1  # and its heap entry, if due now, may no longer name its first finisher
    _scale(s, fi[s, NMEM] + 1, ff, fi)
    _set_ub(s, _class_ub(s, fres, fcoef, fn, ff, rf), fres, fcoef, fn, ff, rf, ri)
    mf[m, TARGET] = ff[s, VSERV] + nbytes
    mf[m, MBYTES] = nbytes
    mi[m, MCLASS] = s
    mi[m, LEFT] = -1
    mi[m, RIGHT] = -1
    fi[s, MROOT] = _meld(fi[s, MROOT], m, mf, mi)
    return s


@njit(cache=True, inline="always")
def _set_bot(s, b, fi, ri):
    """Make b flow s's bottleneck, keeping the resources' counts of the flows they bottleneck."""
    old = fi[s, BOT]
    if old == b:
        return
    if old >= 0:
        ri[old, NBOT] -= 1
    if b >= 0:
        ri[b, NBOT] += 1
    fi[s, BOT] = b


@njit(cache=True, inline="always")
def _retire(s, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, rclass, cfree, ctr):
    """Take class s, with no members left, off its resources (its rate must already be 0) and free its slot."""
    K = fres.shape[1]
    fi[s, ACTIVE] = 0
    _set_bot(s, -2, fi, ri)
    route = fi[s, ROUTE]
    if route >= 0 and rclass[route] == s:
        rclass[route] = -1
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
        ri[r, NFL] -= 1
        rf[r, SUMUB] = rf[r, SUMUB] - fcoef[s, k] * ub if ri[r, HEAD] >= 0 else 0.0
        ri[r, BINDING] = _binding_of(rf, r)
    ctr[N_ACTIVE] -= 1
    cfree[ctr[NCFREE]] = s
    ctr[NCFREE] += 1


@njit(cache=True, inline="always")
def _visit_resources(s, fres, fn, ri, rmark, rstack, nvis):
    """Queue the binding resources of flow s not seen yet; returns the new queue length."""
    for k in range(fn[s]):
        r = fres[s, k]
        if ri[r, BINDING] != 0 and rmark[r] == 0:
            rmark[r] = 1
            rstack[nvis] = r
            nvis += 1
    return nvis


@njit(I(I1, I, I1, I, I2, I1, I2, I2, I1, M1, M1, I1), cache=True, **NO_REFCOUNT)
def _grow_component(seeds, nseeds, comp, nc, fres, fn, fi, ri, inc_next, fmark, rmark, rstack):
    """`_component`, with comp[:nc] already found (and marked in fmark): those flows are not expanded again,
    except a seed among them: a class that gained members may have made a resource binding that no class
    found so far reached."""
    K = fres.shape[1]
    nvis = 0
    for q in range(nseeds):
        s = seeds[q]
        if fi[s, ACTIVE] != 0:
            if fmark[s] == 0:
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


@njit(I(I1, I, I1, I2, I1, I2, I2, I1, M1, M1, I1), cache=True, **NO_REFCOUNT)
def _component(seeds, nseeds, comp, fres, fn, fi, ri, inc_next, fmark, rmark, rstack):
    """Active flows connected to seeds[:nseeds] through binding resources, into comp; returns the count.

    Leaves fmark set for the flows found (the caller clears it); rmark is cleared here.
    """
    return _grow_component(seeds, nseeds, comp, 0, fres, fn, fi, ri, inc_next, fmark, rmark, rstack)


@njit(cache=True, inline="always")
def _set_rate(s, rate, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark):
    delta = rate - ff[s, RATE]
    for k in range(fn[s]):
        r = fres[s, k]
        rf[r, LOAD] += fcoef[s, k] * delta
        if rcmark[r] == 0:
            rcmark[r] = 1
            rchanged[nrch] = r
            nrch += 1
    _advance(s, now, ff, fi)
    ff[s, RATE] = rate
    fi[s, VER] += 1
    fi[s, FRESH] = 0
    return nrch


@njit(cache=True, inline="always")
def _apply(comp, nc, rates, bots, now, fres, fcoef, fn, ff, fi, rf, ri, hk, hi, ctr, fchanged, nfch, rchanged,
           nrch, rcmark, mf):
    """Give classes comp[:nc] their new rates and bottlenecks: classes whose rate (or membership) changed get a
    new finish-time heap entry, for the member that finishes first, and are listed in fchanged."""
    for q in range(nc):
        s = comp[q]
        _set_bot(s, bots[q], fi, ri)
        rate = rates[q]
        if rate == ff[s, RATE] and fi[s, FRESH] == 0:
            continue
        nrch = _set_rate(s, rate, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark)
        fchanged[nfch] = s
        nfch += 1
        if rate > 0:
            ctr[HSEQ] += 1
            left = mf[fi[s, MROOT], TARGET] - ff[s, VSERV]
            ctr[HSIZE] = heap_push(hk, hi, ctr[HSIZE], now + left * fi[s, NMEM] / rate, ctr[HSEQ], fi[s, VER], s)
    return nfch, nrch


@njit(UniTuple(I, 2)(I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, F1, I2, I1, I1, I, I1, I, M1, F2, I1, F1), cache=True,
      **NO_REFCOUNT)
def _solve(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, rloc, hk, hi, ctr, fchanged, nfch, rchanged, nrch,
           rcmark, mf, xi, xf):
    """Max-min over the whole component comp[:nc] (FULL mode), applied (see `_apply`); xi, xf: scratch
    (`_fluidlayout.scratch_sizes`)."""
    if nc == 0:
        return nfch, nrch
    bots = xi[:nc]
    rates = xf[:nc]
    max_min(comp, nc, fres, fcoef, fn, ff, rf, ri, rloc, rates, RCAP, bots, xi[nc:], xf[nc:])
    return _apply(comp, nc, rates, bots, now, fres, fcoef, fn, ff, fi, rf, ri, hk, hi, ctr, fchanged, nfch,
                  rchanged, nrch, rcmark, mf)


# ---- incremental solve: re-solve a region, then prove the whole allocation is still max-min -----------------
# A feasible allocation is the (unique) weighted max-min fair one exactly when every flow is at its cap or has
# a bottleneck: a saturated resource on its route where no flow has a higher level (rate / weight). After a
# change most flows keep that property untouched, so the solve re-rates a region (the flows that lost their
# bottleneck, and new flows) against the capacity the others leave, then checks the property for every flow
# whose resources' loads moved. A flow that fails joins the region and the region is solved again; after
# MAX_ROUNDS rounds the classes above the floor are solved instead. fmark: 1 = in the region, 3 = checked outside
# flow, 4 = joins the region next round (in `depart`: 1 = a neighbour, 2 = a class left empty, 5 = a class that
# lost members). rmark: 1 = a resource of the region, 2 = a resource looked at as is.

@njit(cache=True, inline="always")
def _measure(r, fres, fcoef, ff, rf, ri, inc_next, fmark):
    """Load and highest level (rate / weight) on resource r under the proposed rates (TRATE for region flows,
    fmark 1; RATE for the rest), into rf[r, LOADP] and rf[r, MAXLEV]. The exact current load is summed on the
    way and replaces the tracked one, so rounding drift in LOAD never builds up where it matters."""
    K = fres.shape[1]
    load = 0.0
    cur = 0.0
    top = 0.0
    e = ri[r, HEAD]
    while e >= 0:
        g = e // K
        c = fcoef[g, e - g * K]
        rate = ff[g, TRATE] if fmark[g] == 1 else ff[g, RATE]
        load += c * rate
        cur += c * ff[g, RATE]
        lv = rate / ff[g, W]
        if lv > top:
            top = lv
        e = inc_next[e]
    rf[r, LOADP] = load
    rf[r, MAXLEV] = top
    rf[r, LOAD] = cur


@njit(cache=True, inline="always")
def _may_saturate(r, rf):
    """False when the load on r is surely below capacity (by more than the tracked load's drift)."""
    return rf[r, LOADP] >= rf[r, RCAP] * (1 - LOAD_MARGIN)


@njit(cache=True, inline="always")
def _saturated(r, rf):
    """Whether r is full under the proposed rates (its LOADP, measured or estimated), to the check's tolerance."""
    return rf[r, LOADP] >= rf[r, RCAP] * (1 - CHECK_TOL)


@njit(cache=True, inline="always")
def _bottleneck(s, rate, hint, fres, fcoef, fn, ff, rf, ri, inc_next, fmark, rmark, rstack, nrs):
    """A bottleneck of flow s at `rate` under the proposed rates: (resource, or -1 for its cap, or -2 for none;
    the new length of rstack). `hint` (a resource, or < 0) is tried first: usually the flow's bottleneck
    still holds. A resource outside the region not looked at yet is measured as it is (rmark 2), unless its
    tracked load shows it is not saturated."""
    if ff[s, CAP] < np.inf and rate >= ff[s, CAP] * (1 - CHECK_TOL):
        return -1, nrs
    lv = rate / ff[s, W]
    for k in range(-1, fn[s]):
        if k < 0:
            if hint < 0:
                continue
            r = hint
        else:
            r = fres[s, k]
            if r == hint:
                continue
        if ri[r, BINDING] == 0:
            continue
        if rmark[r] == 0:
            if rf[r, LOAD] < rf[r, RCAP] * (1 - LOAD_MARGIN):
                continue
            rmark[r] = 2
            rstack[nrs] = r
            nrs += 1
            _measure(r, fres, fcoef, ff, rf, ri, inc_next, fmark)
        if _saturated(r, rf) and lv >= rf[r, MAXLEV] * (1 - CHECK_TOL):
            return r, nrs
    return -2, nrs


@njit(cache=True, inline="always")
def _check_region(comp, nc, ncr, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark, rmark, rstack, scratch):
    """Check the proposed rates of region comp[:nc] (its binding resources are rstack[:ncr], rmark 1, with an
    estimate of their proposed load in LOADP). Flows that must join the region are appended to comp[nc:]
    (fmark 4 -> 1); returns how many, or -1 - how many when a region flow has no bottleneck and no outside
    flow explains why (rounding: the caller then solves above the floor).

    A region resource that is surely not saturated is bottleneck to no one and is not scanned, unless it was
    some outside flow's bottleneck (NBOT > 0): those flows must find another one. An outside flow on a region
    resource whose bottleneck is elsewhere is checked where its bottleneck is scanned, or holds unchanged."""
    K = fres.shape[1]
    for q in range(ncr):
        r = rstack[q]
        if _may_saturate(r, rf):
            _measure(r, fres, fcoef, ff, rf, ri, inc_next, fmark)
        else:
            rf[r, MAXLEV] = np.inf
    nrs = ncr
    nadd = 0
    stuck = False
    # region flows: each needs a bottleneck; when it has none, flows outside with a higher level share its
    # resources and must give way
    for q in range(nc):
        s = comp[q]
        b, nrs = _bottleneck(s, ff[s, TRATE], fi[s, TBOT], fres, fcoef, fn, ff, rf, ri, inc_next, fmark, rmark,
                             rstack, nrs)
        if b >= -1:
            fi[s, TBOT] = b
            continue
        lv = ff[s, TRATE] / ff[s, W] * (1 + CHECK_TOL)
        found = False
        for k in range(fn[s]):
            r = fres[s, k]
            # only a resource saturated under the proposed rates can hold s back (s's resources are the region's:
            # the loop above measured each that may be saturated, the others keep a LOADP estimate below capacity)
            if ri[r, BINDING] == 0 or not _saturated(r, rf):
                continue
            if ri[r, SCANNED] != 0 and rf[r, SCANLV] <= lv:
                # its outside flows above a level at most lv are collected already (a chain head's NIC is
                # shared by hundreds of region flows: scanning it for each cost seconds at 1,024 GPUs)
                if rf[r, SCANTOP] > lv:
                    found = True
                continue
            ri[r, SCANNED] = 1
            rf[r, SCANLV] = lv
            top = 0.0
            e = ri[r, HEAD]
            while e >= 0:
                g = e // K
                e = inc_next[e]
                if fmark[g] == 1:
                    continue
                lg = ff[g, RATE] / ff[g, W]
                if lg > top:
                    top = lg
                if lg > lv:
                    found = True
                    if fmark[g] != 4:
                        fmark[g] = 4
                        comp[nc + nadd] = g
                        nadd += 1
            rf[r, SCANTOP] = top
        if not found:
            stuck = True
    # outside flows whose bottleneck is a region resource: it must still hold, or another must
    nchk = 0
    for q in range(ncr):
        r = rstack[q]
        if rf[r, MAXLEV] == np.inf and ri[r, NBOT] == 0:
            continue
        e = ri[r, HEAD]
        while e >= 0:
            g = e // K
            e = inc_next[e]
            if fmark[g] != 0:
                continue
            b = fi[g, BOT]
            if b == -1 or (b >= 0 and rmark[b] != 1):
                continue  # its cap or a resource the region does not touch: unchanged, it holds
            fmark[g] = 3
            scratch[nchk] = g
            nchk += 1
            b, nrs = _bottleneck(g, ff[g, RATE], b, fres, fcoef, fn, ff, rf, ri, inc_next, fmark, rmark, rstack,
                                 nrs)
            if b >= -1:
                fi[g, TBOT] = b  # made its bottleneck only if the proposal holds (below)
            else:
                fmark[g] = 4
                comp[nc + nadd] = g
                nadd += 1
    for q in range(nchk):
        g = scratch[q]
        if fmark[g] == 3:
            fmark[g] = 0
            if nadd == 0 and not stuck:
                # The proposal holds: the bottlenecks found under it are the new ones. When it does not, the old
                # ones stay (a round that holds checks again every flow whose bottleneck is a region resource,
                # and a solve after a fallback may keep these flows' rates: `_solve_above`).
                _set_bot(g, fi[g, TBOT], fi, ri)
    for q in range(nrs):
        rmark[rstack[q]] = 0
        ri[rstack[q], SCANNED] = 0
    for q in range(nc, nc + nadd):
        fmark[comp[q]] = 1
    return -1 - nadd if stuck else nadd


@njit(UniTuple(I, 3)(I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, M1, F2, I1, F1),
      cache=True, **NO_REFCOUNT)
def _incremental(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, rloc, fmark, rmark, rstack, fchanged, hk,
                 hi, ctr, rchanged, rcmark, mf, xi, xf):
    """Max-min rates for the region comp[:nc] (fmark 1), grown until the whole allocation checks out, then
    applied (`_apply`; fmark cleared on the region); returns (region size, classes changed, resources changed),
    or (-1 - region size, 0, 0) after MAX_ROUNDS rounds or when stuck (fmark then holds 1 on the region's flows
    still). `fchanged` is scratch until the rates are applied; xi, xf: scratch (`_fluidlayout.scratch_sizes`).

    The capacity the flows outside the region leave a resource is its tracked load less the region's own
    (OUT), so a resource shared by thousands of flows costs nothing per round unless it may saturate."""
    K = fres.shape[1]
    ctr[N_SOLVES] += 1
    for _round in range(MAX_ROUNDS):
        ctr[N_ROUNDS] += 1
        nrs = 0
        for q in range(nc):
            s = comp[q]
            for k in range(fn[s]):
                r = fres[s, k]
                if ri[r, BINDING] == 0:
                    continue
                if rmark[r] == 0:
                    rmark[r] = 1
                    rstack[nrs] = r
                    nrs += 1
                    rf[r, OUT] = rf[r, LOAD]
                    ri[r, NREG] = 0
                rf[r, OUT] -= fcoef[s, k] * ff[s, RATE]
                ri[r, NREG] += 1
        for q in range(nrs):
            r = rstack[q]
            if ri[r, NREG] == ri[r, NFL]:
                rf[r, OUT] = 0.0  # every flow on it is in the region
            elif ri[r, NFL] <= SHORT_LIST:  # exact sum where it is cheap
                out = 0.0
                e = ri[r, HEAD]
                while e >= 0:
                    g = e // K
                    if fmark[g] != 1:
                        out += fcoef[g, e - g * K] * ff[g, RATE]
                    e = inc_next[e]
                rf[r, OUT] = out
            x = rf[r, RCAP] - rf[r, OUT]
            rf[r, RESID] = x if x > 0.0 else 0.0
            rf[r, LOADP] = rf[r, OUT] if rf[r, OUT] > 0.0 else 0.0
        bots = xi[:nc]
        rates = xf[:nc]
        max_min(comp, nc, fres, fcoef, fn, ff, rf, ri, rloc, rates, RESID, bots, xi[nc:], xf[nc:])
        for q in range(nc):
            s = comp[q]
            ff[s, TRATE] = rates[q]
            fi[s, TBOT] = bots[q]
            for k in range(fn[s]):
                r = fres[s, k]
                if ri[r, BINDING] != 0:
                    rf[r, LOADP] += fcoef[s, k] * rates[q]
        nadd = _check_region(comp, nc, nrs, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark, rmark, rstack,
                             fchanged)
        if nadd == 0:
            for q in range(nc):
                bots[q] = fi[comp[q], TBOT]
                fmark[comp[q]] = 0
            ctr[N_REGION] += nc
            ctr[N_STREAK] = 0
            nfch, nrch = _apply(comp, nc, rates, bots, now, fres, fcoef, fn, ff, fi, rf, ri, hk, hi, ctr, fchanged, 0,
                                rchanged, 0, rcmark, mf)
            return nc, nfch, nrch
        if nadd < 0:
            nc += -1 - nadd
            break
        nc += nadd
        if 100 * nc > ctr[REGION_PCT] * ctr[N_ACTIVE]:
            break  # most of the network moves: solving it whole is cheaper than growing the region further
    ctr[N_FALLBACKS] += 1
    ctr[N_STREAK] += 1
    ctr[N_SKIP] = min((1 << min(ctr[N_STREAK], 20)) - 1, MAX_SKIP)
    return -1 - nc, 0, 0


@njit(cache=True, inline="always")
def _finish_resources(rf, ri, rchanged, nrch, rcmark):
    for q in range(nrch):
        r = rchanged[q]
        rcmark[r] = 0
        if ri[r, HEAD] < 0:
            rf[r, LOAD] = 0.0  # no drift once a resource is idle


@njit(F(F1, I2, I2, I1), cache=True, inline="always", **NO_REFCOUNT)
def next_finish(hk, hi, fi, ctr):
    """The earliest valid finish time (stale heap entries are dropped); inf when nothing is running."""
    n = ctr[HSIZE]
    while n > 0 and hi[0, 1] != fi[hi[0, 2], VER]:
        n = heap_pop(hk, hi, n)
    ctr[HSIZE] = n
    return hk[0] if n > 0 else np.inf


# ---- solving above the floor: what a change cannot reach ----------------------------------------------------
# Max-min is progressive filling: every class's level (rate / weight) rises together, and a class freezes when
# a resource on its route saturates or its cap binds. Two fillings, before and after this instant's changes, go
# through the same events up to the lowest level at which a changed resource can saturate differently:
# - a class that lost members had level L, so each of its resources saturated at L or above; with less demand
#   on them they saturate no earlier in the new filling;
# - a class that gained members (or a new one) adds demand; a resource r on its route saturates no earlier in
#   the old filling than in the new one, and in the new one no earlier than where r's capacity equals what the
#   other classes frozen below that level draw (they freeze where they did, below the floor) plus the level
#   times the demand of the rest, counting the changed classes as never frozen (`_saturation_floor`; a frozen
#   class draws at most coeff x weight x level). Its own cap needs no term: the class is re-solved anyway, and
#   a cap only lowers what it draws.
# Below the least of these levels, the floor, both fillings freeze the same classes at the same rates. So the
# classes under the floor keep their rates, and max-min over the rest, against the capacity the classes under
# the floor leave, is the new allocation: exact, with nothing to check. Only the rest connected to a changed
# resource through classes at or above the floor can move (a resource saturated under the floor carries no
# class above it), so that is the region solved.

_EPS = 2.0 ** -52  # float64's machine epsilon


@njit(cache=True, inline="always")
def _sift3(key, a, b, i, n):
    """Sift entry i down the min-heap key[:n] (a and b move with it): `_saturation_floor` takes its lists in
    order of level from a heap built in place, as far as it needs them (argsort would allocate, and sort all)."""
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and key[c + 1] < key[c]:
            c += 1
        if key[c] >= key[i]:
            return
        key[i], key[c] = key[c], key[i]
        a[i], a[c] = a[c], a[i]
        b[i], b[c] = b[c], b[i]
        i = c


@njit(F(I, F, F2, F2, F2, I2, I1, M1, F1), cache=True, **NO_REFCOUNT)
def _saturation_floor(r, low, fcoef, ff, rf, ri, inc_next, fmark, xf):
    """A level below which resource r, carrying new demand (the classes marked 1 in fmark), saturates in neither
    filling, if that is below `low` (else some level at least `low`). Below the floor the other classes freeze
    where they did (at their levels now), and a class that gained members is counted as if it never froze
    (drawing coeff x weight x level, at least what it draws): r saturates where its capacity equals what the
    classes frozen below the level draw plus the level times the rest's demand. xf: scratch for three lists of
    r's incidences (`_fluidlayout.scratch_sizes`)."""
    K = fcoef.shape[1]
    n = ri[r, NFL]
    lev = xf[:n]
    drawn = xf[n:2 * n]
    dem = xf[2 * n:3 * n]
    m = 0
    rest = 0.0
    rlo = 0.0  # rest + rlo: the compensated demand (see `_maxmin.two_sum`)
    e = ri[r, HEAD]
    while e >= 0:
        g = e // K
        c = fcoef[g, e - g * K]
        e = inc_next[e]
        rest, rlo = two_sum(rest, rlo, c * ff[g, W])
        if fmark[g] == 0 and ff[g, RATE] < low * ff[g, W]:  # only classes frozen below `low` can matter
            lev[m] = ff[g, RATE] / ff[g, W]
            drawn[m] = c * ff[g, RATE]
            dem[m] = c * ff[g, W]
            m += 1
    for i in range(m // 2 - 1, -1, -1):  # a min-heap by level
        _sift3(lev, drawn, dem, i, m)
    frozen = 0.0
    d = rest + rlo
    x = (rf[r, RCAP] - frozen) / d if d > 0.0 else np.inf
    for q in range(m):  # the classes in order of level: the heap's top, popped
        level, draws, demand = lev[0], drawn[0], dem[0]
        if x <= level:
            break
        last = m - 1 - q
        lev[0], drawn[0], dem[0] = lev[last], drawn[last], dem[last]
        _sift3(lev, drawn, dem, 0, last)
        frozen += draws
        left = rf[r, RCAP] - frozen
        if left * FLOOR_TOL <= 2.0 * (q + 2) * _EPS * (rf[r, RCAP] + frozen):
            # the classes frozen so far all but fill r: what they leave is rounding noise (to FLOOR_TOL), not a
            # level. r does not saturate below this class's level (x, trusted so far, lies above it): a lower bound
            return level
        rest, rlo = two_sum(rest, rlo, -demand)  # compensated: the small demands left must not carry the
        # rounding of the large ones taken away (as in `_maxmin`)
        d = rest + rlo
        x = left / d if d > 0.0 else np.inf
    return x


@njit(cache=True, inline="always")
def _floor(seeds, nseeds, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark, rmark, rstack, ctr, xf):
    """The floor level of this instant (see above): the classes that lost members are on DLIST (with DLEV),
    those that gained some are seeds[:nseeds]."""
    low = np.inf
    for q in range(ctr[N_DRES]):
        x = rf[ri[q, DLIST], DLEV]
        if x < low:
            low = x
    for q in range(nseeds):
        s = seeds[q]
        if fi[s, ACTIVE] != 0:
            fmark[s] = 1
    nv = 0
    for q in range(nseeds):
        s = seeds[q]
        if fi[s, ACTIVE] == 0:
            continue
        for k in range(fn[s]):
            r = fres[s, k]
            if ri[r, BINDING] == 0 or rmark[r] != 0:
                continue
            rmark[r] = 1
            rstack[nv] = r
            nv += 1
            x = _saturation_floor(r, low, fcoef, ff, rf, ri, inc_next, fmark, xf)
            if x < low:
                low = x
    for q in range(nv):
        rmark[rstack[q]] = 0
    for q in range(nseeds):
        fmark[seeds[q]] = 0
    return low


@njit(cache=True, inline="always")
def _above_floor(closed, nclosed, seeds, nseeds, floor, comp, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark,
                 rmark, rstack, ctr):
    """The region a solve above `floor` re-rates, into comp; returns its size. It holds the changed classes
    (seeds, and those in closed[:nclosed] that lost members) and every class at or above the floor reachable from
    them or from a resource on DLIST through binding resources and such classes; each resource it reaches gets
    in RESID its capacity less what the classes under the floor draw from it (summed exactly, on the walk)."""
    K = fres.shape[1]
    nc = 0
    nv = 0
    for q in range(nseeds + nclosed):
        s = seeds[q] if q < nseeds else closed[q - nseeds]
        if fi[s, ACTIVE] == 0 or fmark[s] != 0:
            continue
        if q >= nseeds and fi[s, FRESH] == 0 and ff[s, RATE] < floor * ff[s, W]:
            continue  # under the floor: keeps its rate
        fmark[s] = 1
        comp[nc] = s
        nc += 1
        nv = _visit_resources(s, fres, fn, ri, rmark, rstack, nv)
    for q in range(ctr[N_DRES]):
        # binding before the departures or now (one that stopped binding frees the classes it held; one that never
        # binds couples nothing): while every recorded bottleneck is right the classes that gain are reached from
        # closed[] anyway; these keep the region independent of that
        r = ri[q, DLIST]
        if rmark[r] == 0 and (ri[r, DSEEN] == 2 or ri[r, BINDING] != 0):
            rmark[r] = 1
            rstack[nv] = r
            nv += 1
    top = 0
    while top < nv:
        r = rstack[top]
        top += 1
        under = 0.0
        e = ri[r, HEAD]
        while e >= 0:
            g = e // K
            c = fcoef[g, e - g * K]
            e = inc_next[e]
            if fmark[g] != 0:
                continue
            if ff[g, RATE] < floor * ff[g, W]:
                under += c * ff[g, RATE]
                continue
            fmark[g] = 1
            comp[nc] = g
            nc += 1
            nv = _visit_resources(g, fres, fn, ri, rmark, rstack, nv)
        x = rf[r, RCAP] - under
        rf[r, RESID] = x if x > 0.0 else 0.0
    for q in range(nv):
        rmark[rstack[q]] = 0
    for q in range(nc):
        fmark[comp[q]] = 0
    return nc


@njit(UniTuple(I, 2)(I1, I, I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, I1, M1,
                     F2, I1, F1), cache=True, **NO_REFCOUNT)
def _solve_above(closed, nclosed, seeds, nseeds, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, rloc, fmark, rmark,
                 rstack, comp, hk, hi, ctr, fchanged, rchanged, rcmark, mf, xi, xf):
    """Max-min over the classes at or above this instant's floor that a change reaches, applied (see above); xi,
    xf: scratch (`_fluidlayout.scratch_sizes`)."""
    floor = _floor(seeds, nseeds, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark, rmark, rstack,
                   ctr, xf) * (1 - FLOOR_TOL)
    nc = _above_floor(closed, nclosed, seeds, nseeds, floor, comp, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark,
                      rmark, rstack, ctr)
    ctr[N_FLOOR] += 1
    ctr[N_FLOOR_CLS] += nc
    if nc == 0:
        return 0, 0
    bots = xi[:nc]
    rates = xf[:nc]
    max_min(comp, nc, fres, fcoef, fn, ff, rf, ri, rloc, rates, RESID, bots, xi[nc:], xf[nc:])
    return _apply(comp, nc, rates, bots, now, fres, fcoef, fn, ff, fi, rf, ri, hk, hi, ctr, fchanged, 0, rchanged,
                  0, rcmark, mf)


@njit(Tuple((I, I, F))(I1, I, I1, I, F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, I1,
                       M1, F2, I1, F1), cache=True, **NO_REFCOUNT)
def arrive(closed, nclosed, seeds, nseeds, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, rloc, fmark, rmark,
           rstack, comp, hk, hi, ctr, fchanged, rchanged, rcmark, mf, xi, xf):
    """Re-solve what changed at this instant: the classes `depart` handed over, closed[:nclosed], and the classes
    flows joined at this instant, seeds[:nseeds] (as everywhere in this module, a "flow" below is a class).

    INCREMENTAL mode (ctr[MODE], the default): `depart` hands over the flows whose bottleneck it freed; they
    and the new flows are solved as a region and checked (see `_incremental`); when that falls back (or is
    skipped after fallbacks in a row), the classes above the instant's floor are solved (`_solve_above`), as
    FLOOR mode always does.
    FULL mode, the reference: `depart` hands over every survivor of its departures' components (a set already
    closed under sharing a binding resource), and the component of the new flows is added and solved whole.
    Survivors are not searched again: a resource binding now either bound before the departures (so all its
    flows are survivors, departed, or new) or lies on the route of a class that flows joined (a survivor too,
    at times: its resources are searched all the same).

    Returns (flows whose rate changed, in fchanged; resources whose load changed, in rchanged; the next
    finish time).
    """
    nfch = 0
    nrch = 0
    if ctr[MODE] == FULL:
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
        ctr[N_WHOLE] += 1
        ctr[N_WHOLE_CLS] += nc
        nfch, nrch = _solve(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, rloc, hk, hi, ctr, fchanged, 0,
                            rchanged, 0, rcmark, mf, xi, xf)
    else:
        solved = False
        if ctr[MODE] != FLOOR and ctr[N_SKIP] > 0:
            ctr[N_SKIP] -= 1
        elif ctr[MODE] != FLOOR:
            nc = 0
            for q in range(nclosed + nseeds):
                s = closed[q] if q < nclosed else seeds[q - nclosed]
                if fi[s, ACTIVE] != 0 and fmark[s] == 0:
                    fmark[s] = 1
                    comp[nc] = s
                    nc += 1
            solved = nc == 0
            if nc > 0:
                m, nfch, nrch = _incremental(comp, nc, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, rloc, fmark,
                                             rmark, rstack, fchanged, hk, hi, ctr, rchanged, rcmark, mf, xi, xf)
                if m < 0:
                    for q in range(-1 - m):
                        fmark[comp[q]] = 0
                solved = m >= 0
        if not solved:
            nfch, nrch = _solve_above(closed, nclosed, seeds, nseeds, now, fres, fcoef, fn, ff, fi, rf, ri, inc_next,
                                      rloc, fmark, rmark, rstack, comp, hk, hi, ctr, fchanged, rchanged, rcmark, mf, xi,
                                      xf)
    for q in range(ctr[N_DRES]):
        ri[ri[q, DLIST], DSEEN] = 0
    ctr[N_DRES] = 0
    ctr[N_CHANGED] += nfch
    _finish_resources(rf, ri, rchanged, nrch, rcmark)
    return nfch, nrch, next_finish(hk, hi, fi, ctr)


@njit(cache=True, inline="always")
def _is_dust(g, now, ff, fi, mf):
    """Class g's first member has fewer than BYTE_TOL of its bytes left at `now`: it finishes with the flows due
    now."""
    m = fi[g, MROOT]
    served = ff[g, VSERV] + ff[g, RATE] / fi[g, NMEM] * (now - ff[g, TLAST])
    return mf[m, TARGET] - served <= BYTE_TOL * mf[m, MBYTES]


@njit(cache=True, inline="always")
def _note_loss(s, fres, fn, ff, rf, ri, ctr):
    """Class s is about to lose members: put its resources on the instant's list (DLIST) with the lowest level a
    losing class had there (DLEV), for `_floor`."""
    lev = ff[s, RATE] / ff[s, W]
    for k in range(fn[s]):
        r = fres[s, k]
        if ri[r, DSEEN] == 0:
            ri[r, DSEEN] = 2 if ri[r, BINDING] != 0 else 1
            ri[ctr[N_DRES], DLIST] = r
            ctr[N_DRES] += 1
            rf[r, DLEV] = lev
        elif lev < rf[r, DLEV]:
            rf[r, DLEV] = lev


@njit(cache=True, inline="always")
def _pop_members(s, now, horizon, finished, nfin, ff, fi, mf, mi, fmark, fres, fn, rf, ri, ctr):
    """Take class s's members that are done at `now` off it, appending them to finished[nfin:]; returns the new
    length. The first member goes whatever the clock says (the class's heap entry came due, or it has dust
    left, and the clock read now may differ from the entry's time by rounding); the others go when due by
    `horizon` or with dust left (BYTE_TOL of their bytes). The class is marked 2 (left empty: to retire) or 5
    (shrunk: to re-solve). Its weight and cap follow its members; its upper bound is lowered by `depart` after
    the search for its neighbours, as a retiring class's is dropped only by `_retire`: a resource it made
    binding must still lead to the flows bottlenecked there."""
    _note_loss(s, fres, fn, ff, rf, ri, ctr)
    _advance(s, now, ff, fi)
    n = fi[s, NMEM]
    per = ff[s, RATE] / n
    root = fi[s, MROOT]
    nf = 0
    while root >= 0:
        left = mf[root, TARGET] - ff[s, VSERV]
        if not (nf == 0 or left <= BYTE_TOL * mf[root, MBYTES] or (per > 0.0 and now + left / per <= horizon)):
            break
        finished[nfin + nf] = root
        nf += 1
        root = _meld(mi[root, LEFT], mi[root, RIGHT], mf, mi)
    fi[s, MROOT] = root
    n -= nf
    if n == 0:
        fi[s, NMEM] = 0
        fmark[s] = 2
    else:
        _scale(s, n, ff, fi)
        fmark[s] = 5
        fi[s, FRESH] = 1
    return nfin + nf


@njit(cache=True, inline="always")
def _freed(now, horizon, nt, nfin, touched, finished, comp, fres, fcoef, fn, ff, fi, rf, ri, inc_next, fmark,
           rmark, rstack, mf, mi, ctr):
    """Incremental mode's part of `depart`: the neighbours of the classes touched[:nt] (which lost members) on
    binding resources, where those whose first member has dust left lose it too (appended to touched, their
    members to finished), and of the rest, into comp, the classes whose bottleneck was one of the touched
    classes' resources (or is unknown): only they can gain from the departures directly; `arrive` re-solves
    them, the shrunk touched classes, and checks everyone else. Returns (nt, nfin, classes in comp); those in
    comp are left with fmark 1 (cleared by the caller)."""
    K = fres.shape[1]
    nn = 0
    nv = 0
    q = 0
    while q < nt:
        s = touched[q]
        q += 1
        for k in range(fn[s]):
            r = fres[s, k]
            if rmark[r] != 0:
                continue
            rmark[r] = 1
            rstack[nv] = r
            nv += 1
            if ri[r, BINDING] == 0:
                continue
            e = ri[r, HEAD]
            while e >= 0:
                g = e // K
                e = inc_next[e]
                if fmark[g] != 0:
                    continue
                if _is_dust(g, now, ff, fi, mf):
                    nfin = _pop_members(g, now, horizon, finished, nfin, ff, fi, mf, mi, fmark, fres, fn, rf, ri, ctr)
                    touched[nt] = g
                    nt += 1
                else:
                    fmark[g] = 1
                    comp[nn] = g
                    nn += 1
    m = 0
    for q in range(nn):
        g = comp[q]
        b = fi[g, BOT]
        if b < -1 or (b >= 0 and rmark[b] == 1):
            comp[m] = g
            m += 1
        else:
            fmark[g] = 0
    for q in range(nv):
        rmark[rstack[q]] = 0
    return nt, nfin, m


@njit(Tuple((I, I, I, I))(F, I2, F2, I1, F2, I2, F2, I2, I1, I1, M1, M1, I1, I1, F1, I2, I1, I1, I1, I1, M1, F2, I2,
                          I1, I1, I1), cache=True, **NO_REFCOUNT)
def depart(now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, fmark, rmark, rstack, comp, hk, hi,
           ctr, finished, fchanged, rchanged, rcmark, mf, mi, rclass, cfree, touched):
    """Finish every flow due at `now`, and list the classes to re-solve: those left with fewer members, and
    those they shared binding resources with, unsolved.

    Flows within a relative TIME_TOL of now finish; so do neighbours with fewer than BYTE_TOL of their bytes
    left (floating-point dust), so ties never cause zero-time event loops. The survivors keep their old rates
    (no time passes) until the caller re-solves them together with whatever else changes at this instant
    (`arrive` with them as seeds): one solve per instant, however many departures and arrivals it holds.
    Re-solving from the survivors as seeds is exact even if the departures split their component (each part
    is then searched from its own seeds).
    Returns (finished flows, member slots in finished; changed classes; changed resources; classes to
    re-solve, in comp), or -1 classes when nothing was due (a stale wake-up).
    """
    horizon = now * (1 + TIME_TOL) + 1e-18
    nt = 0
    nfin = 0
    n = ctr[HSIZE]
    while n > 0 and hk[0] <= horizon:
        ver = hi[0, 1]
        s = hi[0, 2]
        n = heap_pop(hk, hi, n)
        if ver == fi[s, VER] and fi[s, ACTIVE] != 0 and fmark[s] == 0:
            nfin = _pop_members(s, now, horizon, finished, nfin, ff, fi, mf, mi, fmark, fres, fn, rf, ri, ctr)
            touched[nt] = s
            nt += 1
    ctr[HSIZE] = n
    if nt == 0:
        return 0, 0, 0, -1
    if ctr[MODE] != FULL:
        nt, nfin, nc = _freed(now, horizon, nt, nfin, touched, finished, comp, fres, fcoef, fn, ff, fi, rf, ri,
                              inc_next, fmark, rmark, rstack, mf, mi, ctr)
    else:
        for q in range(nt):
            fmark[touched[q]] = 0
        nc = _component(touched, nt, comp, fres, fn, fi, ri, inc_next, fmark, rmark, rstack)  # marks them 1
        for q in range(nt):  # their marks back, as `_pop_members` set them: 2 left empty, 5 shrunk
            fmark[touched[q]] = 2 if fi[touched[q], NMEM] == 0 else 5
        for q in range(nc):
            g = comp[q]
            if fmark[g] == 1 and _is_dust(g, now, ff, fi, mf):
                nfin = _pop_members(g, now, horizon, finished, nfin, ff, fi, mf, mi, fmark, fres, fn, rf, ri, ctr)
                touched[nt] = g
                nt += 1
    nrch = 0
    nfch = 0
    for q in range(nt):
        s = touched[q]
        if fmark[s] == 5:
            _set_ub(s, _class_ub(s, fres, fcoef, fn, ff, rf), fres, fcoef, fn, ff, rf, ri)
        elif fmark[s] == 2:
            nrch = _set_rate(s, 0.0, now, fres, fcoef, fn, ff, fi, rf, rchanged, nrch, rcmark)
            fchanged[nfch] = s
            nfch += 1
            _retire(s, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, rclass, cfree, ctr)
    m = 0
    for q in range(nc):
        g = comp[q]
        if fmark[g] == 1:
            fmark[g] = 0
            comp[m] = g
            m += 1
    for q in range(nt):
        s = touched[q]
        if fmark[s] == 5:
            comp[m] = s
            m += 1
        fmark[s] = 0
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
            for c in range(3):  # element by element: a row assignment compiles numpy's broadcasting and its errors
                keep_i[m, c] = hi[q, c]
            m += 1
    n = 0
    for q in range(m):
        n = heap_push(hk, hi, n, keep_k[q], keep_i[q, 0], keep_i[q, 1], keep_i[q, 2])
    ctr[HSIZE] = n


@njit(void(I2, I1, I2, I2, I1, I1), cache=True, **NO_REFCOUNT)
def relink(fres, fn, fi, ri, inc_next, inc_prev):
    """Rebuild every resource's list of flows (after the route width K changed, which renumbers incidences)."""
    for r in range(ri.shape[0]):
        ri[r, HEAD] = -1
        ri[r, NFL] = 0
    for s in range(fi.shape[0]):
        if fi[s, ACTIVE] != 0:
            _link(s, fres, fn, ri, inc_next, inc_prev)
