"""Flow-level (fluid) bandwidth sharing: max-min fair rates by progressive filling, on a simpy clock.

A `Flow` moves `bytes` over a route of resources, drawing `coeff x rate` on each (a local HBM copy reads and
writes, so it draws 2x its rate on the HBM cap). Rates are weighted max-min fair with optional per-flow caps:
the progressive-filling level rises for every unfrozen flow (rate = weight x level) until a resource is full
or a flow hits its cap; those flows freeze and the rest go on. At every arrival and departure only the
*connected component* of the flow-resource graph that the change touches is recomputed, because max-min
allocations of disjoint components are independent; other flows keep their rates and finish-time events.

The per-event work (component search, the max-min solve, finish-time heap) runs compiled over persistent
arrays in `simcore._fluidcore`; this module owns those arrays and the simpy side: one pending simpy timeout
wakes the network at the earliest finish, and the arrivals and departures of one instant share one solve.
Floating-point dust is handled in two places: flows whose predicted finish lies within a relative 1e-12 of the
wake-up time finish together, and a flow with fewer than 1e-9 of its bytes left counts as done, so ties never
cause zero-time event loops.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import simpy

from . import _fluidlayout as L
from .clock import timeout_at

_core: ModuleType | None = None
_NO_SLOTS = np.zeros(0, np.int64)


# A load of compiled code that takes longer than this compiled it (loading the cache takes about a second): the
# engine announces compiling past it, and a sweep's summary says that time apart (`harness.sweep`)
COMPILE_NOTICE_S = 2.0


def load_core() -> ModuleType:
    """The compiled core (`simcore._fluidcore`), imported on first use rather than with `simcore`.

    Importing it costs about a second (numba, and loading the cached machine code); the first import on a
    machine compiles it, about 25-30 s on a 2-core VM (`benchmarks/compile_time.py`), announced on stderr when it
    takes that long. A process pool should call this before forking, so workers inherit the compiled code instead
    of each compiling it.
    """
    global _core
    if _core is None:
        _drop_stale_machine_code()
        notice = threading.Timer(COMPILE_NOTICE_S, lambda: print(
            "fabricsim: compiling the fluid engine (once per install, about 30 s)...", file=sys.stderr, flush=True))
        notice.daemon = True
        notice.start()
        try:
            from . import _fluidcore
        finally:
            notice.cancel()
        _core = _fluidcore
    return _core


def solver_mode() -> int:
    """How the core re-solves after a change (`FABRICSIM_SOLVER`): `incremental` (the default) re-rates a region
    and checks it, falling back to the classes above the instant's floor level; `floor` always solves those;
    `full` solves the whole component (the reference path the tests compare against)."""
    mode = os.environ.get("FABRICSIM_SOLVER", "incremental")
    modes = {"incremental": L.INCREMENTAL, "full": L.FULL, "floor": L.FLOOR}
    if mode not in modes:
        raise ValueError(f"FABRICSIM_SOLVER={mode!r}: expected one of {', '.join(map(repr, modes))}")
    return modes[mode]


_COMPILED = ("_fluidlayout.py", "_maxmin.py", "_fluidcore.py", "_eventloop.py")


def _drop_stale_machine_code() -> None:
    """Delete numba's cached machine code of the core and the event loop when any of their sources changed.

    numba keys a cached function on its own file only: the event loop inlines the core's functions, and
    both bake in the layout's constants, so an edited `_maxmin.py`, `_fluidcore.py` or `_fluidlayout.py` would
    otherwise leave the loop running old code. One digest of the four sources, kept beside the cache, decides. A
    read-only install (nothing can change there) is left alone."""
    here = Path(__file__).parent
    cache = here / "__pycache__"
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in _COMPILED)).hexdigest()
    stamp = cache / "fabricsim-jit.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for name in _COMPILED[1:]:
            for f in cache.glob(f"{name[:-3]}.*.nb[ic]"):
                f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:
        pass


_I64, _F64 = np.dtype(np.int64), np.dtype(np.float64)


def _core_array(a: Sequence, dtype: np.dtype) -> np.ndarray:
    """`a` as the contiguous writable array of `dtype` the compiled core takes: the simulator's cached routes
    pass through as they are (checked by attribute, ~10x cheaper than `np.require`, which a 1,024-GPU sync calls
    10^6 times), anything else is converted or copied."""
    if type(a) is np.ndarray and a.dtype == dtype:
        flags = a.flags
        if flags.c_contiguous and flags.writeable:
            return a
    return np.require(a, dtype, "CW")


class Flow:
    """One fluid flow. `res` are resource indices, `coef` their coefficients (same length, no repeats)."""

    __slots__ = ("key", "res", "coef", "weight", "cap", "bytes", "remaining", "done", "segments", "slot")

    def __init__(self, key: object, res: Sequence[int], coef: Sequence[float], nbytes: float,
                 weight: float = 1.0, cap: float | None = None, record: bool = False) -> None:
        self.key = key
        # the compiled core takes contiguous writable arrays: a read-only or strided one is copied, the
        # simulator's cached routes pass through as they are
        self.res = _core_array(res, _I64)
        self.coef = _core_array(coef, _F64)
        if len(self.res) != len(self.coef):
            raise ValueError(f"flow {key!r}: {len(self.res)} resources but {len(self.coef)} coefficients")
        self.weight = float(weight)
        self.cap = cap
        self.bytes = float(nbytes)
        self.remaining = float(nbytes)  # set to 0 when the flow finishes (the live value is its target less
        # its class's clock, in the network)
        self.done: simpy.Event | None = None
        self.segments: list[tuple[float, float]] | None = [] if record else None
        self.slot = -1


def _check_route(core: ModuleType, flow: Flow, nres: int) -> None:
    """Reject a route the compiled core cannot take safely (it does no bounds checks)."""
    bad = core.bad_route_entry(flow.res, flow.coef, nres)
    if bad >= 0:
        raise ValueError(f"flow {flow.key!r}: route entry {bad} (resource {flow.res[bad]}, coefficient "
                         f"{flow.coef[bad]}) is not a resource 0..{nres - 1} with a positive finite coefficient")


def max_min_rates(flows: Sequence[Flow], capacity: Sequence[float],
                  binding: Sequence[bool] | None = None) -> tuple[list[float], dict[int, float]]:
    """Weighted max-min fair rates of `flows`, and the load this puts on each resource they touch.

    The same compiled solver the network uses (see `_maxmin.max_min`), on a one-off copy of the flows;
    for tests and notebooks. `binding`, if given, marks the resources that can bind; the others are left out.
    """
    core = load_core()
    for f in flows:
        _check_route(core, f, len(capacity))
    n = len(flows)
    width = max((len(f.res) for f in flows), default=0)
    fres = np.zeros((n, max(width, 1)), np.int64)
    fcoef = np.zeros((n, max(width, 1)))
    fn = np.zeros(n, np.int64)
    ff = np.zeros((n, L.NFF))
    for s, f in enumerate(flows):
        fn[s] = len(f.res)
        fres[s, :fn[s]] = f.res
        fcoef[s, :fn[s]] = f.coef
        ff[s, L.W] = f.weight
        ff[s, L.CAP] = np.inf if f.cap is None else f.cap
    rf = np.zeros((len(capacity), L.NRF))
    rf[:, L.RCAP] = capacity
    ri = np.zeros((len(capacity), L.NRI), np.int64)
    ri[:, L.BINDING] = 1 if binding is None else np.asarray(binding, dtype=np.int64)
    rates = np.zeros(n)
    nxi, nxf = L.scratch_sizes(n, max(width, 1))
    core.max_min(np.arange(n, dtype=np.int64), n, fres, fcoef, fn, ff, rf, ri,
                 np.full(len(capacity), -1, np.int64), rates, L.RCAP, np.empty(n, np.int64), np.empty(nxi, np.int64),
                 np.empty(nxf))
    load: dict[int, float] = {}
    for f, rate in zip(flows, rates.tolist(), strict=True):
        for r, c in zip(f.res.tolist(), f.coef.tolist(), strict=True):
            load[r] = load.get(r, 0.0) + c * rate
    return rates.tolist(), load


class _EndOfInstant(simpy.Event):
    """An event that fires at the current time after every normal-priority event of this instant, including those
    they schedule in turn (simpy orders one instant's events by priority, then by creation)."""

    PRIORITY = 2  # simpy's own events use URGENT = 0 and NORMAL = 1

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, self.PRIORITY)


class FluidNetwork:
    """Active flows on shared resources, advanced by a simpy environment.

    Slack resources are pruned: each flow has an upper bound `ub` (its rate cap, or its lone bottleneck
    capacity / coefficient), and a resource whose flows could not fill it even all at their upper bounds
    (sum of coeff x ub < capacity) can never bind. Such resources neither join flows into one component nor
    enter the max-min computation, which is exact and keeps components small where a wide resource (HBM, a
    switch) touches many flows that are limited elsewhere. Resource loads are tracked incrementally from rate
    changes, for the utilisation records.

    Flows with one route, weight and cap running at once share a route class, which the solver sees as one
    flow (its upper bound is the class's); each flow keeps a member slot, each class a class slot.

    State lives in arrays (see `_fluidcore` for the layout) that grow by doubling: member and class slots are
    reused after a flow (a class) finishes, and the route width grows to the longest route seen.
    """

    def __init__(self, env: simpy.Environment, capacity: Sequence[float],
                 on_load: Callable[[float, dict[int, float]], None] | None = None) -> None:
        self._c = load_core()
        self.env = env
        self.capacity = [float(c) for c in capacity]
        self.on_load = on_load  # called with (now, {resource: new load}) whenever loads change
        nr = len(self.capacity)
        self._rf = np.zeros((nr, L.NRF))
        self._rf[:, L.RCAP] = self.capacity
        self._ri = np.zeros((nr, L.NRI), np.int64)
        self._ri[:, L.HEAD] = -1
        self._rloc = np.full(nr, -1, np.int64)
        self._rmark = np.zeros(nr, np.int8)
        self._rcmark = np.zeros(nr, np.int8)
        self._rstack = np.empty(nr, np.int64)
        self._rchanged = np.empty(nr, np.int64)
        self._ctr = np.zeros(L.NCTR, np.int64)
        self._ctr[L.MODE] = solver_mode()
        self._ctr[L.REGION_PCT] = L.REGION_SHARE_PCT
        self._rclass = np.full(16, -1, np.int64)  # route number -> its open class slot (see _fluidlayout)
        self._hk = np.empty(64)
        self._hi = np.empty((64, 3), np.int64)
        # flow tables start empty and grow (see _grow_flows)
        self._fres = np.zeros((0, 0), np.int64)
        self._fcoef = np.zeros((0, 0))
        self._fn = np.zeros(0, np.int64)
        self._ff = np.zeros((0, L.NFF))
        self._fi = np.zeros((0, L.NFI), np.int64)
        self._inc_next = np.zeros(0, np.int64)
        self._inc_prev = np.zeros(0, np.int64)
        self._mf = np.zeros((0, L.NMF))
        self._mi = np.zeros((0, L.NMI), np.int64)
        self._cfree = np.zeros(0, np.int64)
        self._flows: list[Flow | None] = []  # by member slot
        self._width = 0
        self._grow_flows(64, 4)
        self._free: list[int] = []
        self._next_slot = 0
        self._recorded: dict[int, Flow] = {}  # class slot -> the flow recording its rate (a class of its own)
        self._wake_at = float("inf")
        self._wake_ev: simpy.Event | None = None
        self._route_numbers: dict[tuple[bytes, bytes], int] = {}
        self._pending: list[int] = []  # classes flows joined at this instant
        self._survivors = _NO_SLOTS  # classes the instant's departures handed over for re-solving
        self._flush_scheduled = False
        self._active = 0
        self.events = 0  # arrivals + departures processed (for benchmarks)
        self.on_progress: Callable[[float, int, int], None] | None = None  # (now, events, active), now and then
        self._wakes = 0

    @property
    def active(self) -> int:
        return self._active

    def start(self, flow: Flow) -> simpy.Event:
        """Add a flow now; the returned event fires when its last byte arrives."""
        _check_route(self._c, flow, len(self.capacity))
        done = self.env.event()
        if flow.remaining <= 0:
            return done.succeed(flow)
        flow.done = done  # until it finishes: an event whose value is its flow, kept by the flow, is a reference
        # cycle, which only the cyclic collector frees (one per finished flow: 3,320 in a 60-request serving run)
        s = self._slot_for(len(flow.res))
        self._flows[s] = flow
        flow.slot = s
        record = flow.segments is not None
        route = -1 if record else self._route_number(flow)
        c = self._c.join(s, flow.res, flow.coef, route, flow.weight, np.inf if flow.cap is None else flow.cap,
                         flow.bytes, self.env.now, self._fres, self._fcoef, self._fn, self._ff, self._fi, self._rf,
                         self._ri, self._inc_next, self._inc_prev, self._mf, self._mi, self._rclass, self._cfree,
                         self._ctr)
        if record:
            self._recorded[c] = flow
        self._active += 1
        self.events += 1
        self._pending.append(c)
        self._flush_later()
        return done

    # -- internals --------------------------------------------------------------------------------------
    def _route_number(self, flow: Flow) -> int:
        """One number per distinct route (resources and coefficients), so the solver can group flows by class.
        Keyed by content, not array identity: a freed array's id can be reused by another route."""
        key = (flow.res.tobytes(), flow.coef.tobytes())
        number = self._route_numbers.get(key)
        if number is None:
            number = self._route_numbers[key] = len(self._route_numbers)
            if number == len(self._rclass):
                self._rclass = np.concatenate([self._rclass, np.full(number, -1, np.int64)])
        return number

    def _grow_flows(self, slots: int, width: int) -> None:
        """Reallocate the flow arrays for `slots` slots of route width `width`, keeping every slot's state.

        Incidences are numbered slot x width + k, so a wider route renumbers them and the per-resource flow
        lists are rebuilt (rare: the width only grows to the longest route seen); more slots just extend them.
        """
        def grown(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
            b = np.zeros(shape, a.dtype)
            b[tuple(slice(0, m) for m in a.shape)] = a
            return b

        old_slots, old_width = self._fn.shape[0], self._width
        self._fres = grown(self._fres, (slots, width))
        self._fcoef = grown(self._fcoef, (slots, width))
        self._fn = grown(self._fn, (slots,))
        self._ff = grown(self._ff, (slots, L.NFF))
        self._fi = grown(self._fi, (slots, L.NFI))
        self._mf = grown(self._mf, (slots, L.NMF))
        self._mi = grown(self._mi, (slots, L.NMI))
        # class slots: the new ones join the free stack under the free old ones
        nfree = int(self._ctr[L.NCFREE])
        self._cfree = np.concatenate([np.arange(slots - 1, old_slots - 1, -1, dtype=np.int64),
                                      self._cfree[:nfree], np.zeros(old_slots - nfree, np.int64)])
        self._ctr[L.NCFREE] = nfree + slots - old_slots
        self._touched = np.empty(slots, np.int64)
        self._fmark = np.zeros(slots, np.int8)
        self._comp = np.empty(slots, np.int64)
        self._finished = np.empty(slots, np.int64)
        self._fchanged = np.empty(slots, np.int64)
        nxi, nxf = L.scratch_sizes(slots, width)  # what a solve carves its tables from (no solve allocates)
        self._xi, self._xf = np.empty(nxi, np.int64), np.empty(nxf)
        self._flows.extend([None] * (slots - old_slots))
        self._width = width
        if width == old_width:
            self._inc_next = grown(self._inc_next, (slots * width,))
            self._inc_prev = grown(self._inc_prev, (slots * width,))
            self._inc_next[old_slots * width:] = -1
            self._inc_prev[old_slots * width:] = -1
        else:
            self._inc_next = np.full(slots * width, -1, np.int64)
            self._inc_prev = np.full(slots * width, -1, np.int64)
            self._c.relink(self._fres, self._fn, self._fi, self._ri, self._inc_next, self._inc_prev)

    def _slot_for(self, width: int) -> int:
        """A free flow slot, growing the arrays (slots or route width) when needed."""
        if width > self._width:
            self._grow_flows(self._fn.shape[0], max(width, 2 * self._width))
        if self._free:
            return self._free.pop()
        if self._next_slot == self._fn.shape[0]:
            self._grow_flows(2 * self._fn.shape[0], self._width)
        s = self._next_slot
        self._next_slot += 1
        return s

    def _heap_room(self) -> None:
        """Make sure the finish heap can take one entry per active flow (one call pushes at most that many)."""
        need = int(self._ctr[L.HSIZE]) + self._active + 1
        if need <= self._hk.shape[0]:
            return
        self._c.compact_heap(self._hk, self._hi, self._fi, self._ctr)
        need = int(self._ctr[L.HSIZE]) + self._active + 1
        if need > len(self._hk) // 2:  # keep room to spare, so compaction stays rare
            size = max(2 * len(self._hk), 2 * need)
            hk, hi = np.empty(size), np.empty((size, 3), np.int64)
            n = int(self._ctr[L.HSIZE])
            hk[:n], hi[:n] = self._hk[:n], self._hi[:n]
            self._hk, self._hi = hk, hi

    def _flush_later(self) -> None:
        """One solve per instant: arrivals and departures at one simulated time mark flows dirty, and a single
        flush, ordered after every other event of that instant (a lower simpy priority), re-solves them all.
        A procedure that launches 64 chunks at t=0 costs one max-min solve, not 64 growing ones, and a
        departure plus the transfers it releases cost one, not two. Until the flush (same simulated time) a new
        flow's rate is 0 and survivors of a departure keep their rates, so no byte is misplaced."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            _EndOfInstant(self.env).callbacks.append(self._flush)

    def _flush(self, _ev: simpy.Event) -> None:
        self._flush_scheduled = False
        seeds = np.array(self._pending, dtype=np.int64)
        closed, self._survivors = self._survivors, _NO_SLOTS
        self._pending = []
        self._heap_room()
        nfch, nrch, t = self._c.arrive(
            closed, len(closed), seeds, len(seeds), self.env.now, self._fres, self._fcoef, self._fn, self._ff,
            self._fi, self._rf, self._ri, self._inc_next, self._rloc, self._fmark, self._rmark, self._rstack,
            self._comp, self._hk, self._hi, self._ctr, self._fchanged, self._rchanged, self._rcmark, self._mf,
            self._xi, self._xf)
        self._report(nfch, nrch)
        self._schedule(t)

    def _report(self, nfch: int, nrch: int) -> None:
        """Hand rate changes to the recorders: flows' rate segments and resources' loads (when asked for)."""
        now = self.env.now
        if self._recorded:
            rate = self._ff[:, L.RATE]  # a recorded flow is a class of its own: the class's rate is its rate
            for s in self._fchanged[:nfch].tolist():
                f = self._recorded.get(s)
                if f is not None:
                    segs = f.segments
                    if segs and segs[-1][0] == now:
                        segs.pop()  # several changes at one instant: keep the last
                    segs.append((now, float(rate[s])))
        if nrch and self.on_load is not None:
            load = self._rf[:, L.LOAD]
            self.on_load(now, {r: max(0.0, float(load[r])) for r in self._rchanged[:nrch].tolist()})

    def _schedule(self, t: float) -> None:
        """Make sure a wake-up is pending at the earliest finish time `t`."""
        if t < self._wake_at:
            self._wake_at = t = float(t)  # a Python float even when the core runs interpreted
            ev = timeout_at(self.env, t)
            ev.callbacks.append(self._wake)
            self._wake_ev = ev

    def _wake(self, ev: simpy.Event) -> None:
        if ev is not self._wake_ev:  # a stale wake-up: a later recomputation moved the earliest finish
            return
        self._wake_at = float("inf")
        self._wakes += 1
        if self.on_progress is not None and not self._wakes & 255:
            self.on_progress(self.env.now, self.events, self._active)
        self._heap_room()
        nfin, nfch, nrch, nsurv = self._c.depart(
            self.env.now, self._fres, self._fcoef, self._fn, self._ff, self._fi, self._rf, self._ri, self._inc_next,
            self._inc_prev, self._fmark, self._rmark, self._rstack, self._comp, self._hk, self._hi, self._ctr,
            self._finished, self._fchanged, self._rchanged, self._rcmark, self._mf, self._mi, self._rclass, self._cfree,
            self._touched)
        if nsurv < 0:  # nothing due after all
            self._schedule(self._c.next_finish(self._hk, self._hi, self._fi, self._ctr))
            return
        # read the finished slots before `on_load` runs: a flow it starts may grow (replace) the scratch arrays
        finished = self._finished[:nfin].tolist()
        self._survivors = self._comp[:nsurv].copy()
        self._flush_later()
        self._report(nfch, nrch)
        done = []
        for s in finished:
            f = self._flows[s]
            self._flows[s] = None
            self._free.append(s)
            f.remaining = 0.0
            c = int(self._mi[s, L.MCLASS])
            if f.segments is not None and self._recorded.get(c) is f:  # `on_load` may have reused the slot
                del self._recorded[c]
            done.append(f)
        self._active -= nfin
        self.events += nfin
        for f in done:
            ev, f.done = f.done, None
            ev.succeed(f)
