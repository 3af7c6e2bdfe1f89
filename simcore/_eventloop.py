"""Compiled event loop for declarative work: transfers, tasks and delays lowered to arrays, run without simpy.

Why this module exists: with simpy every transfer is a generator, a handful of events and a Python call into
the compiled solver, which costs ~10 us per transfer before any bandwidth is shared. Work declared up front
(start times, `after` dependencies, FIFO engines, latencies, fixed costs, caps, weights) needs none of that, so
`simcore.lowering` turns it into arrays and this loop runs it with its own time heap, calling the same
`_fluidcore` functions the simpy path calls (`join`, `arrive`, `depart`): one solver, two drivers.

The loop follows the simpy path step for step: an item is released when its last dependency finishes (or at
its start time, if later), then queues on its engine, pays its latency, and becomes a flow; zero-byte flows
and zero-length delays finish at once. At the end of each instant engines are granted (lowest (request time,
item index) first, the same rule as the simpy path's `FifoEngine`), then everything that changed is solved once.

The loop is resumable: it returns a status when it needs the caller to grow an array (flow slots, the finish
heap, the load log) or to show progress, and picks up where it stopped when called again.

Item arrays (n items): `ikind` (0 flow, 1 delay), `istart`, `ilat` (latency + fixed cost, or the delay),
`ibytes`, `iw`, `icap` (inf when none), `iroute` (route number; route r is `rres/rcoef[roff[r]:roff[r+1]]`),
`ieng` (engine number or -1), `nleft` (dependencies not finished), successors in CSR (`soff`, `succ`),
results `ot` (n x 3: start, begin, finish). Scalars live in `st` (int) and `sf` (float): see the S_* and F_*
names below.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import float64, int8, int64

from ._fluidcore import NO_REFCOUNT, arrive, depart, heap_pop, heap_push, join, next_finish
from ._fluidlayout import HSIZE

I, F = int64, float64
I1, I2, F1, F2, M1 = int64[::1], int64[:, ::1], float64[::1], float64[:, ::1], int8[::1]

# st entries
S_SEQ, S_EHN, S_RQH, S_RQT, S_NFREE, S_NSEEDS, S_NCLOSED, S_DIRTY, S_EVENTS, S_ACTIVE, S_NLOG, S_NGRANT = range(12)
S_RECORD, S_DONE, S_FINISHED, S_WORK = 12, 13, 14, 15
# S_FINISHED: items finished so far (the progress line's count); S_WORK: work since the last YIELD (see `run`)
NST = 16
# sf entries: now, the pending network wake-up (inf when none)
F_NOW, F_WAKE = 0, 1
NSF = 2
# statuses
DONE, NEED_SLOTS, NEED_HEAP, NEED_LOG, YIELD = 0, 1, 2, 3, 4
# timed events: release at start time, end of latency / delay
EV_START, EV_LAT = 0, 1
# ot columns
T_START, T_BEGIN, T_FINISH = 0, 1, 2


@njit(cache=True, **NO_REFCOUNT)
def _push_timed(ek, ei, st, t, kind, item):
    st[S_SEQ] += 1
    st[S_EHN] = heap_push(ek, ei, st[S_EHN], t, st[S_SEQ], kind, item)


@njit(cache=True, **NO_REFCOUNT)
def _ready(item, rq, st):
    rq[st[S_RQT]] = item
    st[S_RQT] += 1


@njit(cache=True, **NO_REFCOUNT)
def _release(i, now, istart, ieng, ot, ek, ei, st, eqnext, eqprev, ehead, etail, egrant, gl):
    """Item i's dependencies are done at `now`: wait for its start time, then queue on its engine or begin."""
    if istart[i] > now:
        _push_timed(ek, ei, st, istart[i], EV_START, i)  # at the start time itself, as simcore.clock does
        return False
    ot[i, T_START] = now
    e = ieng[i]
    if e < 0:
        return True  # begin now
    # engine queue: sorted by (request time, index); a new request is at `now`, so it goes near the tail
    j = etail[e]
    while j >= 0 and ot[j, T_START] == now and j > i:
        j = eqprev[j]
    nxt = ehead[e] if j < 0 else eqnext[j]
    eqprev[i] = j
    eqnext[i] = nxt
    if j < 0:
        ehead[e] = i
    else:
        eqnext[j] = i
    if nxt < 0:
        etail[e] = i
    else:
        eqprev[nxt] = i
    if egrant[e] == 0:
        egrant[e] = 1
        gl[st[S_NGRANT]] = e
        st[S_NGRANT] += 1
    return False


@njit(cache=True, **NO_REFCOUNT)  # see `_maxmin.NO_REFCOUNT`
def run(ikind, istart, ilat, ibytes, iw, icap, iroute, ieng, nleft, soff, succ, roff, rres, rcoef, ot,
        ek, ei, rq, eholder, ehead, etail, eqnext, eqprev, egrant, gl, slot_item, free, seeds, closed,
        lt, lr, lv, st, sf, budget,
        fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, rloc, fmark, rmark, rstack, comp, hk, hi, ctr,
        finished, fchanged, rchanged, rcmark, mf, mi, rclass, cfree, touched, xi, xf):
    """Run (or resume) the loop; returns a status (DONE, NEED_*, YIELD). YIELD comes after about `budget` units
    of work since the last one, counted across calls (the calls that return to grow an array come often where
    every change re-rates many flows: the finish heap fills with stale entries). A step is one unit and a solve
    as many as the classes it re-rated: in a 256-GPU all-to-all a step can take a millisecond, and the caller's
    progress line must still move."""
    n = ikind.shape[0]
    now = sf[F_NOW]
    if st[S_DONE] == 0:
        # first call: every item without dependencies is released at t = 0, in index order
        st[S_DONE] = 1
        for i in range(n):
            if nleft[i] == 0:
                _ready(i, rq, st)
    while True:
        st[S_WORK] += 1
        if st[S_WORK] > budget:
            st[S_WORK] = 0
            sf[F_NOW] = now
            return YIELD
        # 1. items released at this instant: start-time wait, engine queue, or begin
        if st[S_RQH] < st[S_RQT]:
            i = rq[st[S_RQH]]
            st[S_RQH] += 1
            if st[S_RQH] == st[S_RQT]:
                st[S_RQH] = 0
                st[S_RQT] = 0
            if _release(i, now, istart, ieng, ot, ek, ei, st, eqnext, eqprev, ehead, etail, egrant, gl):
                ot[i, T_BEGIN] = now
                if ilat[i] > 0:
                    _push_timed(ek, ei, st, now + ilat[i], EV_LAT, i)
                else:
                    _push_timed(ek, ei, st, now, EV_LAT, i)
            continue
        # 2. timed events due now (or earlier than the network's next finish)
        tev = ek[0] if st[S_EHN] > 0 else np.inf
        if tev <= now:
            kind = ei[0, 1]
            i = ei[0, 2]
            if kind == EV_LAT and ikind[i] == 0 and ibytes[i] > 0 and st[S_NFREE] == 0:
                sf[F_NOW] = now
                return NEED_SLOTS
            st[S_EHN] = heap_pop(ek, ei, st[S_EHN])
            if kind == EV_START:
                _ready(i, rq, st)
                continue
            # end of latency or delay
            if ikind[i] == 1 or ibytes[i] <= 0:
                _finish(i, now, ot, ieng, eholder, egrant, gl, st, soff, succ, nleft, rq)
                continue
            st[S_NFREE] -= 1
            s = free[st[S_NFREE]]
            slot_item[s] = i
            r0 = roff[iroute[i]]
            r1 = roff[iroute[i] + 1]
            c = join(s, rres[r0:r1], rcoef[r0:r1], iroute[i], iw[i], icap[i], ibytes[i], now, fres, fcoef, fn, ff,
                     fi, rf, ri, inc_next, inc_prev, mf, mi, rclass, cfree, ctr)
            seeds[st[S_NSEEDS]] = c
            st[S_NSEEDS] += 1
            st[S_ACTIVE] += 1
            st[S_EVENTS] += 1
            st[S_DIRTY] = 1
            continue
        # 3. end of the instant: grant free engines, then solve what changed, once
        if st[S_NGRANT] > 0:
            ng = st[S_NGRANT]
            st[S_NGRANT] = 0
            for q in range(ng):
                e = gl[q]
                egrant[e] = 0
                if eholder[e] < 0 and ehead[e] >= 0:
                    i = ehead[e]
                    ehead[e] = eqnext[i]
                    if eqnext[i] >= 0:
                        eqprev[eqnext[i]] = -1
                    else:
                        etail[e] = -1
                    eholder[e] = i
                    ot[i, T_BEGIN] = now
                    if ilat[i] > 0:
                        _push_timed(ek, ei, st, now + ilat[i], EV_LAT, i)
                    else:
                        _push_timed(ek, ei, st, now, EV_LAT, i)
            continue
        if st[S_DIRTY] != 0:
            if ctr[HSIZE] + st[S_ACTIVE] + 1 > hk.shape[0]:
                sf[F_NOW] = now
                return NEED_HEAP
            if st[S_RECORD] != 0 and st[S_NLOG] + rf.shape[0] > lt.shape[0]:
                sf[F_NOW] = now
                return NEED_LOG
            nfch, nrch, t = arrive(closed, st[S_NCLOSED], seeds, st[S_NSEEDS], now, fres, fcoef, fn, ff, fi, rf, ri,
                                   inc_next, rloc, fmark, rmark, rstack, comp, hk, hi, ctr, fchanged, rchanged,
                                   rcmark, mf, xi, xf)
            st[S_NSEEDS] = 0
            st[S_NCLOSED] = 0
            st[S_DIRTY] = 0
            st[S_WORK] += nfch
            _log(now, nrch, rchanged, rf, lt, lr, lv, st)
            if t < sf[F_WAKE]:
                sf[F_WAKE] = max(now, t)
            continue
        # 4. advance time: the earlier of the next timed event and the network's wake-up
        if sf[F_WAKE] < np.inf and sf[F_WAKE] <= tev:
            if st[S_RECORD] != 0 and st[S_NLOG] + rf.shape[0] > lt.shape[0]:
                sf[F_NOW] = now
                return NEED_LOG
            now = sf[F_WAKE]
            sf[F_WAKE] = np.inf
            nfin, nfch, nrch, nsurv = depart(now, fres, fcoef, fn, ff, fi, rf, ri, inc_next, inc_prev, fmark, rmark,
                                             rstack, comp, hk, hi, ctr, finished, fchanged, rchanged, rcmark, mf, mi,
                                             rclass, cfree, touched)
            if nsurv < 0:
                t = next_finish(hk, hi, fi, ctr)
                if t < sf[F_WAKE]:
                    sf[F_WAKE] = max(now, t)
                continue
            _log(now, nrch, rchanged, rf, lt, lr, lv, st)
            for q in range(nsurv):
                closed[q] = comp[q]
            st[S_NCLOSED] = nsurv
            st[S_DIRTY] = 1
            st[S_ACTIVE] -= nfin
            st[S_EVENTS] += nfin
            for q in range(nfin):
                s = finished[q]
                free[st[S_NFREE]] = s
                st[S_NFREE] += 1
                _finish(slot_item[s], now, ot, ieng, eholder, egrant, gl, st, soff, succ, nleft, rq)
            continue
        if tev < np.inf:
            now = tev
            continue
        sf[F_NOW] = now
        return DONE


@njit(cache=True, **NO_REFCOUNT)
def _finish(i, now, ot, ieng, eholder, egrant, gl, st, soff, succ, nleft, rq):
    """Item i ends at `now`: free its engine (granted again at the end of the instant), release successors."""
    ot[i, T_FINISH] = now
    st[S_FINISHED] += 1
    e = ieng[i]
    if e >= 0:
        eholder[e] = -1
        if egrant[e] == 0:
            egrant[e] = 1
            gl[st[S_NGRANT]] = e
            st[S_NGRANT] += 1
    for q in range(soff[i], soff[i + 1]):
        j = succ[q]
        nleft[j] -= 1
        if nleft[j] == 0:
            _ready(j, rq, st)


@njit(cache=True, **NO_REFCOUNT)
def _log(now, nrch, rchanged, rf, lt, lr, lv, st):
    """Append the loads of the resources that changed (when loads are recorded)."""
    if st[S_RECORD] == 0:
        return
    m = st[S_NLOG]
    for q in range(nrch):
        r = rchanged[q]
        lt[m] = now
        lr[m] = r
        lv[m] = rf[r, 2]
        m += 1
    st[S_NLOG] = m
