"""Memory as a shared resource: every copy that reads or writes a GPU's HBM or a socket's DRAM draws on it.

Its own module because presets, topology files and `nvidia-smi topo -m` imports all add the same caps after
building the graph, and none of them should import another to get it.
"""

from __future__ import annotations

from .topology import Topology


def add_memory_caps(t: Topology) -> None:
    """HBM and socket DRAM as caps drawn by every copy that reads or writes them (twice for a local copy)."""
    for n, kind in list(t.graph.nodes(data="kind")):
        if kind not in ("gpu", "host"):
            continue
        spec = t.graph.nodes[n]["spec"]
        edges = [e for nb in t.graph.neighbors(n) for e in ((n, nb), (nb, n))]
        derating = spec.hbm_derating if kind == "gpu" else spec.derating
        t.add_cap(f"{n}.{'hbm' if kind == 'gpu' else 'dram'}", derating.Bps, edges=edges, endpoints=[n],
                  local_copy_coeff=2.0, derating=derating)
