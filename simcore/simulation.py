"""`Simulation`: transfers, compute tasks and software delays on a topology, run on a simpy clock.

Two ways to describe work, freely mixed:
- declarative: `sim.transfer("t2", "gpu0", "gpu1", 256 << 20, start=1e-3, after=["t1"])` before `run()`;
- procedural: `sim.process(gen)` where the generator does `yield sim.transfer(...)` and reacts to what
  happened (bucketed pipelines, retries, serving loops).

Declared work is kept as `Work` items until `run()`. If nothing procedural happened (no `process()`, no
foreign event in `after`, nobody waiting on a returned event), the items are lowered to arrays and run by
the compiled event loop (`simcore.lowering`), ~10x faster per transfer; otherwise each becomes a simpy process,
in declaration order, the reference path. Both drive the same compiled solver and give the same answers
(tests compare them to 1e-9 relative).

Every transfer asks the topology for its `Path`, waits for its dependencies and start time, queues on its
engine if the path class is serialised (FIFO copy engine), pays the path latency plus any fixed mechanism
cost, then becomes a fluid flow whose rate the `FluidNetwork` shares max-min fairly. A lone transfer therefore
takes exactly latency + bytes / bandwidth. Compute tasks are roofline-costed and their HBM traffic is a flow
on the same HBM cap that copies draw on, so a memory-bound kernel and a copy slow each other down.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Generator, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import simpy
from simpy.events import PENDING

from fabricsim.errors import TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import MECHANISMS as FITTED_MECHANISMS
from fabricsim.hwmodels.topology import Path, PathShape, Topology, path_bandwidth_Bps

from .clock import timeout_at
from .engines import FifoEngine
from .errors import ScenarioError
from .fluid import Flow, FluidNetwork
from .gcpause import gc_paused
from .lowering import RecordMaker, record, run_compiled
from .memory import MemoryPool
from .progress import Progress
from .progress import enabled as progress_enabled
from .records import LazyRecords, Record, Result, unknown_id
from .routes import RouteTable
from .units import (
    MAX_BYTES,
    MAX_SECONDS,
    MAX_WEIGHT,
    MIN_RATE_BPS,
    MIN_WEIGHT,
    check_bytes,
    check_rate,
    check_seconds,
    check_weight,
    parse_bytes,
)

Dep = str | simpy.Event
LOOPS = ("auto", "compiled", "simpy")
# how a copy is done: the copy engine on pinned memory, or a mechanism a profile fits (`Topology.path`); a scenario
# file's `mechanism` is checked against this list too
MECHANISMS = ("ce", *FITTED_MECHANISMS)
ENDPOINT_NAMES = "host, gpuN, nvmeN, nodeK.gpuN"  # what an endpoint looks like, for errors that want one
_INF = float("inf")
_NO_CALLBACKS: tuple = ()  # a declared item's event before anyone asked for its callback list
_CALLBACK_LIST = operator.attrgetter("_callbacks")  # truthy where a callback was added (`_Declared.waited_on`)
_NAN = float("nan")
PROGRESS_EVERY = (1 << 12) - 1  # declared items between looks at the progress line (a mask)




class Simulation:
    """A run of transfers and tasks on one topology. Deterministic: same calls, same result.

    Ids name items (`after=`, `done`, `Result[id]`): any other value given as an id (`transfer(5, ...)`) is
    converted with str(), as a scenario file's ids are, and found again either way (`after=[5]` or `["5"]`)."""

    def __init__(self, topology: Topology | str | os.PathLike[str], *, record_load: bool = True,
                 record_rates: bool = False) -> None:
        """`topology`: a `Topology` (`presets.get(name)`, a topology file's `presets.load(path)`), or a preset name
        or topology file path, loaded by `presets.load` as every entry point loads one (a preset with its bundled
        calibration): `Simulation("h200-2")` is a natural first call."""
        if not isinstance(topology, Topology):
            topology = _topology_of(topology)
        self.topology = topology
        self.env = simpy.Environment()
        caps = topology.resources()
        self._res_names = list(caps)
        self._res_index = {name: i for i, name in enumerate(self._res_names)}
        self._load: dict[str, list[tuple[float, float]]] = {}
        self.net = FluidNetwork(self.env, [caps[n] for n in self._res_names],
                                on_load=partial(_record_load, self._res_names, self._load) if record_load else None)
        self._record_rates = record_rates
        self._done: dict[str, simpy.Event] = {}
        self._records: list[Record] = []  # in declaration order (ids: `_done`)
        self._flows: dict[str, Flow] = {}
        self._engines: dict[str, FifoEngine] = {}
        # Declared items, as `Work` tuples (see `lowering.Work`) in declaration order; their events are `_done`,
        # in the same order (every item is declared while `_deferred` is a list), and their records, made when
        # asked for (`_made`), `_records`. `_deferred` is None once anything runs procedurally; `_work` keeps the
        # list (for `rate_segments`).
        self._deferred: list[tuple] | None = []
        self._work: list[tuple] = self._deferred
        self._maker: RecordMaker | None = None  # a compiled run's, which makes its records when asked for
        self._memory: dict[str, MemoryPool] = {}
        # distinct routes (a path's resources -> number, resource numbers and coefficients)
        self._routes = RouteTable(self._res_index)
        # (src, dst, mechanism) -> the shape tuple `_shape` makes (route number last), while the topology's path
        # cache is the one they were built beside (`Topology._changed` starts a new one)
        self._shapes: dict[tuple[str, str, str], tuple] = {}
        self._shapes_of = topology._path_cache
        self._lone: dict[tuple[str, str], tuple[float, float]] = {}  # `lone_copy`'s, beside `_shapes`
        # the progress line, from the first declared item on: describing a large run takes seconds too
        self._progress = Progress() if progress_enabled() else None
        self._seq = 0

    # ---- describing work -------------------------------------------------------------------------------
    def transfer(self, id: str | None, src: str, dst: str, nbytes: float | str, *, start: float = 0.0,
                 after: Iterable[Dep] = (), rate_cap_Bps: float | None = None, weight: float = 1.0,
                 fixed_cost_s: float = 0.0, engine: str | None = None, tag: str | None = None,
                 mechanism: str = "ce", setup_s: float = 0.0, setup_id: str | None = None,
                 latencies: int = 1) -> simpy.Event:
        """Move `nbytes` from `src` to `dst`; returns the event that fires when the last byte lands. `mechanism`
        (`ce`, `pageable` or `sm`) picks how the copy is done (`Topology.path`); one the profile did not fit for
        the copy's path class takes the copy engine's parameters (`Topology.fits` says which: the CLI's "no fit"
        note). `after`: ids and events to wait for, each declared before this call; a lone id or event is a list
        of one, as a scenario file's `after: t1` is.

        `setup_s`: software work between `after` and the copy queueing on its engine (per-tensor handling, a
        pipeline's fill). Where the copy queues on no engine it is part of its latency, one item; where it does, a
        delay (`setup_id`, default `<id>.setup`) the copy waits for: a fixed cost is paid holding the engine.

        `latencies`: how many times the copy pays its route's latency (for its mechanism), where it stands for that
        many real copies in a row (a coarsened bucket or pipeline task: each real one pays its own), or 0 where it
        rides behind an earlier copy on its route whose latency it overlaps (a ring's later chunks)."""
        self._seq += 1
        seq = self._seq
        rid = f"t{seq}" if id is None else str(id)
        if rid in self._done:
            raise ScenarioError(f"duplicate id '{rid}'")
        # The arguments most calls pass (plain finite numbers in range) are let through by these tests alone;
        # anything else takes the full checks, which convert or name what is wrong, in the same order as ever.
        tb = type(nbytes)
        if not ((tb is int or tb is float) and 0 < nbytes <= MAX_BYTES
                and _plain_cap(rate_cap_Bps)
                and type(weight) is float and MIN_WEIGHT <= weight <= MAX_WEIGHT
                and type(fixed_cost_s) is float and 0.0 <= fixed_cost_s <= MAX_SECONDS
                and type(start) is float and 0.0 <= start <= MAX_SECONDS):
            nbytes, rate_cap_Bps, weight, fixed_cost_s, start = _check_transfer(
                rid, nbytes, rate_cap_Bps, weight, fixed_cost_s, start)
        if self.topology._path_cache is not self._shapes_of:  # tested here: this runs once per transfer
            self._keep_current()
        try:
            shape = self._shapes.get((src, dst, mechanism))
        except TypeError:  # an unhashable endpoint or mechanism: `_shape` names it
            shape = None
        if shape is None:
            shape = self._shape(rid, src, dst, mechanism)
        psrc, pdst, cls, nodes, latency, cap, sized, path_engine, route = shape
        cap = _copy_cap(cap, sized, nbytes, rate_cap_Bps)
        engine = engine or path_engine
        if latencies != 1:
            latency *= _check_latencies(f"transfer '{rid}'", latencies)
        latency += fixed_cost_s
        if setup_s:
            if not (type(setup_s) is float and 0.0 < setup_s <= MAX_SECONDS):
                setup_s = check_seconds(_plain(setup_s), f"transfer '{rid}': setup")
            if engine is None:
                latency += setup_s
            else:
                # from `start` too, as where no engine queues (then it is part of the latency)
                after = [self.delay(setup_id or f"{rid}.setup", setup_s, start=start, after=after, tag=tag)]
        deferred = self._deferred
        if deferred is not None and (type(after) is list or type(after) is tuple):
            # declared work (the usual case), as `_add` keeps it, without the call
            deps = self._dep_indices(rid, after) if after else ()
            if deps is not None:
                n = len(deferred)
                done = _Declared(self.env, n)
                deferred.append((start, latency, route, float(nbytes), weight, cap, engine, seq, rid,
                                 "transfer", psrc, pdst, cls, nodes, tag, 0.0, deps))
                self._done[rid] = done
                if not n & PROGRESS_EVERY and n and self._progress is not None:
                    self._progress.declaring(n)
                return done
        return self._add((start, latency, route, float(nbytes), weight, cap, engine, seq, rid, "transfer",
                          psrc, pdst, cls, nodes, tag, 0.0), after)

    def transfers(self, copies: Iterable[tuple], *, after: Iterable[Dep] = (), lanes: int = 0,
                  tag: str | None = None, rate_cap_Bps: float | None = None, mechanism: str = "ce",
                  latencies: int = 1) -> list[simpy.Event]:
        """Many transfers at once, in order: each of `copies` is (id, src, dst, nbytes) or (id, src, dst, nbytes,
        setup_s, setup_id), declared exactly as `transfer(id, src, dst, nbytes, after=..., tag=tag,
        rate_cap_Bps=rate_cap_Bps, mechanism=mechanism, setup_s=setup_s, setup_id=setup_id)` would be, where
        every copy waits for `after`, or with `lanes` > 0 only the first `lanes` do and copy n waits for copy
        n - lanes (at most `lanes` in flight, each lane in order: how a static schedule issues its copies).
        `latencies`: as `transfer`'s, for every copy. Returns their events.

        Why: a 1,024-GPU sync declares millions of copies, and a call per copy (its keyword arguments, checks
        and dependency lookup) cost about as much as the rest of declaring it; here the shared arguments are
        looked at once. The first copy, and any off the usual path (procedural work, an id that is not a new
        string, a size or setup that needs its full checks, a rate cap that is not a plain float, a setup on a
        queued engine), is handed to `transfer` itself, so results and errors are the same. A copy that is not a
        tuple or list of 4 to 6 fields is refused before anything is declared."""
        copies = copies if type(copies) is list else list(copies)
        if type(after) is not list and type(after) is not tuple:
            after = _dep_list("transfers", after)
        if type(lanes) is not int or lanes < 0:
            raise ScenarioError(f"transfers: lanes must be a whole number >= 0, got {lanes!r}")
        _check_latencies("transfers", latencies)
        _check_copies(copies)
        if not copies:
            return []
        # copy 0 takes `transfer` itself: `after` is checked, and named in an error, as its own call would
        out = self._transfers_one_by_one(copies[:1], after, lanes, tag, rate_cap_Bps, mechanism, latencies=latencies)
        deferred = self._deferred
        if deferred is None or not _plain_cap(rate_cap_Bps):
            # procedural, or a rate cap that needs its checks: one call per copy
            return self._transfers_one_by_one(copies, after, lanes, tag, rate_cap_Bps, mechanism, out, latencies)
        deps = self._dep_indices("transfers", after) if after else ()  # (copy 0's call found every one)
        self._keep_current()
        shapes, done_map, env, progress = self._shapes, self._done, self.env, self._progress
        append, put = deferred.append, out.append
        capped = rate_cap_Bps is not None
        for n in range(1, len(copies)):
            c = copies[n]
            if len(c) == 4:
                rid, src, dst, nbytes = c
                setup_s = 0.0
            else:
                rid, src, dst, nbytes, setup_s = c[0], c[1], c[2], c[3], c[4]
            tb = type(nbytes)
            try:
                shape = shapes.get((src, dst, mechanism))
            except TypeError:  # an unhashable endpoint: `transfer` names it
                shape = None
            if (type(rid) is not str or rid in done_map or not ((tb is int or tb is float) and 0 < nbytes <= MAX_BYTES)
                    or (setup_s and not (type(setup_s) is float and 0.0 < setup_s <= MAX_SECONDS
                                         and shape is not None and shape[7] is None))):
                # (a setup on a queued engine is a delay item of its own; an unseen pair's shape says if it queues)
                put(self._transfer_copy(copies, n, out, after, lanes, tag, rate_cap_Bps, mechanism, latencies))
                continue
            self._seq += 1
            if shape is None:  # (a copy with a setup took `transfer` above: its shape says if it queues)
                shape = self._shape(rid, src, dst, mechanism)
            psrc, pdst, cls, nodes, latency, cap, sized, engine, route = shape
            latency *= latencies
            if sized is not None or capped:
                cap = _copy_cap(cap, sized, nbytes, rate_cap_Bps)
            k = len(deferred)
            done = _Declared(env, k)
            # `transfer`'s declared item, field for field (tests/test_transfers_bulk.py compares them); `transfer`
            # adds its fixed cost to the latency: a local copy's latency (an int 0) becomes a float
            append((0.0, latency + setup_s if setup_s else latency + 0.0, route, float(nbytes), 1.0, cap, engine,
                    self._seq, rid, "transfer", psrc, pdst, cls, nodes, tag, 0.0,
                    deps if not lanes or n < lanes else (out[n - lanes].item,)))
            done_map[rid] = done
            put(done)
            if not k & PROGRESS_EVERY and k and progress is not None:
                progress.declaring(k)
        return out

    def _transfers_one_by_one(self, copies: list[tuple], after: Sequence[Dep], lanes: int, tag: str | None,
                              rate_cap_Bps: float | None, mechanism: str, out: list | None = None,
                              latencies: int = 1) -> list[simpy.Event]:
        """`transfers` as one `transfer` call per copy (its definition); `out`: the events of the first copies,
        declared already (they are extended with the rest)."""
        out = [] if out is None else out
        for n in range(len(out), len(copies)):
            out.append(self._transfer_copy(copies, n, out, after, lanes, tag, rate_cap_Bps, mechanism, latencies))
        return out

    def _transfer_copy(self, copies: list[tuple], n: int, out: list, after: Sequence[Dep], lanes: int,
                       tag: str | None, rate_cap_Bps: float | None, mechanism: str, latencies: int = 1
                       ) -> simpy.Event:
        """Copy n of `transfers` by its own `transfer` call (`out`: the events of the copies before it)."""
        c = copies[n]
        return self.transfer(c[0], c[1], c[2], c[3], after=after if not lanes or n < lanes else [out[n - lanes]],
                             tag=tag, rate_cap_Bps=rate_cap_Bps, mechanism=mechanism,
                             setup_s=c[4] if len(c) > 4 else 0.0, setup_id=c[5] if len(c) > 5 else None,
                             latencies=latencies)

    def task(self, id: str | None, gpu: str, *, flops: float = 0.0, hbm_bytes: float = 0.0, dtype: str = "bf16",
             start: float = 0.0, after: Iterable[Dep] = (), tag: str | None = None) -> simpy.Event:
        """A kernel on `gpu`, roofline-costed: max(flops / peak[dtype], hbm_bytes / HBM bandwidth).

        Its HBM traffic is a flow on the GPU's HBM cap, capped at the rate the roofline allows, so copies to or
        from that GPU and this kernel share HBM bandwidth.
        """
        rid = self._new_id(id, "k")
        flops = _check_flops(_plain(flops), f"task '{rid}': flops")
        hbm_bytes = check_bytes(_plain(hbm_bytes), f"task '{rid}': bytes", allow_zero=True, whole=False)
        start = check_seconds(_plain(start), f"task '{rid}': start")
        try:
            node = self.topology.resolve(gpu)
            spec = self.topology.gpu(node)
            peak = spec.flops_per_s(dtype)
        except TopologyError as exc:
            raise ScenarioError(f"task '{rid}': {exc}") from None
        t_compute = flops / peak
        if t_compute > MAX_SECONDS:  # a typo or a wrong unit, as a size beyond 1 EiB is (`units`)
            raise ScenarioError(f"task '{rid}': {flops:g} flops would take {t_compute:.3g} s on {node}, beyond "
                                f"10^9 s")
        hbm = f"{node}.hbm"
        if hbm_bytes > 0 and hbm in self._res_index:
            t_mem = hbm_bytes / self.net.capacity[self._res_index[hbm]]
            cap = hbm_bytes / max(t_compute, t_mem)
            latency, route = 0.0, self._routes.number(((hbm, 1.0),))
        else:
            cap, latency, route = None, t_compute, -1
        return self._add((start, latency, route, float(hbm_bytes), 1.0, cap, None, self._seq, rid, "task", node, node,
                          "", (), tag, float(flops)), after)

    def delay(self, id: str | None, seconds: float, *, start: float = 0.0, after: Iterable[Dep] = (),
              tag: str | None = None, where: str = "") -> simpy.Event:
        """A software overhead (IPC handle open, Python bookkeeping): takes time, uses no resource."""
        rid = self._new_id(id, "d")
        if not (type(seconds) is float and 0.0 <= seconds <= MAX_SECONDS
                and type(start) is float and 0.0 <= start <= MAX_SECONDS):  # the usual case needs no more checks
            seconds = check_seconds(_plain(seconds), f"delay '{rid}': seconds")
            start = check_seconds(_plain(start), f"delay '{rid}': start")
        return self._add((start, seconds, -1, 0.0, 1.0, None, None, self._seq, rid, "delay", where, where, "", (), tag,
                          0.0), after)

    def all_of(self, events: Iterable[simpy.Event], *, id: str | None = None, tag: str | None = None
               ) -> simpy.Event:
        """An event that fires when every one of `events` has. Over declared items it is itself a declared item (a
        zero delay after them), so work that joins declared work stays declarative and can take the compiled loop;
        `env.all_of` would make it procedural. One event is returned as it is (and `id` is not used); none gives a
        zero delay now."""
        events = list(events)
        if len(events) == 1:
            return events[0]
        if self._deferred is not None and all(map(self.declared, events)):
            return self.delay(id, 0.0, after=events, tag=tag)
        return self.env.all_of(events) if events else self.delay(id, 0.0, tag=tag)

    def lone_copy(self, src: str, dst: str) -> tuple[float, float]:
        """(rate in B/s, latency in s) of a lone copy `src` -> `dst` (`path_bandwidth_Bps`, the path's latency), kept
        per pair for the run: a ring broadcast from each of 512 owners asks about the same 511 hops each time."""
        return self.lone_copies([(src, dst)])[0]

    def lone_copies(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[float, float]]:
        """`lone_copy` of each (src, dst) of `pairs`, looked up together: a ring's hops (a 1,024-GPU host-staged
        sync asks about 511 hops for each of 1,536 broadcasts)."""
        pairs = pairs if type(pairs) is list else list(pairs)
        self._keep_current()
        lone = self._lone
        got = list(map(lone.get, pairs))
        if None in got:  # pairs not seen yet: worked out once each (a pair may come twice)
            topo = self.topology
            for pair in pairs:
                if pair not in lone:
                    lone[pair] = (path_bandwidth_Bps(topo, *pair), topo.path(*pair).latency_s)
            got = list(map(lone.__getitem__, pairs))
        return got

    def warm_routes(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Build the routes of (src, dst) pairs about to be copied between, all at once (`Topology.warm_paths`):
        a speed hint for callers that declare many distinct pairs in a row (every trainer to every reader), which
        changes no result and checks nothing (each `transfer` still does)."""
        self.topology.warm_paths(pairs)

    def _keep_current(self) -> None:
        """Forget the kept shapes and lone-copy answers if the topology changed since they were kept (its path cache
        is then a new dict)."""
        if self.topology._path_cache is not self._shapes_of:
            self._shapes, self._shapes_of, self._lone = {}, self.topology._path_cache, {}

    def declared(self, event: simpy.Event) -> bool:
        """Whether `event` is the completion event of an item declared on this simulation (a transfer, task or
        delay): its value, once it has fired, is the item's `Record`, whichever loop ran it."""
        return type(event) is _Declared and event.env is self.env

    def memory(self, device: str) -> MemoryPool:
        """The memory pool of a GPU (HBM) or host socket (DRAM), created on first use."""
        node = self.topology.resolve(device)
        pool = self._memory.get(node)
        if pool is None:
            spec = self.topology.graph.nodes[node].get("spec")
            capacity = getattr(spec, "hbm_bytes", None) or getattr(spec, "bytes", None)
            if capacity is None:
                raise ScenarioError(f"'{device}' has no memory to account")
            env = self.env  # the clock holds the environment, not the simulation: a cycle through the simulation
            # would leave its whole run (millions of objects) to the cyclic collector instead of reference counting
            pool = MemoryPool(node, capacity, clock=lambda: env.now)
            self._memory[node] = pool
        return pool

    def process(self, generator: Generator[Any, Any, Any]) -> simpy.Process:
        """Run a procedure (a generator yielding simpy events, e.g. `sim.transfer(...)`)."""
        self._go_procedural()
        return self.env.process(generator)

    def done(self, id: str) -> simpy.Event:
        """The completion event of an earlier transfer/task/delay."""
        try:
            return self._done[id if type(id) is str else str(id)]  # (ids are kept as str(): the class docstring)
        except KeyError:
            raise ScenarioError(f"unknown transfer or task '{id}'") from None

    @property
    def now(self) -> float:
        return self.env.now

    # ---- running ---------------------------------------------------------------------------------------
    def run(self, until: float | None = None, *, loop: str | None = None) -> Result:
        """Run until every transfer and task has finished (or `until`), and return the records.

        `loop`: "auto" runs declared work on the compiled event loop when nothing procedural is involved (see
        the module docstring), "simpy" always takes the simpy path (the reference), "compiled" insists on the
        compiled loop and raises if the work cannot take it; default: $FABRICSIM_LOOP, else "auto". A run
        that lasts more than ~2 s of wall time shows a progress line on stderr (see `simcore.progress`).
        """
        loop = loop or os.environ.get("FABRICSIM_LOOP") or "auto"
        if loop not in LOOPS:
            raise ScenarioError(f"unknown loop '{loop}' (known: {', '.join(LOOPS)})")
        why_not = self._why_not_compiled(until)
        if loop == "compiled" and why_not:
            raise ScenarioError(f"the compiled loop cannot run this simulation: {why_not}")
        progress = self._progress
        with gc_paused():
            try:
                if loop != "simpy" and not why_not:
                    self._maker = run_compiled(self, self._deferred, self._records, list(self._done.values()),
                                               self._routes, progress)
                    self._deferred = None
                else:
                    self._go_procedural()
                    self.net.on_progress = None if progress is None else progress.tick
                    self.env.run(until=until)
            finally:
                if progress is not None:
                    progress.close()
                    self._progress = Progress()  # a later run of more work times itself afresh
                self.net.on_progress = None
            return self.result()

    def result(self) -> Result:
        if self._maker is not None and len(self._records) < len(self._work):  # a compiled run's, not yet made
            records: Sequence[Record] = LazyRecords(self._maker, len(self._work))
        else:
            self._made()
            records = list(self._records)
        caps = {n: self.net.capacity[i] for i, n in enumerate(self._res_names)}
        return Result(
            topology=self.topology.name, calibration_id=self.topology.calibration_id,
            records=records, capacity=caps, load=self._load,
            memory_peaks={d: p.peak_bytes for d, p in self._memory.items()}, events=self.net.events,
        )

    def rate_segments(self, id: str) -> list[tuple[float, float]]:
        """(time, rate) steps of one flow; needs `record_rates=True` (used by invariant tests)."""
        flow = self._flows.get(id)
        if flow is not None:
            segs = flow.segments
        else:  # a declared item that never ran as a simpy flow (it is still declared, or ran compiled)
            ev = self._done.get(id)
            if type(ev) is not _Declared or self._work[ev.item][2] < 0:
                raise unknown_id(f"rate segments: '{id}' is no flow of this simulation", list(self._done))
            segs = None if self._deferred is None else [] if self._record_rates else None
        if segs is None:
            raise ScenarioError("rate segments were not recorded: create the Simulation with record_rates=True")
        return segs

    # ---- internals -------------------------------------------------------------------------------------
    def _new_id(self, id: str | None, prefix: str) -> str:
        self._seq += 1
        rid = f"{prefix}{self._seq}" if id is None else str(id)
        if rid in self._done:
            raise ScenarioError(f"duplicate id '{rid}'")
        return rid

    def _shape(self, rid: str, src: str, dst: str, mechanism: str) -> tuple:
        """What copies src -> dst by `mechanism` share, kept for the next such copy: (src, dst, path class, nodes,
        latency, rate cap, the `PathShape` when the cap depends on the size, else None, engine, route number).
        `mechanism` and the endpoints' types are checked here, once per distinct (src, dst, mechanism), not per copy:
        'dma' ran as a copy-engine copy, a None endpoint raised a TypeError."""
        if mechanism not in MECHANISMS:
            raise ScenarioError(f"transfer '{rid}': mechanism: {mechanism!r} is not one of {', '.join(MECHANISMS)}")
        for what, end in (("src", src), ("dst", dst)):
            if not isinstance(end, str):
                raise ScenarioError(f"transfer '{rid}': {what}: expected an endpoint name ({ENDPOINT_NAMES}), "
                                    f"got {end!r}")
        try:
            fields = self.topology.shape_fields(src, dst, mechanism)
        except TopologyError as exc:
            raise ScenarioError(f"transfer '{rid}': {exc}") from None
        s, d, cls, nodes, resources, latency, cap, engine, sized_by, rate_f = fields
        sized = None if sized_by is None else PathShape(Path(*fields[:8]), sized_by, rate_f)
        kept = self._shapes[(src, dst, mechanism)] = (s, d, cls, nodes, latency, cap, sized, engine,
                                                      self._routes.number(resources))
        return kept

    def _flow(self, rid: str, route: int, nbytes: float, weight: float, cap: float | None, key: int) -> Flow:
        res, coef = self._routes.arrays(route)
        flow = self._flows[rid] = Flow(key, res, coef, nbytes, weight, cap, record=self._record_rates)
        return flow

    def _why_not_compiled(self, until: float | None) -> str:
        """Why the declared work must take the simpy path ('' when the compiled loop can run it)."""
        if self._deferred is None:
            return "procedural work (a process, or an event from outside the declared work) is involved"
        if until is not None:
            return "the run stops at a given time"
        if self._record_rates:
            return "flow rate segments are recorded"
        if self.env.peek() != float("inf"):
            return "simpy events are already scheduled"
        # (all declared while `_deferred` is kept; `_Declared.waited_on`, read as a slot instead of a method call
        # per item: a 1,024-GPU host-staged sync has 1.6 million)
        if any(map(_CALLBACK_LIST, self._done.values())):
            return "something waits on a declared item's event"
        return ""

    def _add(self, item: tuple, after: Iterable[Dep]) -> simpy.Event:
        """Declare one item, given as a `Work` tuple less its dependencies (route -1: no flow): kept while
        everything is declarative, else launched as a simpy process."""
        rid = item[8]
        if type(after) is not list and type(after) is not tuple:
            after = _dep_list(rid, after)
        if self._deferred is not None:
            deps = self._dep_indices(rid, after) if after else ()
            if deps is not None:
                deferred = self._deferred
                n = len(deferred)
                if not n & PROGRESS_EVERY and n and self._progress is not None:
                    self._progress.declaring(n)
                done = _Declared(self.env, n)
                # No record or event in the tuple: one of plain numbers, strings and None only is not tracked by
                # the garbage collector (after its first pass), whose full passes over 10^6 items cost seconds;
                # the record is made when asked for (`_made`), the event is `_done[rid]`.
                deferred.append((*item, deps))
                self._done[rid] = done
                return done
            self._go_procedural()
        elif self._maker is not None:
            self._made()  # records stay in declaration order: a compiled run's items come first
        start, latency, route, nbytes, weight, cap, engine, key = item[:8]
        order = len(self._done)
        deps_ev = self._deps(rid, after)
        done = self.env.event()
        rec = record(item)
        self._records.append(rec)
        self._done[rid] = done
        flow = None if route < 0 else self._flow(rid, route, nbytes, weight, cap, key)
        _Item(self, rec, deps_ev, start, latency, flow, engine, order, done).launch()
        return done

    def _made(self) -> None:
        """Make the records of declared items that have none yet (they are made when first asked for): with the
        compiled run's times once it ran them (`_maker`)."""
        work, records = self._deferred, self._records
        if work is not None and len(records) < len(work):
            records.extend(map(record, work[len(records):]))
        elif self._maker is not None and len(records) < len(self._work):
            self._maker.upto(len(self._work))

    def _dep_indices(self, rid: str, after: list[Dep]) -> tuple[int, ...] | None:
        """Dependencies as work-item indices; None if one is an event from outside the declared work. (While work
        is declared, every event in `_done` is a declared item's.)"""
        out = []
        env = self.env
        for a in after:
            if type(a) is _Declared:  # the usual dependency: tested first, without isinstance
                if a.env is not env:
                    return None
                out.append(a.item)
            elif isinstance(a, simpy.Event):
                return None
            else:
                done = self._done.get(a) if type(a) is str else None
                if done is None:
                    done = self._dependency(rid, a)
                out.append(done.item)
        return tuple(out)

    def _go_procedural(self) -> None:
        """Launch every declared item on the simpy clock, in declaration order; later items launch at once."""
        self._made()
        work, self._deferred = self._deferred, None
        if not work:
            return
        recs, dones = self._records, list(self._done.values())
        for order, (rec, done, w) in enumerate(zip(recs, dones, work, strict=True)):
            start, latency, route, nbytes, weight, cap, engine, key = w[:8]
            deps = w[-1]
            flow = None if route < 0 else self._flow(rec.id, route, nbytes, weight, cap, key)
            _Item(self, rec, [dones[j] for j in deps], start, latency, flow, engine, order, done).launch()

    def _deps(self, rid: str, after: Iterable[Dep]) -> list[simpy.Event]:
        deps = []
        for a in after:
            if isinstance(a, simpy.Event):
                deps.append(a)
            else:
                done = self._done.get(a) if type(a) is str else None
                deps.append(self._dependency(rid, a) if done is None else done)
        return deps

    def _dependency(self, rid: str, a: Any) -> simpy.Event:
        """The event of the item that dependency `a` of `rid` names, where a plain lookup of `a` found none: an id
        given as a number (ids are kept as str()), else an error saying why there is none. Items are declared in
        order and wait only for ones declared before them (unlike a scenario file's, which are sorted), so an id
        not there yet is 'not declared (yet)', and `rid` itself is waiting for itself."""
        if isinstance(a, str):
            key = a
        elif isinstance(a, int) and not isinstance(a, bool):
            key = str(a)
        else:
            raise ScenarioError(f"'{rid}' after: expected ids and events, got {a!r}")
        done = self._done.get(key)
        if done is not None:
            return done
        if key == rid:
            raise ScenarioError(f"'{rid}' waits for itself")
        raise ScenarioError(f"'{rid}' waits for unknown id '{key}': not declared (yet); declare an item before the "
                            "items that wait for it")

    def _engine(self, name: str) -> FifoEngine:
        queue = self._engines.get(name)
        if queue is None:
            queue = self._engines[name] = FifoEngine(self.env)
        return queue

def _record_load(names: list[str], store: dict[str, list[tuple[float, float]]], now: float,
                 load: dict[int, float]) -> None:
    """The network's load callback: each resource's (time, load) steps, a step per change. A function of the
    simulation's name list and load store, not a method: a bound method held by the network would make a
    reference cycle through the simulation, and leave a whole run to the cyclic collector."""
    for r, v in load.items():
        series = store.setdefault(names[r], [])
        if series and series[-1][0] == now:
            series[-1] = (now, v)
            if len(series) > 1 and series[-2][1] == v:
                series.pop()
        elif not series or series[-1][1] != v:
            series.append((now, v))


def _topology_of(ref: Any) -> Topology:
    """`Simulation`'s topology given by name or path, loaded by `presets.load`; anything else is refused in one line
    (`Simulation(None)` was an AttributeError on `resources`)."""
    if isinstance(ref, str | os.PathLike):
        return presets.load(os.fspath(ref))
    raise ScenarioError(f"Simulation: expected a Topology (presets.get(name)), a preset name or a topology file's "
                        f"path, got {ref!r}")


def _check_latencies(where: str, latencies: object) -> int:
    """A copy's `latencies`: a whole number >= 0 (a coarsened unit stands for at least itself; 0 for a copy
    pipelined behind an earlier one on its route, whose latency it overlaps: a ring's later chunks)."""
    if type(latencies) is not int or latencies < 0:
        raise ScenarioError(f"{where}: latencies must be a whole number >= 0, got {latencies!r}")
    return latencies


def _dep_list(rid: str, after: Any) -> list:
    """`after` that is not a list or tuple, as a list: a lone id or event is a list of one (a scenario file reads
    `after: t1` so; a string was read character by character, 'ab' as 'a' and 'b'), any other iterable its items,
    anything else an error naming `rid`."""
    if isinstance(after, str | simpy.Event) or (isinstance(after, int) and not isinstance(after, bool)):
        return [after]
    try:
        return list(after)
    except TypeError:
        raise ScenarioError(f"'{rid}' after: expected a list of ids or events, got {after!r}") from None


def _plain(x: Any) -> Any:
    """numpy scalars as Python numbers, so the argument checks treat `np.float64(1e9)` like `1e9`."""
    return x.item() if isinstance(x, np.generic) else x


def _check_copies(copies: list) -> None:
    """Each of `transfers`' copies is a tuple or list of 4 to 6 fields; else a one-line error naming the first that
    is not."""
    try:  # (sets of lengths and types: one C-level pass each over 10^5 copies, not a Python test per copy)
        ok = set(map(len, copies)) <= {4, 5, 6} and set(map(type, copies)) <= {tuple, list}
    except TypeError:
        ok = False
    if not ok:
        n, c = next((n, c) for n, c in enumerate(copies)
                    if not (type(c) is tuple or type(c) is list) or not 4 <= len(c) <= 6)
        raise ScenarioError(f"transfers: copy {n} must be (id, src, dst, nbytes[, setup_s[, setup_id]]), got {c!r}")


def _plain_cap(rate_cap_Bps: Any) -> bool:
    """Whether a caller's rate cap needs no checks: none, or a plain float in range (`units.check_rate`)."""
    return rate_cap_Bps is None or (type(rate_cap_Bps) is float and MIN_RATE_BPS <= rate_cap_Bps < _INF)


def _copy_cap(cap: float | None, sized: PathShape | None, nbytes: float, rate_cap_Bps: float | None) -> float | None:
    """A copy's rate cap: its path's (sized by the copy where the profile's efficiency curve says so), lowered to
    the caller's `rate_cap_Bps` when that is tighter."""
    if sized is not None:
        cap = sized.rate_cap(nbytes)
    if rate_cap_Bps is not None:
        cap = rate_cap_Bps if cap is None else min(cap, rate_cap_Bps)
    return cap


def _check_transfer(rid: str, nbytes: Any, rate_cap_Bps: Any, weight: Any, fixed_cost_s: Any,
                    start: Any) -> tuple[float, float | None, float, float, float]:
    """A transfer's arguments, fully checked and converted (`Simulation.transfer` lets the usual ones through
    without calling this)."""
    where = f"transfer '{rid}'"
    if isinstance(nbytes, str):
        nbytes = parse_bytes(nbytes, f"{where}: bytes")
    else:
        nbytes = check_bytes(_plain(nbytes), f"{where}: bytes", whole=False)
    if rate_cap_Bps is not None:
        rate_cap_Bps = check_rate(_plain(rate_cap_Bps), f"{where}: rate cap")
    weight = check_weight(_plain(weight), f"{where}: weight")
    fixed_cost_s = check_seconds(_plain(fixed_cost_s), f"{where}: fixed cost")
    start = check_seconds(_plain(start), f"{where}: start")
    return nbytes, rate_cap_Bps, weight, fixed_cost_s, start


def _check_flops(flops: Any, where: str) -> float:
    if isinstance(flops, bool) or not isinstance(flops, int | float) or not 0 <= flops < float("inf"):
        raise ScenarioError(f"{where}: expected a finite number >= 0, got {flops!r}")
    return float(flops)


class _Declared(simpy.Event):
    """The completion event of a declared item: a simpy event that knows the item's index in the declared work,
    so `after=` finds it without a table of events (shown as a plain `Event()`), and makes its callback list
    when someone first asks for it: most declared items' events are never waited on, and 10^6 empty lists cost
    the garbage collector's full passes seconds while a large run is declared."""

    # Every attribute simpy gives an event is a slot, so no instance dict is ever made: a compiled run marks 10^6
    # events processed, and making a dict for each cost seconds. Unset `_ok` / `_defused` read as missing, as
    # simpy's own do; `_value` starts as simpy's class default. `_value` is kept in `_val`, which a compiled run
    # sets to its `RecordMaker`: the record is made when the value is first read.
    __slots__ = ("item", "_callbacks", "env", "_ok", "_val", "_defused")

    def __init__(self, env: simpy.Environment, item: int) -> None:
        # simpy.Event.__init__ sets `env` and `callbacks` (tests/test_declare_fast.py checks that it still does)
        self.env = env
        self._callbacks = _NO_CALLBACKS
        self._val = PENDING
        self.item = item

    @property
    def _value(self) -> Any:  # type: ignore[override]
        v = self._val
        if type(v) is RecordMaker:
            v = self._val = v.one(self.item)
        return v

    @_value.setter
    def _value(self, value: Any) -> None:
        self._val = value

    @property
    def callbacks(self) -> list | None:  # type: ignore[override]
        cbs = self._callbacks
        if cbs is _NO_CALLBACKS:
            cbs = self._callbacks = []
        return cbs

    @callbacks.setter
    def callbacks(self, value: list | None) -> None:
        self._callbacks = value

    def waited_on(self) -> bool:
        """Whether a callback was added (without making the list)."""
        return bool(_CALLBACK_LIST(self))

    def _desc(self) -> str:
        return "Event()"


class _Item:
    """One transfer, task or delay on the simpy path, as a chain of event callbacks rather than a generator
    process (a process costs two extra events and a generator per item, the larger part of a 1,024-GPU sync's
    wall time): wait for each dependency, then the start time, then the engine, then the latency, then the
    flow (or the delay), then fire `done` with the record. The same steps, in the same order, as the compiled
    loop (`simcore._eventloop`)."""

    __slots__ = ("sim", "rec", "deps", "start", "latency", "flow", "engine", "order", "done", "queue")

    def __init__(self, sim: Simulation, rec: Record, deps: list[simpy.Event], start: float, latency: float,
                 flow: Flow | None, engine: str | None, order: int, done: simpy.Event) -> None:
        self.sim, self.rec, self.deps, self.start, self.latency = sim, rec, deps, start, latency
        self.flow, self.engine, self.order, self.done = flow, engine, order, done
        self.queue: FifoEngine | None = None

    def launch(self) -> None:
        self._wait_deps()

    def _wait_deps(self, _ev: simpy.Event | None = None) -> None:
        # one dependency at a time, not `all_of(deps)`: a simpy condition gathers the values of every event
        # nested in its operands when it fires, so 512 transfers each waiting on `all_of(512 loads)` cost 512^2
        deps = self.deps
        while deps:
            d = deps[-1]
            if not d.processed:
                d.callbacks.append(self._wait_deps)
                return
            deps.pop()
        env = self.sim.env
        if self.start > env.now:
            timeout_at(env, self.start).callbacks.append(self._started)
        else:
            self._started()

    def _started(self, _ev: simpy.Event | None = None) -> None:
        self.rec.start_s = float(self.sim.env.now)
        if self.engine is not None and self.flow is not None:
            self.queue = self.sim._engine(self.engine)
            self.queue.request(self.order).callbacks.append(self._begin)
        else:
            self._begin()

    def _begin(self, _ev: simpy.Event | None = None) -> None:
        env = self.sim.env
        self.rec.begin_s = float(env.now)
        if self.latency > 0:
            env.timeout(self.latency).callbacks.append(self._run)
        else:
            self._run()

    def _run(self, _ev: simpy.Event | None = None) -> None:
        if self.flow is None:
            self._finish()
        else:
            self.sim.net.start(self.flow).callbacks.append(self._finish)

    def _finish(self, _ev: simpy.Event | None = None) -> None:
        if self.queue is not None:
            self.queue.release()
        self.rec.finish_s = float(self.sim.env.now)
        self.done.succeed(self.rec)
