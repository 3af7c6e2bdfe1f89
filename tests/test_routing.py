"""The route index gives exactly the routes of the networkx router it replaced, ties included.

The oracle below is the router as it was before `hwmodels.routing` (networkx's bidirectional Dijkstra with a weight
callback, every cap asked about every path). Equal-cost routes are everywhere in these topologies (rails, PCIe
switch pairs, spines), and which one a copy takes decides which links it shares, so the comparison is on the
whole cached path: nodes, class, resources with coefficients, latency and engine.
"""

from __future__ import annotations

import copy
import itertools
import random

import networkx as nx
import numpy as np
import pytest
from _twins import net_edited_twin
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fabricsim.errors import TopologyError
from fabricsim.hwmodels import intervals, presets
from fabricsim.hwmodels.calibration import bundled_profile_path
from fabricsim.hwmodels.specs import GPU_MODELS
from fabricsim.hwmodels.symmetry import machine_of
from fabricsim.hwmodels.topology import ENDPOINT_KINDS, Topology


# ---- the oracle: the router before the route index ------------------------------------------------------------
def old_shortest(topo: Topology, src: str, dst: str) -> list[str]:
    try:
        return nx.shortest_path(topo.graph, src, dst, weight=old_weight(topo, src, dst))
    except nx.NetworkXNoPath:
        raise TopologyError(f"no route from '{src}' to '{dst}' in topology '{topo.name}'") from None


def old_foreign(topo: Topology, src: str, dst: str) -> set[str]:
    """The NICs a copy src -> dst may not cross: on a GPU end's machine, those paired with another GPU."""
    g = topo.graph
    nics: dict[str, list[tuple[str, str]]] = {}
    for n, own in g.nodes(data="gpu"):
        if own is not None:
            nics.setdefault(own.rpartition(".")[0], []).append((n, own))
    gpu_ends = [n for n in (src, dst) if g.nodes[n]["kind"] == "gpu"]
    return {nic for e in gpu_ends for nic, own in nics.get(e.rpartition(".")[0], ()) if own != e}


def old_weight(topo: Topology, src: str, dst: str):
    """The old router's weight callback for the pair: endpoints never transit, nor another GPU's NIC."""
    g = topo.graph
    endpoints = frozenset(n for n, k in g.nodes(data="kind") if k in ENDPOINT_KINDS)
    foreign = old_foreign(topo, src, dst)

    def weight(u: str, v: str, d: dict) -> float | None:
        if (v != dst and v in endpoints) or (u != src and u in endpoints) or v in foreign or u in foreign:
            return None
        return d["latency_s"] + 1e6 / min(d["bw"].values()) + 1e-9

    return weight


def old_route_nodes(topo: Topology, src: str, dst: str) -> tuple[str, ...]:
    if src == dst:
        return (src,)
    via = topo._pinned.get((src, dst))
    if via is not None:
        nodes: list[str] = [src]
        for a, b in zip((src, *via), (*via, dst), strict=False):
            nodes.extend(old_shortest(topo, a, b)[1:])
        return tuple(nodes)
    return tuple(old_shortest(topo, src, dst))


def old_build_path(topo: Topology, s: str, d: str) -> tuple:
    """The old router's entry for s -> d, except that a copy between host memory and another machine is spread
    evenly over all its least-weight routes: networkx's simple paths in order of weight (Yen's algorithm, not the
    index's search) up to 1e-9 above the least (equal routes sum their weights in different orders), among those
    that stay within the two machines and what no machine owns, where the route searched does."""
    nodes = old_route_nodes(topo, s, d)
    cls = topo.classify(s, d, nodes)
    routes = [nodes]
    if cls == "rdma" and "host" in (topo.kind(s), topo.kind(d)) and (s, d) not in topo._pinned:
        weight = old_weight(topo, s, d)
        # the callback's rules as a graph (Yen's takes a weight function but no rules): no other endpoint, no
        # other GPU's NIC
        foreign = old_foreign(topo, s, d)
        region = {machine_of(s), machine_of(d), ""}
        inside = all(machine_of(n) in region for n in nodes)
        g = topo.graph.subgraph(n for n in topo.graph if n in (s, d) or (
            topo.kind(n) not in ENDPOINT_KINDS and n not in foreign and (not inside or machine_of(n) in region)))
        routes, least = [], None
        for r in nx.shortest_simple_paths(g, s, d, weight=lambda u, v, dd: weight(u, v, dd)):
            w = sum(weight(u, v, g.edges[u, v]) for u, v in zip(r, r[1:], strict=False))
            least = w if least is None else least
            if w > least * (1 + 1e-9):
                break
            routes.append(tuple(r))
        assert nodes in routes
    resources: dict[str, float] = {}
    latency = 0.0
    for route in routes:
        directed = list(zip(route, route[1:], strict=False))
        for u, v in directed:
            resources[f"{u}->{v}"] = resources.get(f"{u}->{v}", 0.0) + 1.0
        for cap in topo.caps.values():
            c = cap.coefficient(cls, s, d, sum(1 for e in directed if e in cap.edges))
            if c:
                resources[cap.name] = resources.get(cap.name, 0.0) + c
        latency = max(latency, sum(topo.graph.edges[u, v]["latency_s"] for u, v in directed))
    if not resources:
        raise TopologyError(f"a copy {s}->{d} would use no resource (a local copy needs an HBM/DRAM cap)")
    return nodes, cls, tuple(sorted((r, c / len(routes)) for r, c in resources.items())), latency


def outcome(fn, *args):
    """A route, or the error it raises (the message must match too)."""
    try:
        return fn(*args)
    except TopologyError as exc:
        return ("error", str(exc))


def new_path(topo: Topology, s: str, d: str):
    """What `Topology.path` caches for the pair (the link latency, before any fitted path latency replaces it)."""
    p = topo.path(s, d)
    nodes, cls, resources, latency, _engine = topo._path_cache[(p.src, p.dst)]
    assert (p.nodes, p.path_class, p.resources) == (nodes, cls, resources)
    return nodes, cls, resources, latency


def assert_same_routes(topo: Topology, pairs) -> int:
    n = 0
    for s, d in pairs:
        old = outcome(old_build_path, topo, s, d)
        new = outcome(new_path, topo, s, d)
        if old[0] == "error":
            assert new == old, (s, d)
        else:
            assert new[:3] == old[:3], (s, d)
            assert new[3] == old[3], (s, d)  # same links summed in the same order: bit-identical
        n += 1
    return n


# ---- presets: every endpoint pair ------------------------------------------------------------------------------
SMALL = ["h100-1", "h200-1", "h200-2", "hgx-h100-8", "hgx-h200-8", "pcie-4gpu", "cluster-2x8", "cluster-3x4",
         "cluster-4x8-leaf-spine-h200", "cluster-5x8-leaf-spine", "cluster-3x8-h200", "cluster-2x1", "cluster-1x8"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("calibration", ["default", None])
def test_every_endpoint_pair_of_a_preset_routes_as_before(name, calibration):
    topo = presets.get(name, calibration=calibration)
    eps = topo.endpoints()
    assert assert_same_routes(topo, itertools.product(eps, eps)) == len(eps) ** 2


def test_a_cluster_with_a_node_profile_routes_as_before():
    """A one-node profile applied to every node of a cluster: its caps per node, its link widths everywhere."""
    topo = presets.get("cluster-2x8-h200", calibration=bundled_profile_path("h200x8"))
    assert topo.calibration_id is not None
    eps = topo.endpoints()
    assert_same_routes(topo, itertools.product(eps, eps))


@pytest.mark.parametrize("name", ["cluster-16x8-h200", "cluster-32x8-leaf-spine", "cluster-64x8"])
def test_large_clusters_route_as_before_on_a_sample_of_pairs(name):
    topo = presets.get(name, calibration=None)
    eps = topo.endpoints()
    rng = random.Random(name)
    gpus = topo.gpus()
    pairs = [(rng.choice(eps), rng.choice(eps)) for _ in range(300)]
    pairs += [(rng.choice(gpus), rng.choice(gpus)) for _ in range(300)]
    assert_same_routes(topo, pairs)


def test_pinned_routes_route_each_leg_as_before():
    topo = presets.get("cluster-2x8", calibration=None)
    topo.pin_route("node0.gpu0", "node1.gpu3", ["node0.cpu0", "node1.pcisw1"])
    topo.pin_route("node0.gpu1", "node0.gpu2", ["node0.host0"])
    topo.pin_route("node0.gpu2", "node0.gpu5", ["node0.nic3"])  # another GPU's NIC: no route, same error
    topo.pin_route("node1.gpu0", "node1.gpu1", ["node1.gpu0"])  # a leg from a node to itself
    pairs = [("node0.gpu0", "node1.gpu3"), ("node0.gpu1", "node0.gpu2"), ("node0.gpu2", "node0.gpu5"),
             ("node1.gpu0", "node1.gpu1")]
    assert_same_routes(topo, pairs)
    assert topo.path("node0.gpu1", "node0.gpu2").nodes[:3] == ("node0.gpu1", "node0.pcisw0", "node0.cpu0")


# ---- changes after routing: the index follows the topology ----------------------------------------------------
def test_the_index_follows_changes_made_after_routing():
    topo = presets.get("pcie-4gpu", calibration=None)
    assert topo.path("gpu0", "gpu1").path_class == "p2p-pcie"
    topo.add_link("gpu0", "gpu1", "nvlink", 100e9, 1e-6)  # a bridge added after the first route
    assert topo.path("gpu0", "gpu1").nodes == ("gpu0", "gpu1")
    eps = topo.endpoints()
    assert_same_routes(topo, itertools.product(eps, eps))
    topo.add_cap("late", 1e9, endpoints=["gpu2"])
    assert dict(topo.path("gpu2", "host").resources)["late"] == 1.0
    assert_same_routes(topo, itertools.product(eps, eps))


def test_perturbed_copies_route_on_their_own_link_rates():
    """`intervals.perturbed` deep-copies a topology that has routed, gives it a fresh route cache and changes its
    link rates: the copy must route on the new rates, as the networkx router (which had no index) did."""
    topo = presets.get("hgx-h100-8", calibration=None)
    eps = topo.endpoints()
    for s, d in itertools.product(eps, eps):
        outcome(topo.path, s, d)
    rng = np.random.default_rng(3)
    for _ in range(5):
        t = intervals.perturbed(topo, rng)
        assert_same_routes(t, itertools.product(eps, eps))


def test_a_deep_copy_and_its_original_route_alike():
    topo = presets.get("cluster-2x8", calibration=None)
    topo.path("node0.gpu0", "node1.gpu0")
    twin = net_edited_twin(topo, lambda d: d.update(bw=dict.fromkeys(d["bw"], 1e9)))
    eps = twin.endpoints()
    assert_same_routes(twin, [(s, d) for s, d in itertools.product(eps, eps) if s < d][:400])
    assert_same_routes(topo, [("node0.gpu0", "node1.gpu0"), ("node0.gpu1", "node1.gpu5")])


def test_a_copy_with_new_link_latencies_and_a_new_path_cache_uses_them():
    """The per-link data routes are built from lives as long as the path cache it was filled for."""
    topo = presets.get("cluster-2x8", calibration=None)
    before = topo.path("node0.gpu0", "node1.gpu0").latency_s
    twin = net_edited_twin(topo, lambda d: d.update(latency_s=1e-3))
    path = twin.path("node0.gpu0", "node1.gpu0")
    net_hops = sum(1 for u, v in zip(path.nodes, path.nodes[1:], strict=False) if twin.graph[u][v]["kind"] == "net")
    assert net_hops and path.latency_s == pytest.approx(before + net_hops * 1e-3, rel=0.05)
    assert topo.path("node0.gpu0", "node1.gpu0").latency_s == before


# ---- random topologies -----------------------------------------------------------------------------------------
BWS = [25e9, 50e9, 64e9, 100e9]  # few values: many equal-cost routes, so ties decide
LATS = [0.0, 0.5e-6, 1e-6]
KINDS = ["gpu", "gpu", "host", "nvme", "cpu", "pcie-switch", "nvswitch", "nic", "net-switch", "net-switch"]


def random_topology(seed: int, n_nodes: int, extra_edges: int) -> Topology:
    """Two 'machines' (name prefixes) of random components on a random connected graph, NICs paired with GPUs."""
    rng = random.Random(seed)
    topo = Topology(f"random-{seed}")
    names: list[str] = []
    for i in range(n_nodes):
        kind = rng.choice(KINDS)
        name = f"m{rng.randrange(2)}.{kind}{i}" if kind != "net-switch" else f"sw{i}"
        attrs: dict = {"spec": GPU_MODELS["H100"]} if kind == "gpu" else {}
        topo.add_component(name, kind, **attrs)
        names.append(name)
    gpus = [n for n in names if topo.kind(n) == "gpu"]
    for n in names:
        if topo.kind(n) == "nic" and gpus and rng.random() < 0.8:
            topo.graph.nodes[n]["gpu"] = rng.choice(gpus)
    edges = {tuple(sorted((names[i], names[rng.randrange(i)]))) for i in range(1, n_nodes)}
    for _ in range(extra_edges):
        a, b = rng.sample(names, 2)
        edges.add(tuple(sorted((a, b))))
    for a, b in sorted(edges, key=lambda e: rng.random()):
        fwd = rng.choice(BWS)
        rev = fwd if rng.random() < 0.7 else rng.choice(BWS)
        kind = rng.choice(["pcie", "nvlink", "net", "pcie"])
        topo.add_link(a, b, kind, fwd, rng.choice(LATS), Bps_reverse=rev)
    if gpus and rng.random() < 0.5:
        topo.add_cap("agg", 80e9, classes=["p2p-pcie", "h2d"])
    for g in gpus[:2]:
        topo.add_cap(f"{g}.hbm", 3e12, endpoints=[g], edges=[tuple(sorted((g, nb))) for nb in topo.graph[g]],
                     local_copy_coeff=2.0)
    for c in range(rng.randrange(3)):  # caps on links alone (a shared uplink), some of one path class only
        picked = rng.sample(sorted(edges), min(len(edges), rng.randrange(1, 4)))
        directed = [e if rng.random() < 0.5 else e[::-1] for e in picked]
        if rng.random() < 0.5:
            directed.append(picked[0][::-1])  # both directions of one link
        topo.add_cap(f"links{c}", 60e9, edges=directed, classes=rng.choice([[], ["rdma", "p2p-pcie"], ["d2h"]]))
    return topo


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n_nodes=st.integers(2, 40), extra=st.integers(0, 60))
def test_random_topologies_route_as_before(seed, n_nodes, extra):
    topo = random_topology(seed, n_nodes, extra)
    eps = topo.endpoints()
    assert_same_routes(topo, itertools.product(eps, eps))


def test_grids_of_equal_links_break_ties_as_before():
    """A grid of identical switches between endpoints: hundreds of equal-cost routes per pair."""
    topo = Topology("grid")
    k = 6
    for i, j in itertools.product(range(k), range(k)):
        topo.add_component(f"s{i}_{j}", "pcie-switch")
    for i, j in itertools.product(range(k), range(k)):
        if i + 1 < k:
            topo.add_link(f"s{i}_{j}", f"s{i + 1}_{j}", "pcie", 50e9)
        if j + 1 < k:
            topo.add_link(f"s{i}_{j}", f"s{i}_{j + 1}", "pcie", 50e9)
    for c, (i, j) in enumerate([(0, 0), (0, k - 1), (k - 1, 0), (k - 1, k - 1), (2, 3)]):
        topo.add_component(f"gpu{c}", "gpu", spec=GPU_MODELS["H100"])
        topo.add_link(f"gpu{c}", f"s{i}_{j}", "pcie", 50e9)
    eps = topo.endpoints()
    assert_same_routes(topo, itertools.product(eps, eps))


def test_unreachable_pairs_fail_as_before():
    topo = Topology("split")
    for n in ("gpu0", "gpu1"):
        topo.add_component(n, "gpu", spec=GPU_MODELS["H100"])
    topo.add_component("gpu2", "gpu", spec=GPU_MODELS["H100"])
    topo.add_component("sw", "pcie-switch")
    topo.add_link("gpu0", "sw", "pcie", 10e9)
    topo.add_link("gpu1", "gpu2", "pcie", 10e9)
    topo.add_link("gpu2", "sw", "pcie", 10e9)  # gpu1 reaches sw only through gpu2, an endpoint
    with pytest.raises(TopologyError, match="no route from 'gpu0' to 'gpu1'"):
        topo.path("gpu0", "gpu1")
    assert_same_routes(topo, itertools.product(topo.endpoints(), topo.endpoints()))


# ---- warm_paths: the batch search gives the routes of the one-by-one search -------------------------------------
def warm_then_path(topo: Topology, pairs) -> None:
    """Warm every pair, then compare what each pair's path is with the oracle (unroutable pairs are left to
    `path`, which must still raise what it raised)."""
    topo.warm_paths(pairs)
    assert_same_routes(topo, pairs)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n_nodes=st.integers(2, 40), extra=st.integers(0, 60))
@example(seed=524287, n_nodes=33, extra=46)  # a host copy with an equal route through a third machine's switch
def test_warmed_routes_of_random_topologies_are_the_routes(seed, n_nodes, extra):
    topo = random_topology(seed, n_nodes, extra)
    rng = random.Random(seed)
    nodes = list(topo.graph.nodes)
    pairs = list(itertools.product(topo.endpoints(), topo.endpoints()))
    # switches, unknown names and repeats too: they are skipped, and `path` says what is wrong with them
    pairs += [(rng.choice(nodes), rng.choice(nodes)) for _ in range(5)] + [("nowhere", nodes[0])] + pairs[:3]
    rng.shuffle(pairs)
    cold = copy.deepcopy(topo)
    topo.warm_paths(pairs)
    eps = set(topo.endpoints())
    assert_same_routes(topo, [(s, d) for s, d in pairs if s in eps and d in eps])
    for s, d in pairs:  # the others raise what they raise unwarmed
        assert outcome(new_path, topo, s, d) == outcome(new_path, cold, s, d)


def test_warmed_routes_of_a_cluster_are_the_routes_in_batches():
    """More pairs than one compiled call takes (its output fills), on a cluster where ties are everywhere."""
    topo = presets.get("cluster-16x8-h200", calibration=None)
    gpus = topo.gpus()
    pairs = [(a, b) for a in gpus[:12] for b in gpus[64:]]
    route = topo._index().route
    one_by_one = [route.shortest(a, b) for a, b in pairs]
    assert route.shortest_many(pairs) == one_by_one
    assert route.shortest_many(pairs, room=len(route.names) + 20) == one_by_one  # a few routes per call
    warm_then_path(topo, pairs)


def test_warm_leaves_pinned_and_unroutable_pairs_to_path():
    topo = presets.get("cluster-2x8", calibration=None)
    topo.pin_route("node0.gpu0", "node1.gpu3", ["node0.cpu0", "node1.pcisw1"])
    topo.warm_paths([("node0.gpu0", "node1.gpu3"), ("node0.gpu0", "node1.gpu2")])
    assert list(topo._path_cache) == [("node0.gpu0", "node1.gpu2")]  # the pinned pair is routed by `path`
    assert_same_routes(topo, [("node0.gpu0", "node1.gpu3"), ("node0.gpu0", "node1.gpu2")])
    split = Topology("split")
    for n in ("gpu0", "gpu1"):
        split.add_component(n, "gpu", spec=GPU_MODELS["H100"])
    split.warm_paths([("gpu0", "gpu1")])
    assert split._path_cache == {}
    with pytest.raises(TopologyError, match="no route from 'gpu0' to 'gpu1'"):
        split.path("gpu0", "gpu1")
