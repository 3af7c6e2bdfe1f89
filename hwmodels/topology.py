"""`Topology`: the graph of components and links of one machine or cluster, and how copies travel on it.

The graph is undirected for structure (a PCIe or NVLink link is full duplex) but every link has a capacity
per direction, and the simulator sees *directed* resources: `"a->b"` for each link direction, plus named
shared caps (HBM ports, socket DRAM, the host's aggregate PCIe ceilings, calibrated duplex limits). A
`Path` lists the resources a copy draws on with a coefficient each (a local HBM copy reads and writes the
same HBM, so it draws twice), the fixed latency, an optional per-flow rate cap and the engine queue the copy
waits in when its path class is serialised.

Routing is shortest "time to move 1 MB" over switches and CPUs only: endpoints (GPU HBM, host DRAM, NVMe) are never
transit nodes, so peer traffic between GPUs without NVLink naturally goes up through the PCIe root complex
and shares those links with host traffic. Explicit `pin_route` overrides routing where hardware does
something else (e.g. staging through host memory). The search runs on a `routing.RouteIndex` built once per
topology, and each (src, dst) pair's route, resources, latency and class are built once and cached; in a cluster
of identical machines most pairs' entries are renamed from one representative pair's (`symmetry.Machines`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import networkx as nx

from fabricsim.errors import CalibrationError, TopologyError

from .calibration import (
    LINK_KINDS,
    PATH_CLASSES,
    CalibrationProfile,
    CapSpec,
    CollectiveParams,
    PathParams,
    SoftwareCost,
)
from .endpoints import compress_endpoints, natural_key, spell_for_message
from .fabric_summary import gb_per_s, network_lines
from .routing import RouteIndex
from .specs import Derating, GPUSpec
from .symmetry import Machines, RouteTemplate, machine_of
from .uncertainty import Uncertainty

ENDPOINT_KINDS = ("gpu", "host", "nvme")
TRANSIT_KINDS = ("cpu", "pcie-switch", "nvswitch", "nic", "net-switch")
COMPONENT_KINDS = ENDPOINT_KINDS + TRANSIT_KINDS


@dataclass(frozen=True)
class Path:
    """How one copy from `src` to `dst` travels."""

    src: str
    dst: str
    path_class: str
    nodes: tuple[str, ...]
    resources: tuple[tuple[str, float], ...]
    latency_s: float
    rate_cap_Bps: float | None
    engine: str | None

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.resources if "->" in r)


class PathShape(NamedTuple):
    """A `Path` less its size: `rate_cap(nbytes)` is the cap a copy of `nbytes` gets (see `Topology.path_shape`).

    `base.rate_cap_Bps` is the cap of every size unless `sized` is set: then the cap is the fitted per-flow rate
    scaled by `sized`'s size-efficiency at the copy's size (1 for a size of 0 or None), times `rate_f` when given
    (the scale of a mechanism without a fit of its own)."""

    base: Path
    sized: PathParams | None
    rate_f: float | None

    def rate_cap(self, nbytes: float | None) -> float | None:
        pp = self.sized
        if pp is None:
            return self.base.rate_cap_Bps
        cap = pp.bandwidth_Bps * (pp.efficiency(nbytes) if nbytes else 1.0)
        if self.rate_f is not None:
            cap *= self.rate_f
        return cap

    def path(self, nbytes: float | None = None) -> Path:
        if self.sized is None:
            return self.base
        return dataclasses.replace(self.base, rate_cap_Bps=self.rate_cap(nbytes))


@dataclass
class _Cap:
    name: str
    Bps: float
    edges: frozenset[tuple[str, str]] = frozenset()
    classes: frozenset[str] = frozenset()
    endpoints: frozenset[str] = frozenset()
    local_copy_coeff: float = 0.0  # how much a local (src == dst) copy at this endpoint draws
    derating: Derating | None = None  # where `Bps` is a spec's peak derated: how and why, for `describe`

    def coefficient(self, path_class: str, src: str, dst: str, crossings: int) -> float:
        """What a copy src -> dst of `path_class` draws on this cap per byte moved; `crossings`: how many times its
        route crosses the cap's links."""
        if self.classes and path_class not in self.classes:
            return 0.0
        if self.endpoints and src not in self.endpoints and dst not in self.endpoints:
            return 0.0
        if self.edges:
            if src == dst:
                return self.local_copy_coeff if src in self.endpoints else 0.0
            return float(crossings)
        return 1.0


class _CapIndex:
    """Which caps a copy may draw on, found from its ends and links instead of asking every cap of the topology
    (a 512-GPU cluster has ~640 caps; asking each one cost ~0.3 ms per route).

    A cap that names endpoints draws only on copies from or to one of them; one that names links (and no
    endpoints) only on copies crossing one of them; one that names neither may draw on any copy. Only those
    candidates are asked, and `_Cap.coefficient` still decides, so the resources are the same as asking every
    cap (tests/test_routing.py asks every cap, as the oracle)."""

    def __init__(self, caps: dict[str, _Cap]) -> None:
        self.caps = list(caps.values())
        self.always: list[int] = []
        self.by_endpoint: dict[str, list[int]] = {}
        # every cap naming a link, by link, endpoints or not: a route counts its crossings of each cap's links
        # (its coefficient) while it walks its hops
        self.on_edge: dict[tuple[str, str], tuple[int, ...]] = {}
        for i, cap in enumerate(self.caps):
            for e in cap.edges:
                self.on_edge[e] = (*self.on_edge.get(e, ()), i)
            if cap.endpoints:
                for e in cap.endpoints:
                    self.by_endpoint.setdefault(e, []).append(i)
            elif not cap.edges:
                self.always.append(i)

    def drawn(self, src: str, dst: str, path_class: str, crossings: dict[int, int]) -> list[tuple[str, float]]:
        """(cap name, coefficient) of every cap a copy src -> dst of `path_class` draws on, given how many times its
        route crosses each cap's links (`crossings`, by cap number; from `on_edge`). `_Cap.coefficient` decides,
        asked only of the candidates: the caps of the two ends, those whose links the route crosses, and those
        that name neither."""
        found = set(self.always)
        found.update(self.by_endpoint.get(src, ()))
        found.update(self.by_endpoint.get(dst, ()))
        caps = self.caps
        found.update(i for i in crossings if not caps[i].endpoints)  # (the others are their ends')
        out = []
        for i in found:
            cap = caps[i]
            c = cap.coefficient(path_class, src, dst, crossings.get(i, 0))
            if c:
                out.append((cap.name, c))
        return out


@dataclass
class _Routing:
    """A topology's route index and cap index, built from its graph and caps as they are."""

    route: RouteIndex
    caps: _CapIndex
    # ((resource name, 1.0), latency, link kind, numbers of the caps naming it) of each directed link a route crossed
    # (the resource pair made once, shared by every route over the link):
    # every route of a 1,024-GPU cluster crosses a few hundred links between them, and formatting names and looking
    # up edge data per hop was most of a route's cost (a pull-on-publish sync builds 262,144 routes). Kept as long
    # as the path cache it was filled for (`hops_of`): whoever starts a new path cache (`Topology._changed`, or a
    # copy whose links were edited) gets fresh link data too.
    hops: dict[tuple[str, str], tuple[tuple[str, float], float, str, tuple[int, ...]]] = field(default_factory=dict)
    hops_of: dict | None = None
    # The interchangeable machines (None: not yet asked; False: none, the topology pins routes) and the route
    # templates of representative copies by (src, dst), False where the route does not rename (see
    # `Topology._renamed`). Kept with `hops`, for the same path cache.
    machines: Machines | bool | None = None
    templates: dict[tuple[str, str], RouteTemplate | bool] = field(default_factory=dict)
    searched: int = 0  # routes built by a search for this path cache (`Topology._renamed` waits for enough)
    # copies spread over all their equal routes (`Topology._equal_routes`), by (src, dst): their entries cover every
    # tie, so one renames into another machine pair's as a unique route's does
    spread: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Topology:
    """Components, links and shared caps of a machine; builds `Path`s for the simulator."""

    name: str
    graph: nx.Graph = field(default_factory=nx.Graph)
    caps: dict[str, _Cap] = field(default_factory=dict)
    path_params: dict[str, PathParams] = field(default_factory=dict)
    # Fitted NCCL behaviour per collective name (from the calibration profile), for workloads that model them.
    collectives: dict[str, CollectiveParams] = field(default_factory=dict)
    # Fitted software costs per mechanism and operation (e.g. cuda_ipc open/close), from the profile.
    software_costs: dict[str, dict[str, SoftwareCost]] = field(default_factory=dict)
    calibration_id: str | None = None
    # The profile's parameter spreads (None: uncalibrated), for prediction intervals (hwmodels.intervals).
    uncertainty: Uncertainty | None = None
    # Fitted copy mechanisms besides the copy engine: {mechanism: {path class: PathParams}} (see `path`).
    mechanisms: dict[str, dict[str, PathParams]] = field(default_factory=dict)
    # (latency factor, rate factor) of a copy by a mechanism with no fit for its class, per mechanism: 1 in a
    # prediction (it takes the copy engine's parameters), a wide draw in the perturbed copies of
    # hwmodels.intervals, so that the interval says the copy's speed was never measured (see `path`).
    unfitted_mechanism_scale: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Said wherever the profile was fitted on another machine size than this topology's (see with_calibration).
    calibration_note: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    _pinned: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # Routes are renamed across identical machines (`_renamed`) once this many per graph node have been searched:
    # finding the machines costs about as much as searching ~4 routes per node (0.17 s on a 1,024-GPU cluster),
    # which a sync of a few thousand distinct routes (a ring) would never earn back.
    rename_after_searches_per_node: ClassVar[int] = 4
    _path_cache: dict[tuple[str, str], tuple] = field(default_factory=dict, repr=False)
    # Route search arrays and the caps each endpoint / link draws on, built on the first route after a change;
    # valid only beside the route cache they were built with (see `_index`).
    _routing: _Routing | None = field(default=None, repr=False)
    _capacity_cache: dict[str, float] | None = field(default=None, repr=False)  # resources(), until a change
    _hosts_by_node: dict[str, list[str]] | None = field(default=None, repr=False)  # nearest_host's, until a change

    # ---- building -------------------------------------------------------------------------------------
    def add_component(self, name: str, kind: str, **attrs: Any) -> None:
        if kind not in COMPONENT_KINDS:
            raise TopologyError(f"component '{name}': unknown kind '{kind}' (known: {', '.join(COMPONENT_KINDS)})")
        if name in self.graph:
            raise TopologyError(f"component '{name}' is defined twice")
        if "->" in name or not name:
            raise TopologyError(f"component name '{name}' is not allowed")
        self.graph.add_node(name, kind=kind, **attrs)
        self._changed()

    def add_link(self, a: str, b: str, kind: str, Bps: float, latency_s: float = 0.0,
                 Bps_reverse: float | None = None, **attrs: Any) -> None:
        """A full-duplex link; `Bps` a->b, `Bps_reverse` b->a (defaults to the same)."""
        for n in (a, b):
            if n not in self.graph:
                raise TopologyError(f"link {a}<->{b}: unknown component '{n}'")
        if kind not in LINK_KINDS:
            raise TopologyError(f"link {a}<->{b}: unknown kind '{kind}' (known: {', '.join(LINK_KINDS)})")
        rev = Bps if Bps_reverse is None else Bps_reverse
        for what, v in (("bandwidth", Bps), ("reverse bandwidth", rev)):
            if not v > 0:
                raise TopologyError(f"link {a}<->{b}: {what} must be > 0, got {v}")
        if latency_s < 0:
            raise TopologyError(f"link {a}<->{b}: latency must be >= 0, got {latency_s}")
        if self.graph.has_edge(a, b):
            raise TopologyError(f"link {a}<->{b} is defined twice")
        self.graph.add_edge(a, b, kind=kind, latency_s=float(latency_s),
                            bw={(a, b): float(Bps), (b, a): float(rev)}, **attrs)
        self._changed()

    def add_cap(self, name: str, Bps: float, *, edges: list[tuple[str, str]] | None = None,
                classes: list[str] | tuple[str, ...] = (), endpoints: list[str] | tuple[str, ...] = (),
                local_copy_coeff: float = 0.0, derating: Derating | None = None) -> None:
        """A shared ceiling several flows draw on (see `_Cap.coefficient` for who draws); `derating`: the peak
        and fraction `Bps` was made of, where it is a spec's peak derated (`describe` says so)."""
        if not Bps > 0:
            raise TopologyError(f"cap '{name}': bandwidth must be > 0, got {Bps}")
        if name in self.caps:
            raise TopologyError(f"cap '{name}' is defined twice")
        for e in edges or ():
            if not self.graph.has_edge(*e):
                raise TopologyError(f"cap '{name}': no link {e[0]}<->{e[1]}")
        for cls in classes:
            if cls not in PATH_CLASSES:
                raise TopologyError(f"cap '{name}': unknown path class '{cls}'")
        self.caps[name] = _Cap(name, float(Bps), frozenset(tuple(e) for e in edges or ()), frozenset(classes),
                               frozenset(self.resolve(x) for x in endpoints), local_copy_coeff, derating)
        self._changed()

    def pin_route(self, src: str, dst: str, via: list[str]) -> None:
        """Force copies src -> dst through the listed nodes (in order), e.g. P2P staged through host DRAM."""
        src, dst = self.resolve(src), self.resolve(dst)
        for n in via:
            if n not in self.graph:
                raise TopologyError(f"pinned route {src}->{dst}: unknown component '{n}'")
        self._pinned[(src, dst)] = tuple(via)
        self._changed()

    def _changed(self) -> None:
        """Forget everything derived from the graph, caps and pins: cached paths, capacities, the route index.
        The path cache is a new dict, not cleared in place: a copy of a topology must not empty its original's."""
        self._path_cache = {}
        self._capacity_cache = None
        self._routing = None
        self._hosts_by_node = None

    # ---- queries --------------------------------------------------------------------------------------
    def kind(self, node: str) -> str:
        return self.graph.nodes[node]["kind"]

    def endpoints(self) -> list[str]:
        return [n for n, k in self.graph.nodes(data="kind") if k in ENDPOINT_KINDS]

    def gpus(self) -> list[str]:
        return [n for n, k in self.graph.nodes(data="kind") if k == "gpu"]

    def gpu(self, name: str) -> GPUSpec:
        node = self.resolve(name)
        if self.kind(node) != "gpu":
            raise TopologyError(f"'{name}' is not a GPU")
        return self.graph.nodes[node]["spec"]

    def resolve(self, endpoint: str) -> str:
        """Canonical node name of an endpoint ('host' means 'host0'); errors list what exists."""
        name = self.aliases.get(endpoint, endpoint)
        if name in self.graph:
            return name
        shown = spell_for_message(self.endpoints())
        hint = ""
        if re.search(r"\d-\d|,", endpoint):  # `node0-1.gpu1` names a list; one endpoint is wanted here
            hint = "; a range or comma names a list of endpoints, and this takes one"
        raise TopologyError(f"unknown endpoint '{endpoint}' in topology '{self.name}' (it has {shown}){hint}")

    def resources(self) -> dict[str, float]:
        """Every directed resource and cap with its capacity in bytes/s."""
        out: dict[str, float] = {}
        for _a, _b, d in self.graph.edges(data=True):
            for (u, v), bw in d["bw"].items():
                out[f"{u}->{v}"] = bw
        for c in self.caps.values():
            out[c.name] = c.Bps
        return out

    def _capacities(self) -> dict[str, float]:
        """`resources()` built once until the topology changes (a ring of 512 GPUs asks for 511 hop rates; building
        the dict of a 4,096-GPU cluster's resources each time made ring setup quadratic in GPUs). Read-only."""
        if self._capacity_cache is None:
            self._capacity_cache = self.resources()
        return self._capacity_cache

    def classify(self, src: str, dst: str, nodes: tuple[str, ...]) -> str:
        adj = self.graph._adj  # plain dicts: the public views cost ~10x per lookup
        link_kinds = {adj[a][b]["kind"] for a, b in zip(nodes, nodes[1:], strict=False)}
        return _class_of(src, dst, self.kind(src), self.kind(dst), link_kinds)

    def _route_nodes(self, src: str, dst: str) -> tuple[str, ...]:
        if src == dst:
            return (src,)
        via = self._pinned.get((src, dst))
        if via is not None:
            nodes: list[str] = [src]
            for a, b in zip((src, *via), (*via, dst), strict=False):
                nodes.extend(self._shortest(a, b)[1:])
            return tuple(nodes)
        return tuple(self._shortest(src, dst))

    def _index(self) -> _Routing:
        """The route index and cap index of the topology as it is now, built on first use after a change
        (`_changed`)."""
        if self._routing is None:
            self._routing = _Routing(RouteIndex(self.graph, ENDPOINT_KINDS), _CapIndex(self.caps))
        return self._routing

    def _shortest(self, src: str, dst: str) -> list[str]:
        """Shortest "time to move 1 MB" route; endpoints other than src and dst are never transit, and neither is a
        NIC paired with another GPU of an end GPU's machine (see `routing.RouteIndex`)."""
        nodes = self._index().route.shortest(src, dst)
        if nodes is None:
            raise TopologyError(f"no route from '{src}' to '{dst}' in topology '{self.name}'")
        return nodes

    def path(self, src: str, dst: str, nbytes: float | None = None, mechanism: str = "ce") -> Path:
        """The `Path` of a copy of `nbytes` from `src` to `dst` (size only matters for calibrated curves).

        `mechanism`: 'ce' (copy engine, pinned memory), or one the profile fitted (`mechanisms`: 'pageable',
        'sm'): such a copy takes the same route and shares its links, with that mechanism's latency, per-flow
        rate and size efficiency, and queues on no copy engine (an SM copy is a kernel; a pageable copy's rate
        is its CPU staging). A mechanism the profile lacks for the class falls back to the copy engine's
        parameters, which may be far off (a pageable copy runs ~6x slower than a pinned one): `fits` tells the
        caller so, and `unfitted_mechanism_scale` widens the copy's prediction interval."""
        return self.path_shape(src, dst, mechanism).path(nbytes)

    def path_shape(self, src: str, dst: str, mechanism: str = "ce") -> PathShape:
        """Everything `path` says about a copy `src` -> `dst` by `mechanism` that does not depend on its size,
        and how its rate cap does (`PathShape.rate_cap`): `path(src, dst, nbytes, m)` is
        `path_shape(src, dst, m).path(nbytes)`. For callers that ask for many copies between the same ends (the
        simulator keeps one shape per (src, dst, mechanism) of a run and asks it for each copy's cap)."""
        *fields, sized, rate_f = self.shape_fields(src, dst, mechanism)
        return PathShape(Path(*fields), sized, rate_f)

    def shape_fields(self, src: str, dst: str, mechanism: str = "ce") -> tuple:
        """`path_shape` as a plain tuple: the `Path` fields (src, dst, path class, nodes, resources, latency, rate
        cap, engine), then `PathShape`'s `sized` and `rate_f`. For the simulator, which keeps its own tuple per
        distinct (src, dst, mechanism) and needs no `Path` object (a 1,024-GPU pull-on-publish sync has 262,144
        distinct pairs)."""
        s, d = self.resolve(src), self.resolve(dst)
        key = (s, d)
        cached = self._path_cache.get(key)
        if cached is None:
            cached = self._renamed(s, d) or self._build_path(s, d)
            self._path_cache[key] = cached
        nodes, cls, resources, link_latency, engine = cached
        pp = self.path_params.get(cls)
        mech = self.mechanisms.get(mechanism, {}).get(cls) if mechanism != "ce" else None
        if mech is not None:
            pp, engine = mech, None
        latency = link_latency
        cap = None
        sized = None  # the PathParams whose size-efficiency curve scales the cap, when one does
        if pp is not None:
            if pp.latency_s is not None:
                latency = pp.latency_s
            if pp.bandwidth_Bps is not None:
                cap = pp.bandwidth_Bps * 1.0  # a float, as an efficiency of 1.0 times the rate always gave
                if pp.size_efficiency:
                    sized = pp
        rate_f = None
        if mechanism != "ce" and mech is None and mechanism in self.unfitted_mechanism_scale:
            lat_f, rate_f = self.unfitted_mechanism_scale[mechanism]
            latency *= lat_f
            if cap is None:  # no fitted rate: scale the tightest hop of the copy
                cap = self._slowest_hop_Bps(nodes, resources)
            if sized is None:
                cap *= rate_f
        return s, d, cls, nodes, resources, latency, cap, engine, sized, rate_f

    def _slowest_hop_Bps(self, nodes: tuple[str, ...], resources: tuple[tuple[str, float], ...]) -> float:
        """The rate the tightest hop of a copy allows, for a mechanism with no fitted rate to scale: its tightest
        link at the share of the copy it carries, or, for a local copy (which crosses no link), its memory's copy
        rate: the HBM or DRAM cap over what the copy draws on it (a local copy reads and writes the same memory), as
        `path_bandwidth_Bps`."""
        caps = self._capacities()
        if len(nodes) > 1:  # its links at their share (a copy spread over routes draws a part on each: `_spread`)
            return min(caps[r] / c for r, c in resources if "->" in r)
        return min(caps[r] / c for r, c in resources)

    def fits(self, mechanism: str, src: str, dst: str) -> bool:
        """Whether a copy `src` -> `dst` by `mechanism` has fitted parameters of its own (the copy engine always
        does, as far as the profile goes); False means `path` lends it the copy engine's."""
        if mechanism == "ce":
            return True
        cls = self.path(src, dst).path_class
        return cls in self.mechanisms.get(mechanism, {})

    def _hop(self, routing: _Routing, u: str, v: str) -> tuple[tuple[str, float], float, str, tuple[int, ...]]:
        """The link u -> v as routes use it, kept in `routing.hops`: ((resource name, 1.0), latency, link kind,
        numbers of the caps naming it)."""
        data = self.graph._adj[u][v]
        hop = routing.hops[(u, v)] = ((f"{u}->{v}", 1.0), data["latency_s"], data["kind"],
                                      routing.caps.on_edge.get((u, v), ()))
        return hop

    def warm_paths(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Build the routes of many (src, dst) pairs at once, for `path` and its kin to find cached: the same
        routes as asking one by one: renamed from a representative pair's route where one stands for the pair
        (`_renamed`), the rest searched in one compiled call (one call per route cost as much as its search).
        A speed hint only: pairs that are cached, pinned, local, unknown or unroutable are left for the
        one-by-one path, which raises what it always raised."""
        todo: dict[tuple[str, str], None] = {}
        attrs, cache = self.graph._node, self._path_cache
        for src, dst in pairs:
            s, d = self.aliases.get(src, src), self.aliases.get(dst, dst)
            if (s != d and (s, d) not in cache and (s, d) not in self._pinned and s in attrs and d in attrs
                    and attrs[s]["kind"] in ENDPOINT_KINDS and attrs[d]["kind"] in ENDPOINT_KINDS):
                renamed = self._renamed(s, d)
                if renamed is not None:
                    cache[(s, d)] = renamed
                else:
                    todo[(s, d)] = None
        if not todo:
            return
        keys = list(todo)
        for (s, d), nodes in zip(keys, self._index().route.shortest_many(keys), strict=True):
            if nodes is not None:
                cache[(s, d)] = self._build_path(s, d, tuple(nodes))

    def _fresh_routing(self) -> _Routing:
        """`_index`, its link data and route templates emptied when they were made for another path cache."""
        routing = self._index()
        if routing.hops_of is not self._path_cache:
            routing.hops, routing.hops_of, routing.machines, routing.templates = {}, self._path_cache, None, {}
            routing.searched, routing.spread = 0, set()
        return routing

    def _renamed(self, s: str, d: str) -> tuple | None:
        """What the path cache keeps of the copy s -> d (canonical endpoint names), made by renaming the route of
        its representative copy (`symmetry.Machines`): the same tuple `_build_path` would build, without a
        search; None where no representative stands for it (then `_build_path` searches)."""
        routing = self._fresh_routing()
        machines = routing.machines
        if machines is None:
            if routing.searched < self.rename_after_searches_per_node * len(self.graph):
                return None
            machines = routing.machines = (Machines(self.graph.nodes(data=True), self.graph.edges(data=True),
                                                    self.caps.values()) if not self._pinned else False)
        if machines is False:
            return None
        got = machines.standin(s, d)
        if got is None:
            return None
        s0, d0, a, b = got
        template = routing.templates.get((s0, d0))
        if template is None:
            template = routing.templates[(s0, d0)] = self._template(machines, s0, d0)
        if template is False:
            return None
        return template.entry(a, b)

    def _template(self, machines: Machines, s0: str, d0: str) -> RouteTemplate | bool:
        """The route template of the representative copy s0 -> d0 (see `_Routing.templates`), or False when renaming
        its route would not give other copies' routes: it is not the only shortest one (unless the copy is spread
        over all of them: its entry then holds every tie), or it names a third machine, or it cannot be built (an
        end that is not an endpoint, no route: each copy's own search then says so, naming its own ends)."""
        try:
            entry = self._path_cache.get((s0, d0)) or self._build_path(s0, d0)
        except TopologyError:
            return False
        self._path_cache[(s0, d0)] = entry
        if (s0, d0) not in self._fresh_routing().spread and not self._index().route.unique(entry[0]):
            return False
        return machines.template(s0, d0, entry) or False

    def _build_path(self, s: str, d: str, nodes: tuple[str, ...] | None = None) -> tuple:
        """What the path cache keeps of the copy s -> d (canonical names): (nodes, path class, resources, link
        latency, engine); `nodes`: its route, when already searched (`warm_paths`)."""
        attrs = self.graph._node  # plain dicts: the public views cost ~10x per lookup
        ks, kd = attrs[s]["kind"], attrs[d]["kind"]
        if ks not in ENDPOINT_KINDS or kd not in ENDPOINT_KINDS:
            bad = s if ks not in ENDPOINT_KINDS else d
            raise TopologyError(f"'{bad}' is a {self.kind(bad)}, not an endpoint (GPU, host memory or NVMe)")
        if nodes is None:
            nodes = self._route_nodes(s, d)
        routing = self._fresh_routing()
        routing.searched += 1
        hops = self._hops(routing, nodes)
        cls = _class_of(s, d, ks, kd, {h[2] for h in hops})
        pinned = s != d and (s, d) in self._pinned
        routes = self._equal_routes(routing, s, d, nodes) if cls == "rdma" and "host" in (ks, kd) and not pinned \
            else [nodes]
        if len(routes) > 1 or pinned:  # a pinned route may cross a link twice: it draws twice on it
            if len(routes) > 1:
                routing.spread.add((s, d))
            resources, latency = self._spread(routing, s, d, cls, routes)
            return self._entry(s, d, tuple(nodes), cls, resources, latency)
        # one shortest route, which never crosses a link twice (the common case: kept free of counting)
        latency = sum([h[1] for h in hops])  # sum(), as ever: Python 3.12's is compensated, and routes must agree
        resources = [h[0] for h in hops]
        resources += routing.caps.drawn(s, d, cls, _crossings(hops))
        return self._entry(s, d, nodes, cls, resources, latency)

    def _hops(self, routing: _Routing, nodes: tuple[str, ...] | list[str]) -> list[tuple]:
        """The hops of the route `nodes`, one walk, each link's data made once per topology (`_Routing.hops`)."""
        known = routing.hops
        hops = []
        u = nodes[0]
        for v in nodes[1:]:
            hop = known.get((u, v))
            if hop is None:
                hop = self._hop(routing, u, v)
            hops.append(hop)
            u = v
        return hops

    def _equal_routes(self, routing: _Routing, s: str, d: str, nodes: tuple[str, ...]) -> list:
        """The routes a copy between host memory and another machine is spread over evenly: all its equally short
        ones (`nodes`, the search's, first). Why: host memory reaches the network through any NIC of its socket
        (no GPU pairs it with one), and the search's pick among equal NICs follows its visiting order: every copy
        from a socket went out of one NIC while its others idled. A transfer engine stripes a large copy over the
        NICs near the memory (Mooncake's, checkpoint engines'); ECMP's fluid limit, as the spines of
        `presets.cluster`. They are the routes that stay within the two machines and the fabric no machine owns (a
        NIC does not forward through a third machine's PCIe), unless the route searched itself crosses a third
        machine: then all of them (a search of the whole graph, ~10x slower)."""
        routes = routing.route.equal_routes(nodes, within={machine_of(s), machine_of(d), ""})
        if routes is None:  # the route searched leaves the two machines: every equal route counts
            routes = routing.route.equal_routes(nodes)
        return routes or [nodes]

    def _spread(self, routing: _Routing, s: str, d: str, cls: str, routes: list) -> tuple[list, float]:
        """(resources, link latency) of a copy spread evenly over `routes` (one, for a pinned route): each of k
        carries 1/k of its bytes, so a link that n of them cross (a route may cross one twice) draws n/k per byte,
        and a cap the same way; the latency is the longest route's. The nodes a cache entry keeps are the first
        route's (records and traces show that one); the resources are all of them."""
        k = len(routes)
        links: dict[str, int] = {}
        caps: dict[str, float] = {}
        latency = 0.0
        for route in routes:
            hops = self._hops(routing, route)
            latency = max(latency, sum([h[1] for h in hops]))
            for h in hops:
                links[h[0][0]] = links.get(h[0][0], 0) + 1
            for name, coeff in routing.caps.drawn(s, d, cls, _crossings(hops)):
                caps[name] = caps.get(name, 0.0) + coeff
        return [(name, n / k) for name, n in links.items()] + [(name, c / k) for name, c in caps.items()], latency

    def _entry(self, s: str, d: str, nodes: tuple[str, ...], cls: str, resources: list, latency: float) -> tuple:
        """The path cache's entry of the copy s -> d: (nodes, path class, resources sorted, link latency, engine)."""
        if not resources:
            raise TopologyError(f"a copy {s}->{d} would use no resource (a local copy needs an HBM/DRAM cap)")
        resources.sort()
        engine = None
        pp = self.path_params.get(cls)
        if pp is not None and pp.discipline == "fifo":
            # The copy engine doing the DMA belongs to the GPU that issues it: the source, except for H2D.
            owner = d if cls == "h2d" else s
            engine = f"{owner}.ce.{cls}"
        return nodes, cls, tuple(resources), latency, engine

    # ---- calibration ----------------------------------------------------------------------------------
    def with_calibration(self, profile: CalibrationProfile) -> Topology:
        """A copy of this topology with the profile's link capacities, path parameters and caps applied.

        The GPU model must match. The GPU count need not: a profile of N GPUs applies to a machine with fewer of
        them (the same GPU, links and host, less of it) and one of fewer GPUs to a larger machine (what it did
        not measure stays datasheet); either way `calibration_note` says so, for the output to show."""
        gpus = self.gpus()
        models = {self.gpu(g).model for g in gpus}
        if gpus and profile.gpu_model not in models:
            raise CalibrationError(
                f"calibration '{profile.id}' was made for {profile.gpus}x {profile.gpu_model} ({profile.machine}), "
                f"but topology '{self.name}' has {len(gpus)}x {'/'.join(sorted(models))}")
        topo = copy.deepcopy(self)
        topo.uncertainty = profile.uncertainty
        topo.mechanisms = {m: dict(v) for m, v in profile.mechanisms.items()}
        topo.calibration_note = ""
        if gpus and profile.gpus != len(gpus):
            topo.calibration_note = (f"profile '{profile.id}' was fitted on {profile.gpus}x {profile.gpu_model} "
                                     f"({profile.machine}); applied to {len(gpus)} GPUs of that model")
        topo._changed()
        topo.path_params = dict(profile.paths)
        topo.collectives = dict(profile.collectives)
        topo.software_costs = {k: dict(v) for k, v in profile.software_costs.items()}
        topo.calibration_id = profile.id
        for kind, bps in profile.links.items():
            topo._set_link_capacity(kind, bps)
        for cap in profile.caps:
            topo._add_calibrated_cap(cap)
        return topo

    def _set_link_capacity(self, kind: str, Bps: float) -> None:
        """The widest links of `kind` get `Bps` per direction; narrower ones of that kind (another generation
        or width) scale by the same ratio, so the profile's measured efficiency carries over to them."""
        edges = [d for _a, _b, d in self.graph.edges(data=True) if d["kind"] == kind]
        if not edges:
            return  # a kind this topology does not have (a one-GPU box has no NVLink): nothing to raise
        widest = max(max(d["bw"].values()) for d in edges)
        for d in edges:
            d["bw"] = {k: v * Bps / widest for k, v in d["bw"].items()}
        self._capacity_cache = None
        self._routing = None  # routes of pairs not yet cached take the new widths, as they always did

    def _add_calibrated_cap(self, cap: CapSpec) -> None:
        # A profile's cap replaces one of the same name the topology carries (e.g. from `topo import`).
        for name in [n for n in self.caps if n == cap.name or n.endswith(f".{cap.name}")]:
            del self.caps[name]
        self._routing = None
        endpoints = cap.endpoints
        if not endpoints:
            self.add_cap(cap.name, cap.Bps, classes=cap.classes)
            return
        # In a cluster a profile of one node applies to every node: 'gpu0' means each node's gpu0.
        nodes = [n for n in self.graph if "." in n]
        prefixes = sorted({machine_of(n) for n in nodes}) if nodes and "gpu0" not in self.graph else [""]
        for p in prefixes:
            # A profile of more GPUs names GPUs this machine lacks: their caps have nothing to apply to.
            eps = [x for e in endpoints if (x := f"{p}.{e}" if p else e) in self.graph or x in self.aliases]
            if not eps:
                continue
            self.add_cap(f"{p}.{cap.name}" if p else cap.name, cap.Bps, classes=cap.classes, endpoints=eps)

    # ---- checking and printing ------------------------------------------------------------------------
    def validate(self) -> None:
        """Structural checks: every endpoint reachable from every other, GPUs carry specs."""
        if not self.endpoints():
            raise TopologyError(f"topology '{self.name}' has no endpoints (GPU, host or NVMe)")
        for g in self.gpus():
            if not isinstance(self.graph.nodes[g].get("spec"), GPUSpec):
                raise TopologyError(f"GPU '{g}' has no spec")
        comps = list(nx.connected_components(self.graph))
        if len(comps) > 1:
            small = min(comps, key=len)
            raise TopologyError(f"topology '{self.name}' is not connected: {sorted(small)} are cut off")

    def _cap_lines(self) -> list[str]:
        """One line per shared cap: its GB/s and who draws on it, and where the figure is a spec's peak derated,
        the fraction of which peak (the reason on the first line of each reason: a cluster has a thousand HBM caps).
        A cap whose rate no longer is its derating's (a perturbed copy's, see hwmodels.intervals) says nothing."""
        lines, explained = [], set()
        for c in self.caps.values():
            why = ", ".join(sorted(c.classes)) or "all classes"
            d = c.derating
            if d is not None and c.Bps == d.Bps:
                why += "; " + d.note(with_why=d.why not in explained)
                explained.add(d.why)
            lines.append(f"  {c.name:<24} {gb_per_s(c.Bps)} GB/s  ({why})")
        return lines

    def describe(self) -> str:
        """A human-readable table of components, links and caps (for `fabricsim topo show`)."""
        lines = [f"topology {self.name}" + (f" (calibration {self.calibration_id})" if self.calibration_id else "")]
        kinds: dict[str, list[str]] = {}
        for n, k in self.graph.nodes(data="kind"):
            kinds.setdefault(k, []).append(n)
        lines.append("components:")
        for k in COMPONENT_KINDS:
            if k not in kinds:
                continue
            groups: dict[str, list[str]] = {"": kinds[k]}
            if k == "gpu":  # one line per GPU model: a machine of H100s and H200s is not all H100s
                groups = {}
                for n in kinds[k]:
                    spec = self.graph.nodes[n]["spec"]
                    key = f"  [{spec.model}, {spec.hbm_bytes / 2**30:.0f} GiB HBM, {spec.hbm_GBps:.0f} GB/s peak]"
                    groups.setdefault(key, []).append(n)
            for extra, names in groups.items():
                shown = ", ".join(names[:10]) + (f", ... ({len(names)})" if len(names) > 10 else "")
                lines.append(f"  {k:<12} {shown}{extra}")
        if self.aliases:
            lines.append("aliases (names a scenario may use for an endpoint):")
            lines += [f"  {name} -> {target}" for name, target in _alias_rows(self.aliases)]
        lines += network_lines(self.graph)
        lines.append("links (GB/s per direction, latency):")
        for a, b, d in sorted(self.graph.edges(data=True), key=lambda e: (e[0], e[1])):
            fwd, rev = d["bw"][(a, b)], d["bw"][(b, a)]
            bw = gb_per_s(fwd) if fwd == rev else f"{gb_per_s(fwd)}/{gb_per_s(rev)}"
            lines.append(f"  {a:>14} <-> {b:<14} {d['kind']:<7} {bw:>8} GB/s  {d['latency_s'] * 1e6:.2f} us")
        if self.caps:
            lines.append("shared caps:")
            lines += self._cap_lines()
        for cls, pp in sorted(self.path_params.items()):
            bw = f"{gb_per_s(pp.bandwidth_Bps)} GB/s" if pp.bandwidth_Bps else "links"
            lat = f"{pp.latency_s * 1e6:.2f} us" if pp.latency_s is not None else "links"
            lines.append(f"  path {cls:<11} latency {lat}, per-flow {bw}, {pp.discipline}")
        return "\n".join(lines)


_NODE = re.compile(r"node\d+")


def _alias_rows(aliases: dict[str, str]) -> list[tuple[str, str]]:
    """The aliases as `describe` lists them: one row per alias, except that an alias each node of a cluster has
    for its own endpoint (`node0.host` -> `node0.host0`, ...) is one row of node ranges, so a 512-node cluster's
    aliases take one line rather than 512."""
    rows: list[tuple[str, str]] = []
    per_node: dict[tuple[str, str], list[str]] = {}  # (alias, target) below the node -> the nodes that have it
    for name, target in sorted(aliases.items(), key=lambda a: natural_key(a[0])):
        node, _, local = name.partition(".")
        if local and _NODE.fullmatch(node) and target.startswith(f"{node}."):
            per_node.setdefault((local, target[len(node) + 1:]), []).append(node)
        else:
            rows.append((name, target))
    return rows + [(compress_endpoints([f"{n}.{local}" for n in nodes]),
                    compress_endpoints([f"{n}.{to}" for n in nodes])) for (local, to), nodes in per_node.items()]


def _crossings(hops: list[tuple]) -> dict[int, int]:
    """How many times a route's hops cross each cap (by the numbers its links name: `_Routing.hops`)."""
    crossings: dict[int, int] = {}
    for h in hops:
        for i in h[3]:
            crossings[i] = crossings.get(i, 0) + 1
    return crossings


def _class_of(src: str, dst: str, ks: str, kd: str, link_kinds: set[str]) -> str:
    """The path class of a copy src -> dst (of kinds ks, kd) over links of `link_kinds`."""
    if "nvme" in (ks, kd):
        return "nvme"
    if "net" in link_kinds:
        return "rdma"
    if ks == kd == "gpu":
        if src == dst:
            return "d2d"
        return "p2p-nvlink" if "nvlink" in link_kinds else "p2p-pcie"
    if ks == "host" and kd == "gpu":
        return "h2d"
    if ks == "gpu" and kd == "host":
        return "d2h"
    return "h2h"


def path_bandwidth_Bps(topo: Topology, src: str, dst: str, nbytes: float | None = None) -> float:
    """The rate a lone copy from `src` to `dst` reaches: its tightest resource (capacity / coefficient) or its
    calibrated per-flow cap, whichever is lower."""
    path = topo.path(src, dst, nbytes)
    caps = topo._capacities()
    bw = min(caps[r] / c for r, c in path.resources)
    return min(bw, path.rate_cap_Bps) if path.rate_cap_Bps else bw


def nearest_host(topo: Topology, gpu: str) -> str:
    """The host socket of `gpu`'s node reached in the fewest hops: where a NUMA-aware allocator pins the
    buffers `gpu` copies to and from (KV offload, staged weights). TopologyError when the node has none."""
    node = gpu.rpartition(".")[0]
    if topo._hosts_by_node is None:  # every endpoint scanned once, not once per GPU asked about (1,024 on a cluster)
        by_node: dict[str, list[str]] = {}
        for e in topo.endpoints():
            if topo.kind(e) == "host":
                parts = e.split(".")
                for i in range(len(parts)):  # a host belongs to every node prefix it lies under
                    by_node.setdefault(".".join(parts[:i]), []).append(e)
        topo._hosts_by_node = by_node
    hosts = topo._hosts_by_node.get(node, [])
    if not hosts:
        raise TopologyError(f"no host memory near {gpu} in topology '{topo.name}'")
    return min(hosts, key=lambda h: (len(topo.path(h, gpu).nodes), h))
