"""Lowering declared work to arrays and running it on the compiled event loop (`simcore._eventloop`).

`Simulation.run` calls `run_compiled` when every item was declared up front (see `simulation.Work`). This
module turns the items into flat arrays (routes shared between items that share a path), grows the network's
arrays when the loop asks, shows progress, and writes the results back into the records, the load series and
the simulation's clock, so a caller cannot tell which loop ran except by the time it took.
"""

from __future__ import annotations

import gc
import sys
import threading
from itertools import chain, islice
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import simpy

from . import _fluidlayout as L
from .fluid import COMPILE_NOTICE_S
from .progress import Progress
from .records import Record
from .routes import RouteTable

# The Simulation that calls this module is typed loosely (`Any`): simulation imports lowering, and lowering
# needs nothing of it but attributes, so no import runs back up.
Simulation = Any

class Work(NamedTuple):
    """One declared transfer, task or delay, kept until `run` decides which loop runs it (see `Simulation`).

    The simulation keeps them as plain tuples in this field order (a named tuple costs more to build than the rest
    of declaring a transfer's item) and their completion events apart, in the same order; the record is made from
    the tuple when first asked for (`record`)."""

    start: float
    latency: float  # path latency + fixed cost (flows) or the delay itself
    route: int  # the simulation's route number of its flow (`Simulation._routes`), -1: no flow
    nbytes: float  # the record's bytes; the flow's, if it has one
    weight: float  # the flow's weight (1.0 without a flow)
    cap: float | None  # the flow's rate cap, None: none
    engine: str | None
    key: int  # the simulation's sequence number when it was declared (its flow's key on the simpy path)
    id: str  # the record's fields, as `Record` names them
    kind: str
    src: str
    dst: str
    path_class: str
    nodes: tuple[str, ...]
    tag: str | None
    flops: float
    deps: tuple[int, ...]  # indices of the work items it waits for


_NAN = float("nan")


def record(w: tuple, start_s: float = _NAN, begin_s: float = _NAN, finish_s: float = _NAN) -> Record:
    """The record of a declared item (a `Work` tuple, or one less its dependencies)."""
    return Record(w[8], w[9], w[10], w[11], w[3], start_s, begin_s, finish_s, w[12], w[13], w[6], w[14], w[15],
                  w[1] if w[9] == "transfer" else 0.0)

_loop = None
STEPS_PER_CALL = 1 << 16  # work units (steps, classes re-rated) between hand-backs, for the progress line


def load_loop():
    """The compiled loop, compiled on first use (about 6 s once per install, then cached beside the source)."""
    global _loop
    if _loop is None:
        notice = threading.Timer(COMPILE_NOTICE_S, lambda: print(
            "fabricsim: compiling the event loop (once per install, about 6 s)...", file=sys.stderr, flush=True))
        notice.daemon = True
        notice.start()
        try:
            from . import _eventloop

            _lowered_run(_eventloop, *_tiny_problem())  # compile (or load the cache) now, announced
        finally:
            notice.cancel()
        _loop = _eventloop
    return _loop


def _tiny_problem():
    """One delay: enough to make numba compile `run` for the argument types every real call uses."""
    import simpy

    from .fluid import FluidNetwork

    net = FluidNetwork(simpy.Environment(), [1.0])
    arrays = _ItemArrays(1)
    arrays.ikind[0] = 1
    return net, arrays, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), 0


class _ItemArrays:
    def __init__(self, n: int) -> None:
        self.ikind = np.zeros(n, np.int64)
        self.istart = np.zeros(n)
        self.ilat = np.zeros(n)
        self.ibytes = np.zeros(n)
        self.iw = np.ones(n)
        self.icap = np.full(n, np.inf)
        self.iroute = np.zeros(n, np.int64)
        self.ieng = np.full(n, -1, np.int64)
        self.nleft = np.zeros(n, np.int64)
        self.soff = np.zeros(n + 1, np.int64)
        self.succ = np.zeros(0, np.int64)


class RecordMaker:
    """Makes the records of one simulation's declared items (`work`) after a compiled run, from the run's times
    (`times`: start, begin and finish arrays by item), into the simulation's own record list `records` (shared),
    in item order. An item's event asks for its one record out of order (`one`); that record is kept and taken
    in its place, so an event's value and the result's record are the same object, as on the simpy path. The
    times become Python floats only for the records made (a 1,024-GPU sync is often asked for a few of its 10^6)."""

    def __init__(self, records: list[Record], work: list[tuple], times: tuple[np.ndarray, ...]) -> None:
        self.records = records
        self.work = work
        self.times = times
        self._early: dict[int, Record] = {}

    def upto(self, n: int) -> list[Record]:
        records, k = self.records, len(self.records)
        if k < n:
            t0, t1, t2 = (t[k:n].tolist() for t in self.times)  # (indexed from k below)
            early = self._early
            work = self.work
            # 10^6 new records make no reference cycle: the collector's passes over them (and the whole heap, each
            # time it grows by a quarter) would find nothing and took 3/4 of the time spent making them
            paused = gc.isenabled()
            gc.disable()
            try:
                if early:
                    records.extend([early.pop(i) if i in early else record(work[i], t0[i - k], t1[i - k], t2[i - k])
                                    for i in range(k, n)])
                else:
                    records.extend(map(record, work[k:n], t0, t1, t2))
            finally:
                if paused:
                    gc.enable()
        return records

    def one(self, i: int) -> Record:
        if i < len(self.records):
            return self.records[i]
        rec = self._early.get(i)
        if rec is None:
            t0, t1, t2 = self.times
            rec = self._early[i] = record(self.work[i], t0[i].item(), t1[i].item(), t2[i].item())
        return rec

    def finish_times(self, n: int) -> list[float]:
        return self.times[2][:n].tolist()

    def bytes_by_class(self, n: int) -> dict[str, float]:
        """Bytes per path class of the transfers among the first n items, without making records, summed in item
        order (as `Result.bytes_by_link_class` sums records)."""
        out: dict[str, float] = {}
        get = out.get
        for w in islice(self.work, n):
            if w[9] == "transfer":
                cls = w[12]
                out[cls] = get(cls, 0.0) + w[3]
        return out


def run_compiled(sim: Simulation, work: list[tuple], recs: list[Record], dones: list[simpy.Event],
                 routes: RouteTable, progress: Progress | None) -> RecordMaker:
    """Run `work` (the simulation's declared items, `Work` tuples; `dones` their events, `recs` the records made so
    far, of the first items) on the compiled loop, fill in the times of those records, and return the
    `RecordMaker` of the others' (made when asked for: `LazyRecords`, the events' values).
    `routes`: the simulation's routes by number."""
    loop = load_loop()
    a, roff, rres, rcoef, nengines = lower(work, routes)
    ot = _lowered_run(loop, sim.net, a, roff, rres, rcoef, nengines, progress=progress,
                      record=sim.net.on_load is not None, sim=sim)
    n = len(work)
    times = ot[:, 0], ot[:, 1], ot[:, 2]
    t0, t1, t2 = (t[:len(recs)].tolist() for t in times)
    for i, rec in enumerate(recs):
        rec.start_s, rec.begin_s, rec.finish_s = t0[i], t1[i], t2[i]
    maker = RecordMaker(recs, work, times)
    for done in dones:
        # the item's event counts as processed, its value (the record) made when asked for: a later procedure
        # that waits on it goes straight on. (A `_Declared`: its slots, without the properties; 10^6 events.)
        done._ok = True
        done._val = maker
        done._callbacks = None
    end = float(np.max(ot[:, 2])) if n else 0.0
    sim.env._now = max(sim.env.now, end)  # the clock stands where the simpy path would have left it
    return maker


def lower(work: list[tuple], routes: RouteTable) -> tuple[_ItemArrays, np.ndarray, np.ndarray, np.ndarray, int]:
    """The item arrays of `work`, and its routes as (offsets, resources, coefficients), numbered in order of first
    use by content (as `FluidNetwork` numbers them), and the number of engines (numbered in order of first use)."""
    n = len(work)
    a = _ItemArrays(n)
    if n == 0:
        return a, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), 0
    # numbers straight into arrays (no list of 10^6 floats per column), the rest as lists
    a.istart[:], a.ilat[:], a.ibytes[:], a.iw[:] = (np.fromiter(map(itemgetter(k), work), np.float64, n)
                                                    for k in (0, 1, 3, 4))
    route = np.fromiter(map(itemgetter(2), work), np.int64, n)
    cap, engine, deps = ([w[k] for w in work] for k in (5, 6, -1))
    flow = route >= 0
    a.ikind[:] = ~flow
    a.ibytes[~flow] = 0.0
    a.iw[~flow] = 1.0
    a.icap[:] = [np.inf if c is None else c for c in cap]
    engines: dict[str, int] = {}
    a.ieng[:] = [-1 if e is None else engines.setdefault(e, len(engines)) for e in engine]
    # routes: the simulation numbers each distinct path's resources once, so number by content = renumber its
    # numbers in order of first use by an item with a flow
    used, first = np.unique(route[flow], return_index=True)
    used = used[np.argsort(first, kind="stable")]
    number = np.zeros(len(routes), np.int64)
    number[used] = np.arange(len(used))
    a.iroute[flow] = number[route[flow]]
    roff, rres, rcoef = routes.gather(used)
    # dependencies: successors in CSR, each item's successors in item order (a stable sort of the waits by the
    # item waited for)
    a.nleft[:] = np.fromiter(map(len, deps), np.int64, n)
    waited = np.fromiter(chain.from_iterable(deps), np.int64, int(a.nleft.sum()))
    waiter = np.repeat(np.arange(n, dtype=np.int64), a.nleft)
    np.cumsum(np.bincount(waited, minlength=n), out=a.soff[1:])
    a.succ = waiter[np.argsort(waited, kind="stable")]
    return a, roff, rres, rcoef, len(engines)


def _lowered_run(loop, net, a: _ItemArrays, roff, rres, rcoef, nengines: int, *, progress: Progress | None = None,
                 record: bool = False, sim: Simulation | None = None) -> np.ndarray:
    """Drive the resumable loop to the end, growing arrays on request; returns the (start, begin, finish) table."""
    n = len(a.ikind)
    if net.active or net._ctr[L.N_ACTIVE]:
        # the loop numbers routes its own way (and keeps its own free lists): classes the simpy path left
        # running could be joined by flows of another route
        raise RuntimeError("the compiled loop needs a network with no flows running")
    width = int(np.max(np.diff(roff))) if len(roff) > 1 else 1
    nflows = int(np.count_nonzero(a.ikind == 0))
    slots = max(64, min(nflows, 1024))
    if slots > net._fn.shape[0] or width > net._width:
        net._grow_flows(max(slots, net._fn.shape[0]), max(width, net._width))
    slots = net._fn.shape[0]
    ot = np.full((n, 3), np.nan)
    ek = np.empty(n + 1)
    ei = np.empty((n + 1, 3), np.int64)
    rq = np.empty(2 * n + 1, np.int64)
    eholder = np.full(max(nengines, 1), -1, np.int64)
    ehead = np.full(max(nengines, 1), -1, np.int64)
    etail = np.full(max(nengines, 1), -1, np.int64)
    egrant = np.zeros(max(nengines, 1), np.int8)
    gl = np.zeros(max(nengines, 1), np.int64)
    eqnext = np.full(n, -1, np.int64)
    eqprev = np.full(n, -1, np.int64)
    slot_item = np.full(slots, -1, np.int64)
    free = np.arange(slots - 1, -1, -1, dtype=np.int64)
    seeds = np.empty(slots, np.int64)
    closed = np.empty(slots, np.int64)
    nlog = 4096 if record else 1
    lt, lr, lv = np.empty(nlog), np.empty(nlog, np.int64), np.empty(nlog)
    st = np.zeros(loop.NST, np.int64)
    st[loop.S_NFREE] = slots
    st[loop.S_RECORD] = int(record)
    sf = np.zeros(loop.NSF)
    sf[loop.F_WAKE] = np.inf
    rclass = np.full(max(len(roff) - 1, 1), -1, np.int64)  # the loop's route numbers -> open class
    while True:
        status = loop.run(a.ikind, a.istart, a.ilat, a.ibytes, a.iw, a.icap, a.iroute, a.ieng, a.nleft, a.soff,
                          a.succ, roff, rres, rcoef, ot, ek, ei, rq, eholder, ehead, etail, eqnext, eqprev, egrant,
                          gl, slot_item, free, seeds, closed, lt, lr, lv, st, sf, STEPS_PER_CALL,
                          net._fres, net._fcoef, net._fn, net._ff, net._fi, net._rf, net._ri, net._inc_next,
                          net._inc_prev, net._rloc, net._fmark, net._rmark, net._rstack, net._comp, net._hk,
                          net._hi, net._ctr, net._finished, net._fchanged, net._rchanged, net._rcmark, net._mf,
                          net._mi, rclass, net._cfree, net._touched, net._xi, net._xf)
        if status == loop.DONE:
            break
        if status == loop.YIELD:
            if progress is not None:
                progress.tick(float(sf[loop.F_NOW]), net.events + int(st[loop.S_EVENTS]), int(st[loop.S_ACTIVE]),
                              done=int(st[loop.S_FINISHED]), total=n)
        elif status == loop.NEED_SLOTS:
            old = slots
            net._grow_flows(2 * old, net._width)
            slots = net._fn.shape[0]
            nfree = int(st[loop.S_NFREE])
            free = np.concatenate([free[:nfree], np.arange(slots - 1, old - 1, -1, dtype=np.int64),
                                   np.zeros(old - nfree, np.int64)])
            st[loop.S_NFREE] = nfree + slots - old
            slot_item = np.concatenate([slot_item, np.full(slots - old, -1, np.int64)])
            seeds = np.concatenate([seeds, np.empty(slots - old, np.int64)])
            closed = np.concatenate([closed, np.empty(slots - old, np.int64)])
        elif status == loop.NEED_HEAP:
            _heap_room(loop, net, int(st[loop.S_ACTIVE]))
        elif status == loop.NEED_LOG:
            m = int(st[loop.S_NLOG])
            _flush_log(sim, lt[:m], lr[:m], lv[:m])
            st[loop.S_NLOG] = 0
            size = 2 * len(net._rf)
            if len(lt) < size:
                lt, lr, lv = np.empty(size), np.empty(size, np.int64), np.empty(size)
    if record:
        m = int(st[loop.S_NLOG])
        _flush_log(sim, lt[:m], lr[:m], lv[:m])
    net.events += int(st[loop.S_EVENTS])
    return ot


def _heap_room(loop, net, active: int) -> None:
    """Room in the finish heap for one entry per active flow (compact first, grow if that is not enough)."""
    need = int(net._ctr[L.HSIZE]) + active + 1
    if need <= net._hk.shape[0]:
        return
    from ._fluidcore import compact_heap

    compact_heap(net._hk, net._hi, net._fi, net._ctr)
    need = int(net._ctr[L.HSIZE]) + active + 1
    if need > len(net._hk) // 2:
        size = max(2 * len(net._hk), 2 * need)
        hk, hi = np.empty(size), np.empty((size, 3), np.int64)
        k = int(net._ctr[L.HSIZE])
        hk[:k], hi[:k] = net._hk[:k], net._hi[:k]
        net._hk, net._hi = hk, hi


def _flush_log(sim: Simulation | None, lt: np.ndarray, lr: np.ndarray, lv: np.ndarray) -> None:
    """Hand logged load changes to the simulation's recorder, exactly as the simpy path reports them."""
    if sim is None or not len(lt):
        return
    on_load = sim.net.on_load
    for t, r, v in zip(lt.tolist(), lr.tolist(), lv.tolist(), strict=True):
        on_load(t, {r: max(0.0, v)})
