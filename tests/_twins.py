"""A deep copy of a topology whose network links were edited in place, as some callers edit a copy: its own
path cache, the route index it was copied with. For the tests that check routes follow the copy's links."""

from __future__ import annotations

import copy
from collections.abc import Callable

from fabricsim.hwmodels.topology import Topology


def net_edited_twin(topo: Topology, edit: Callable[[dict], None]) -> Topology:
    """`topo` deep-copied, `edit` applied to the data of each of its `net` links, with a fresh path cache."""
    twin = copy.deepcopy(topo)
    for d in twin.graph.edges.values():
        if d["kind"] == "net":
            edit(d)
    twin._path_cache = {}
    return twin
