"""Flow-level (fluid) bandwidth sharing: max-min fair rates by progressive filling, on a simpy clock.

A `Flow` moves `bytes` over a route of resources, drawing `coeff x rate` on each (a local HBM copy reads and
writes, so it draws 2x its rate on the HBM cap). Rates are weighted max-min fair with optional per-flow caps:
the progressive-filling level rises for every unfrozen flow (rate = weight x level) until a resource is full
or a flow hits its cap; those flows freeze and the rest go on. At every arrival and departure only the
*connected component* of the flow-resource graph that the change touches is recomputed, because max-min
allocations of disjoint components are independent; other flows keep their rates and finish-time events.

Finish times live in one heap with lazy invalidation (each flow carries a version bumped when its rate
changes), and a single pending simpy timeout wakes the network at the earliest finish. Floating-point dust is
handled in two places: flows whose predicted finish lies within a relative 1e-12 of the wake-up time finish
together, and a flow with fewer than 1e-9 of its bytes left counts as done, so ties never cause zero-time
event loops.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import simpy

_TIME_TOL = 1e-12  # relative: finish times closer than this to "now" complete now
_BYTE_TOL = 1e-9   # relative: a flow with this fraction of its bytes left is done


class Flow:
    """One fluid flow. `res` are resource indices, `coef` their coefficients (same length)."""

    __slots__ = ("key", "res", "coef", "pairs", "weight", "cap", "bytes", "remaining", "rate", "t_last",
                 "version", "done", "segments")

    def __init__(self, key: object, res: Sequence[int], coef: Sequence[float], nbytes: float,
                 weight: float = 1.0, cap: float | None = None, record: bool = False) -> None:
        self.key = key
        self.res = tuple(res)
        self.coef = tuple(coef)
        self.pairs = tuple(zip(self.res, self.coef, strict=True))
        self.weight = float(weight)
        self.cap = cap
        self.bytes = float(nbytes)
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.t_last = 0.0
        self.version = 0
        self.done: simpy.Event | None = None
        self.segments: list[tuple[float, float]] | None = [] if record else None


def max_min_rates(flows: Sequence[Flow], capacity: Sequence[float],
                  binding: Sequence[bool] | None = None) -> tuple[list[float], dict[int, float]]:
    """Weighted max-min fair rates of `flows` (progressive filling); also returns each touched resource's load.

    The filling level rises for all unfrozen flows (rate = weight x level); a resource saturates at level
    residual / (sum of coeff x weight of its unfrozen flows), a capped flow at cap / weight. The smallest such
    level freezes everything that hits it. Saturation levels sit in a heap with per-resource versions, so each
    freeze touches only the resources of the flows it freezes: O(incidences x log resources) per call instead
    of rescanning every resource at every level (it scales better on large components).
    `binding`, if given, marks the resources that can bind; the others are left out (see `FluidNetwork`).
    """
    n = len(flows)
    rates = [0.0] * n
    # Resources get local indices so the inner loops index lists instead of hashing into dicts.
    local: dict[int, int] = {}
    rem: list[float] = []
    demand: list[float] = []
    users: list[list[int]] = []
    pairs: list[list[tuple[int, float]]] = []  # each flow's (local resource, coeff) that can bind
    for i, f in enumerate(flows):
        w = f.weight
        lp = []
        for r, c in f.pairs:
            if binding is not None and not binding[r]:
                continue
            j = local.get(r)
            if j is None:
                j = local[r] = len(rem)
                rem.append(capacity[r])
                demand.append(c * w)
                users.append([i])
            else:
                demand[j] += c * w
                users[j].append(i)
            lp.append((j, c))
        pairs.append(lp)
    unfrozen_users = [len(u) for u in users]
    version = [0] * len(rem)
    heap = [(rem[j] / demand[j], j, 0) for j in range(len(rem))]
    heapq.heapify(heap)
    caps = sorted((f.cap / f.weight, i) for i, f in enumerate(flows) if f.cap is not None)
    ci = 0
    frozen = [False] * n
    left = n
    level = 0.0
    inf = float("inf")
    heappop, heappush = heapq.heappop, heapq.heappush
    while left:
        while heap and (heap[0][2] != version[heap[0][1]] or not unfrozen_users[heap[0][1]]):
            heappop(heap)
        while ci < len(caps) and frozen[caps[ci][1]]:
            ci += 1
        nxt = min(heap[0][0] if heap else inf, caps[ci][0] if ci < len(caps) else inf)
        if nxt == inf:
            raise ValueError("unbounded flow: no resource and no rate cap")
        level = max(level, nxt)  # rounding may put a level a hair below the previous one
        thresh = level * (1 + 1e-12) + 1e-300
        freeze: list[int] = []
        while ci < len(caps) and caps[ci][0] <= thresh:
            i = caps[ci][1]
            ci += 1
            if not frozen[i]:
                frozen[i] = True
                freeze.append(i)
        while heap and heap[0][0] <= thresh:
            _, j, ver = heappop(heap)
            if ver != version[j]:
                continue
            for i in users[j]:
                if not frozen[i]:
                    frozen[i] = True
                    freeze.append(i)
        touched: set[int] = set()
        for i in freeze:
            f = flows[i]
            w = f.weight
            rate = w * level
            if f.cap is not None and rate > f.cap:
                rate = f.cap
            rates[i] = rate
            for j, c in pairs[i]:
                x = rem[j] - c * rate
                rem[j] = x if x > 0.0 else 0.0
                demand[j] -= c * w
                unfrozen_users[j] -= 1
                touched.add(j)
        for j in touched:
            if unfrozen_users[j]:
                version[j] += 1
                heappush(heap, (rem[j] / demand[j] if demand[j] > 0 else inf, j, version[j]))
        left -= len(freeze)
    load = {r: capacity[r] - rem[j] for r, j in local.items()}
    return rates, load


class FluidNetwork:
    """Active flows on shared resources, advanced by a simpy environment.

    Slack resources are pruned: each flow has an upper bound `ub` (its rate cap, or its lone bottleneck
    capacity / coefficient), and a resource whose flows could not fill it even all at their upper bounds
    (sum of coeff x ub < capacity) can never bind. Such resources neither join flows into one component nor
    enter the max-min computation, which is exact and keeps components small where a wide resource (HBM, a
    switch) touches many flows that are limited elsewhere. Resource loads are tracked incrementally from rate
    changes, for the utilisation records.
    """

    def __init__(self, env: simpy.Environment, capacity: Sequence[float],
                 on_load: Callable[[float, dict[int, float]], None] | None = None) -> None:
        self.env = env
        self.capacity = list(capacity)
        self.on_load = on_load  # called with (now, {resource: new load}) whenever loads change
        self._on_res: list[set[Flow]] = [set() for _ in self.capacity]
        self._sum_ub = [0.0] * len(self.capacity)
        self._binding = [False] * len(self.capacity)
        self._load = [0.0] * len(self.capacity)
        self._ub: dict[Flow, float] = {}
        self._heap: list[tuple[float, int, int, Flow]] = []
        self._seq = 0
        self._wake_at = float("inf")
        self._wake_ev: simpy.Event | None = None
        self._active: set[Flow] = set()
        self._pending: list[Flow] = []
        self._flush_scheduled = False
        self.events = 0  # arrivals + departures processed (for benchmarks)

    def start(self, flow: Flow) -> simpy.Event:
        """Add a flow now; the returned event fires when its last byte arrives."""
        flow.done = self.env.event()
        flow.t_last = self.env.now
        if flow.remaining <= 0:
            flow.done.succeed(flow)
            return flow.done
        cap = self.capacity
        ub = min((cap[r] / c for r, c in flow.pairs), default=float("inf"))
        if flow.cap is not None:
            ub = min(ub, flow.cap)
        self._ub[flow] = ub
        for r, c in flow.pairs:
            self._on_res[r].add(flow)
            self._sum_ub[r] += c * ub
            self._binding[r] = self._sum_ub[r] >= cap[r] * (1 - 1e-9)
        self._active.add(flow)
        self.events += 1
        # Arrivals at one instant share one recomputation: a procedure that launches 64 chunks at t=0 costs
        # one max-min solve, not 64 growing ones. Until the flush (same simulated time) the flow's rate is 0.
        self._pending.append(flow)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            ev = self.env.event()
            ev.callbacks.append(self._flush)
            ev.succeed()
        return flow.done

    def _flush(self, _ev: simpy.Event) -> None:
        self._flush_scheduled = False
        pending = [f for f in self._pending if f in self._active]
        self._pending = []
        self._recompute(self._component(pending))

    @property
    def active(self) -> int:
        return len(self._active)

    # -- internals --------------------------------------------------------------------------------------
    def _component(self, seeds: list[Flow]) -> list[Flow]:
        """Active flows connected to `seeds` through binding resources (the seeds too, if still active)."""
        active = self._active
        binding = self._binding
        seen: set[Flow] = {f for f in seeds if f in active}
        seen_res: set[int] = set()
        for f in seeds:
            seen_res.update(r for r in f.res if binding[r])
        stack = list(seen_res)
        on_res = self._on_res
        while stack:
            for g in on_res[stack.pop()]:
                if g not in seen:
                    seen.add(g)
                    for r in g.res:
                        if binding[r] and r not in seen_res:
                            seen_res.add(r)
                            stack.append(r)
        return list(seen)

    def _set_rate(self, f: Flow, rate: float, now: float, changed: set[int]) -> None:
        load = self._load
        delta = rate - f.rate
        for r, c in f.pairs:
            load[r] += c * delta
            changed.add(r)
        f.remaining -= f.rate * (now - f.t_last)
        f.t_last = now
        f.rate = rate
        f.version += 1
        if f.segments is not None:
            if f.segments and f.segments[-1][0] == now:
                f.segments.pop()  # several changes at one instant: keep the last
            f.segments.append((now, rate))

    def _recompute(self, flows: list[Flow], changed: set[int] | None = None) -> None:
        changed = set() if changed is None else changed
        if flows:
            now = self.env.now
            flows.sort(key=lambda f: f.key)  # deterministic order whatever the set iteration order
            rates, _ = max_min_rates(flows, self.capacity, self._binding)
            heap = self._heap
            for f, rate in zip(flows, rates, strict=True):
                if rate == f.rate and f.version:
                    continue
                self._set_rate(f, rate, now, changed)
                finish = now + f.remaining / rate if rate > 0 else float("inf")
                self._seq += 1
                heapq.heappush(heap, (finish, self._seq, f.version, f))
        if changed and self.on_load is not None:
            load, on_res = self._load, self._on_res
            for r in changed:
                if not on_res[r]:
                    load[r] = 0.0  # no drift once a resource is idle
            self.on_load(self.env.now, {r: max(0.0, load[r]) for r in changed})
        self._schedule()

    def _schedule(self) -> None:
        heap = self._heap
        while heap and heap[0][2] != heap[0][3].version:
            heapq.heappop(heap)
        if not heap:
            return
        t = heap[0][0]
        if t < self._wake_at:
            self._wake_at = t
            ev = self.env.timeout(max(0.0, t - self.env.now))
            ev.callbacks.append(self._wake)
            self._wake_ev = ev

    def _wake(self, ev: simpy.Event) -> None:
        if ev is not self._wake_ev:  # a stale wake-up: a later recomputation moved the earliest finish
            return
        now = self.env.now
        self._wake_at = float("inf")
        horizon = now * (1 + _TIME_TOL) + 1e-18  # relative: sub-ns flows keep their exact finish times
        finished: dict[int, Flow] = {}
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            _, _, version, f = heapq.heappop(heap)
            if version == f.version and f in self._active:
                finished[id(f)] = f
        if not finished:
            self._schedule()
            return
        # One search (before the departures change which resources bind) serves both steps: neighbours whose
        # leftover bytes are within tolerance finish now too (dust), and the rest of the component gets new
        # rates. Recomputing the remainder as one set is exact even if the departures split it.
        component = self._component(list(finished.values()))
        for g in component:
            if id(g) not in finished and g.remaining - g.rate * (now - g.t_last) <= _BYTE_TOL * g.bytes:
                finished[id(g)] = g
        done = sorted(finished.values(), key=lambda f: f.key)
        changed: set[int] = set()
        cap = self.capacity
        for f in done:
            self._set_rate(f, 0.0, now, changed)
            f.remaining = 0.0
            self._active.discard(f)
            ub = self._ub.pop(f)
            for r, c in f.pairs:
                self._on_res[r].discard(f)
                self._sum_ub[r] = self._sum_ub[r] - c * ub if self._on_res[r] else 0.0
                self._binding[r] = self._sum_ub[r] >= cap[r] * (1 - 1e-9)
            self.events += 1
        self._recompute([g for g in component if id(g) not in finished], changed)
        for f in done:
            f.done.succeed(f)
