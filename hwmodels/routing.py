"""`RouteIndex`: a topology's graph as arrays, built once, so that each route costs one compiled search.

Why: the router used to call `networkx.shortest_path` with a Python weight callback, which recomputed every
edge's "time to move 1 MB" and re-tested every node for being an endpoint or another GPU's NIC at each edge of
each search. A point-to-point weight sync between 256 trainer and 256 rollout GPUs asks for 65,536 distinct
routes; that took ~35 s of a 75 s simulation. The index computes the weights once per topology, keeps which
nodes may never be transit as arrays and the NICs closed to each GPU's copies as index arrays, and runs
networkx's own search order compiled (`hwmodels._routecore`), so every route — ties included — is the one
networkx gives (tests/test_routing.py keeps the networkx router as the oracle).

The index describes the graph as it was when built: `Topology._changed` drops it whenever links, components,
caps or pins change, calibrated copies and the perturbed copies of `hwmodels.intervals` included.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection
from functools import cached_property
from types import ModuleType

import networkx as nx
import numpy as np

from fabricsim.errors import TopologyError

from .symmetry import machine_of

_core: ModuleType | None = None


def _load_core() -> ModuleType:
    """The compiled search, imported on the first route (numba loads in ~0.5 s; `topo show` needs no routes)."""
    global _core
    if _core is None:
        from . import _routecore

        _core = _routecore
    return _core


class RouteTieError(TopologyError):
    """More equally short routes between two endpoints than a copy is spread over (`RouteIndex.equal_routes`)."""


def edge_weight(d: dict) -> float:
    """Cost of moving a 1 MB reference chunk over a link: prefers wide links (NVLink over PCIe) and, among equals,
    low latency; the epsilon prefers fewer hops. The same expression, in the same order, as the router always used,
    so the floating-point sums (and therefore the ties) are the same."""
    return d["latency_s"] + 1e6 / min(d["bw"].values()) + 1e-9


class RouteIndex:
    """Shortest routes of one graph: CSR adjacency in networkx's neighbour order with per-entry weights, which
    nodes are endpoints (never transit), and for each GPU the NICs its copies may not cross.

    One search at a time: the per-query scratch arrays belong to the index (simulations run one per process)."""

    def __init__(self, graph: nx.Graph, endpoint_kinds: Collection[str]) -> None:
        names = list(graph.nodes)
        index = {n: i for i, n in enumerate(names)}
        indptr = np.zeros(len(names) + 1, np.int64)
        nbr: list[int] = []
        wt: list[float] = []
        for i, n in enumerate(names):
            for w, d in graph.adj[n].items():
                nbr.append(index[w])
                wt.append(edge_weight(d))
            indptr[i + 1] = len(nbr)
        self.names = names
        self.index = index
        self.indptr = indptr
        self.nbr = np.array(nbr, np.int64)
        self.wt = np.array(wt, np.float64)
        kinds = dict(graph.nodes(data="kind"))
        self.is_ep = np.array([kinds[n] in endpoint_kinds for n in names], np.bool_)
        # A NIC paired with a GPU (its `gpu` attribute) carries that GPU's RDMA traffic only: on the machine of a
        # GPU endpoint, no other GPU's NIC is transit (two GPUs behind one PCIe switch must not share one NIC).
        nics: dict[str, list[tuple[int, str]]] = {}
        for n, own in graph.nodes(data="gpu"):
            if own is not None:
                nics.setdefault(own.rpartition(".")[0], []).append((index[n], own))
        none = np.zeros(0, np.int64)
        self._closed: list[np.ndarray] = [none] * len(names)
        for n in names:
            if kinds[n] == "gpu":
                self._closed[index[n]] = np.array([i for i, own in nics.get(n.rpartition(".")[0], ()) if own != n],
                                                  np.int64)
        # the same as one array for the batch search: node n's are closed[closed_off[n]:closed_off[n + 1]]
        self._closed_off = np.zeros(len(names) + 1, np.int64)
        np.cumsum([len(c) for c in self._closed], out=self._closed_off[1:])
        self._closed_all = np.concatenate(self._closed) if names else none
        # per-query scratch, stamped with the query number instead of cleared (see _routecore)
        nn, cap = len(names), len(nbr) + 1
        self._qid = 0
        self._mark = np.zeros(nn, np.bool_)
        self._settled = np.zeros((2, nn), np.int64)
        self._seen = np.zeros((2, nn), np.int64)
        self._seen_d = np.zeros((2, nn), np.float64)
        self._pred = np.zeros((2, nn), np.int64)
        self._hd = np.zeros((2, cap), np.float64)
        self._hc = np.zeros((2, cap), np.int64)
        self._hn = np.zeros((2, cap), np.int64)
        self._out = np.zeros(nn, np.int64)

    @cached_property
    def _lists(self) -> tuple[list[int], list[int], list[float], list[bool]]:
        """`indptr`, `nbr`, `wt` and `is_ep` as Python lists, for the searches `equal_routes` runs in Python: a list
        item reads several times faster than a numpy scalar. Taken on first use, never inside `unique` (whose
        weights of inf last one search), so they are the weights of the graph as built."""
        return self.indptr.tolist(), self.nbr.tolist(), self.wt.tolist(), self.is_ep.tolist()

    @cached_property
    def _machines(self) -> tuple[dict[str, int], list[int]]:
        """Each machine (`symmetry.machine_of`) as a number, and each node's, for `equal_routes`' regions: built on
        its first call, not with every index (calibrated and perturbed copies included), as nothing else reads it."""
        ids: dict[str, int] = {}
        return ids, [ids.setdefault(machine_of(n), len(ids)) for n in self.names]

    def shortest(self, src: str, dst: str) -> list[str] | None:
        """The least-weight route src -> dst (both graph nodes) that networkx's bidirectional Dijkstra returns
        under the router's rules, or None when there is none."""
        if src == dst:
            return [src]
        s, t = self.index[src], self.index[dst]
        self._qid += 1
        n = _load_core().route(self.indptr, self.nbr, self.wt, self.is_ep, self._mark, self._closed[s],
                               self._closed[t], s, t, self._qid, self._settled, self._seen, self._seen_d,
                               self._pred, self._hd, self._hc, self._hn, self._out)
        if n == -2:
            raise AssertionError(f"route search {src}->{dst} settled a node from both sides without a meeting node")
        if n < 0:
            return None
        names = self.names
        return [names[i] for i in self._out[:n].tolist()]

    def unique(self, nodes: list[str] | tuple[str, ...], band: float = 1e-9) -> bool:
        """Whether `nodes`, a route `shortest` returned, is the only least-weight route between its ends under the
        router's rules, every other one costing more than (1 + `band`) times as much.

        Why: only then does a renamed copy of the route (`hwmodels.symmetry`) equal what the search returns for the
        renamed ends; among ties the search's pick follows its visiting order. Any other route leaves out one of
        this route's links, so searching once without each link in turn finds the cheapest other route. The band
        is far wider than rounding in a sum of a few weights, so a tie in exact arithmetic is always caught."""
        if len(nodes) < 2:
            return True
        idx = [self.index[n] for n in nodes]
        cost = self._weight(idx)
        wt = self.wt
        for u, v in zip(idx, idx[1:], strict=False):
            entries = [k for a, b in ((u, v), (v, u)) for k in range(self.indptr[a], self.indptr[a + 1])
                       if self.nbr[k] == b]
            kept = wt[entries]  # (a copy: fancy indexing)
            wt[entries] = np.inf
            try:
                other = self.shortest(nodes[0], nodes[-1])
                alt = None if other is None else self._weight([self.index[n] for n in other])
            finally:
                wt[entries] = kept
            if alt is not None and alt <= cost * (1.0 + band):
                return False
        return True

    def equal_routes(self, nodes: list[str] | tuple[str, ...], band: float = 1e-9, limit: int = 64,
                     within: Collection[str] | None = None) -> list[list[str]] | None:
        """Every least-weight route between the ends of `nodes` (a route `shortest` returned) under the router's
        rules, each within (1 + `band`) of its weight, `nodes` first; at most `limit` (more raise
        `RouteTieError`). `within`: machines (`symmetry.machine_of`; '' for what no machine owns) whose nodes alone
        may be crossed; None when the least weight there is not `nodes`' (a shorter way leaves them: ask again
        without).

        Complete: distances from both ends (Dijkstra, bounded by the route's weight) mark the links on some least-
        weight route (d(src, u) + w + d(v, dst) within the band), and the routes are the paths over those links
        (acyclic: every weight is positive). The band is far wider than rounding in a sum of a few weights, so a
        tie in exact arithmetic is always caught."""
        index, names = self.index, self.names
        indptr, nbr, wt, is_ep = self._lists
        s, t = index[nodes[0]], index[nodes[-1]]
        idx = [index[n] for n in nodes]
        cost = self._weight(idx)
        bound = cost * (1.0 + band)
        closed = set(self._closed[s].tolist()) | set(self._closed[t].tolist())
        region, machine = None, None
        if within is not None:
            ids, machine = self._machines
            region = {ids.get(m, -2) for m in within}

        def allowed(i: int) -> bool:
            return i in (s, t) or (not is_ep[i] and i not in closed and (region is None or machine[i] in region))

        ds, dt = self._distances(s, t, bound, allowed), self._distances(t, s, bound, allowed)
        if t not in ds or ds[t] < cost * (1.0 - band) or not all(i in ds for i in idx):
            return None
        succ: dict[int, list[int]] = {}
        for u, du in ds.items():
            if u == t:
                continue
            for k in range(indptr[u], indptr[u + 1]):
                v = nbr[k]
                if v in dt and allowed(v) and du + wt[k] + dt[v] <= bound:
                    succ.setdefault(u, []).append(v)
        routes: list[list[int]] = []
        stack: list[tuple[int, list[int]]] = [(s, [s])]
        while stack:
            u, path = stack.pop()
            if u == t:
                routes.append(path)
                if len(routes) > limit:
                    raise RouteTieError(f"{nodes[0]} -> {nodes[-1]} has more than {limit} equally short routes: give "
                                        "the topology's links distinct weights or pin the route")
                continue
            for v in reversed(succ.get(u, [])):
                stack.append((v, [*path, v]))
        routes.sort(key=lambda r: r != idx)  # the search's own route first (stable for the rest)
        return [[names[i] for i in r] for r in routes]

    def _distances(self, src: int, dst: int, bound: float, allowed: Callable[[int], bool]) -> dict[int, float]:
        """Least weights from `src` to the nodes within `bound` that `allowed` admits, under the router's rules:
        endpoints are not crossed (`dst` is reached, never left)."""
        indptr, nbr, wt, is_ep = self._lists
        dist = {src: 0.0}
        heap = [(0.0, src)]
        done: set[int] = set()
        while heap:
            du, u = heapq.heappop(heap)
            if u in done:
                continue
            done.add(u)
            if u != src and is_ep[u]:
                continue  # an endpoint: reached, never crossed
            for k in range(indptr[u], indptr[u + 1]):
                v = nbr[k]
                w = du + wt[k]
                if w <= bound and allowed(v) and w < dist.get(v, np.inf):
                    dist[v] = w
                    heapq.heappush(heap, (w, v))
        return dist

    def _weight(self, idx: list[int]) -> float:
        """The weight of the route through nodes `idx` (inf over a link taken out by `unique`)."""
        total = 0.0
        for u, v in zip(idx, idx[1:], strict=False):
            total += min(self.wt[k] for k in range(self.indptr[u], self.indptr[u + 1]) if self.nbr[k] == v)
        return total

    def shortest_many(self, pairs: list[tuple[str, str]], room: int = 0) -> list[list[str] | None]:
        """`shortest` of each (src, dst) pair (src != dst), searched in one compiled call per batch: the same
        routes, without a call's argument checks per pair (as costly as the search itself). `room`: node slots of
        the output (at least the graph's node count; a batch ends where a route might not fit)."""
        core = _load_core()
        index, names = self.index, self.names
        srcs = np.array([index[s] for s, _ in pairs], np.int64)
        dsts = np.array([index[d] for _, d in pairs], np.int64)
        start = np.zeros(len(pairs), np.int64)
        count = np.zeros(len(pairs), np.int64)
        out = np.zeros(max(len(self.names), room or 64 * len(pairs)), np.int64)
        got: list[list[str] | None] = []
        k = 0
        while k < len(pairs):
            done = core.route_many(self.indptr, self.nbr, self.wt, self.is_ep, self._mark, self._closed_off,
                                   self._closed_all, srcs[k:], dsts[k:], self._qid, self._settled, self._seen,
                                   self._seen_d, self._pred, self._hd, self._hc, self._hn, out, start[k:], count[k:])
            self._qid += done
            flat, at, lens = out.tolist(), start[k:k + done].tolist(), count[k:k + done].tolist()
            for j, (a, n) in enumerate(zip(at, lens, strict=True)):
                if n == -2:
                    s, d = pairs[k + j]
                    raise AssertionError(f"route search {s}->{d} settled a node from both sides without a meeting node")
                got.append(None if n < 0 else [names[i] for i in flat[a:a + n]])
            k += done
        return got
