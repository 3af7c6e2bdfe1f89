"""The network at a glance, for `fabricsim topo show`: what each network switch joins and how oversubscribed it is.

A cluster's link table runs to thousands of lines, and the facts a person asks of a fabric (which nodes share a
leaf, how much a leaf can send up against what its NICs can send in) are sums over it. They are read from the
graph, so a topology file says the same as the preset it was written from. A link between switches that no two
machines' NICs lie on either side of (the spine of a one-leaf fabric; every switch link of a one-node cluster)
carries nothing: its bandwidth and the ratio it would make are not shown, as they would mean nothing.
"""

from __future__ import annotations

from typing import Any

from .endpoints import compress_endpoints, natural_key
from .symmetry import machine_of

MAX_SHOWN = 12  # switches listed one per line; the rest are counted


def gb_per_s(Bps: float) -> str:
    """A bandwidth in GB/s as `topo show` prints it: one decimal, or two significant digits below 1 GB/s (a
    `-nic0.001g` cluster's links are 0.000125 GB/s, which one decimal showed as 0.0, a dead link)."""
    x = Bps / 1e9
    return f"{x:.1f}" if x >= 0.95 or x == 0 else f"{x:.2g}"


def network_lines(graph: Any) -> list[str]:
    """One line per network switch (at most `MAX_SHOWN`): its NICs and their machines, the bandwidth they can send
    into it, its links to other switches that traffic crosses, and the ratio of the two (oversubscription) where it
    has both; links nothing crosses are named as such (`_crossed`)."""
    switches = sorted((n for n, k in graph.nodes(data="kind") if k == "net-switch"), key=natural_key)
    if not switches:
        return []
    nics_of = {sw: [n for n in graph.neighbors(sw) if graph.nodes[n].get("kind") == "nic"] for sw in switches}
    peers_of = {sw: [n for n in graph.neighbors(sw) if n in nics_of] for sw in switches}
    lines = ["network (GB/s into each switch from its NICs; to other switches; NIC : uplink ratio):"]
    for sw in switches[:MAX_SHOWN]:
        nics = nics_of[sw]
        peers = [p for p in peers_of[sw] if _crossed(sw, p, nics_of, peers_of)]
        idle = sorted(set(peers_of[sw]) - set(peers), key=natural_key)
        if not nics and not peers:
            lines.append(f"  {sw:<12} carries nothing: every NIC reaches every other without it")
            continue
        down = sum(graph.edges[sw, n]["bw"][(n, sw)] for n in nics)
        up = sum(graph.edges[sw, p]["bw"][(sw, p)] for p in peers)
        parts = []
        if nics:
            machines = sorted({machine_of(n) or n for n in nics}, key=natural_key)
            parts.append(f"{len(nics)} NIC{'' if len(nics) == 1 else 's'} of {compress_endpoints(machines)}, "
                         f"{gb_per_s(down)} in")
        if peers:
            parts.append(f"{gb_per_s(up)} to {compress_endpoints(sorted(peers, key=natural_key))}")
        if nics and peers and up > 0:
            parts.append(f"{down / up:.2f}:1")
        if idle:
            parts.append(f"nothing crosses to {compress_endpoints(idle)} (no other machine's NIC beyond)")
        lines.append(f"  {sw:<12} " + "; ".join(parts))
    if len(switches) > MAX_SHOWN:
        lines.append(f"  ... ({len(switches) - MAX_SHOWN} more switches)")
    return lines


def _crossed(sw: str, peer: str, nics_of: dict[str, list], peers_of: dict[str, list]) -> bool:
    """Whether traffic can cross the link between switches `sw` and `peer`: NICs of two different machines on its
    two sides (reached from each end over switch links without passing the other end; a machine's own GPUs and
    memories reach each other without the network). A one-leaf fabric's spine has no NIC on its side; a one-node
    cluster's rails have only their machine's."""
    near, far = _machines_reached(sw, peer, nics_of, peers_of), _machines_reached(peer, sw, nics_of, peers_of)
    return bool(near) and bool(far) and len(near | far) > 1


def _machines_reached(start: str, avoid: str, nics_of: dict[str, list], peers_of: dict[str, list]) -> set[str]:
    """The machines of the NICs on the switches reached from `start` over switch links, never through `avoid`."""
    seen, todo, machines = {start, avoid}, [start], set()
    while todo:
        sw = todo.pop()
        machines.update(machine_of(n) or n for n in nics_of[sw])
        for peer in peers_of[sw]:
            if peer not in seen:
                seen.add(peer)
                todo.append(peer)
    return machines
