"""The network at a glance, for `fabricsim topo show`: what each network switch joins and how oversubscribed it is.

A cluster's link table runs to thousands of lines, and the facts a person asks of a fabric (which nodes share a
leaf, how much a leaf can send up against what its NICs can send in) are sums over it. They are read from the
graph, so a topology file says the same as the preset it was written from.
"""

from __future__ import annotations

from typing import Any

from .endpoints import compress_endpoints
from .symmetry import machine_of

MAX_SHOWN = 12  # switches listed one per line; the rest are counted


def network_lines(graph: Any) -> list[str]:
    """One line per network switch (at most `MAX_SHOWN`): its NICs and their machines, the bandwidth they can send
    into it, its links to other switches, and the ratio of the two (oversubscription) where it has both."""
    switches = sorted((n for n, k in graph.nodes(data="kind") if k == "net-switch"), key=_natural)
    if not switches:
        return []
    lines = ["network (GB/s into each switch from its NICs; to other switches; NIC : uplink ratio):"]
    for sw in switches[:MAX_SHOWN]:
        nics, peers = [], []
        down = up = 0.0
        for other in graph.neighbors(sw):
            bw = graph.edges[sw, other]["bw"]
            kind = graph.nodes[other].get("kind")
            if kind == "nic":
                nics.append(other)
                down += bw[(other, sw)]
            elif kind == "net-switch":
                peers.append(other)
                up += bw[(sw, other)]
        parts = []
        if nics:
            machines = sorted({machine_of(n) or n for n in nics}, key=_natural)
            parts.append(f"{len(nics)} NICs of {compress_endpoints(machines)}, {down / 1e9:.1f} in")
        if peers:
            parts.append(f"{up / 1e9:.1f} to {compress_endpoints(sorted(peers, key=_natural))}")
        if nics and peers and up > 0:
            parts.append(f"{down / up:.2f}:1")
        lines.append(f"  {sw:<12} " + "; ".join(parts))
    if len(switches) > MAX_SHOWN:
        lines.append(f"  ... ({len(switches) - MAX_SHOWN} more switches)")
    return lines


def _natural(name: str) -> tuple:
    """Sort key that puts leaf2 before leaf10."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return (head, int(tail) if tail else -1)
