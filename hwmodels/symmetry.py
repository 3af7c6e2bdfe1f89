"""`Machines`: which machines of a topology are copies of one another, so that one searched route stands for
every route of the same shape (`Topology` renames it).

Why: a point-to-point sync between the two halves of a 1,024-GPU cluster asks for 262,144 distinct routes, and
searching and building each one cost ~10 us, about 40% of a pull-on-publish sync's wall time. The machines of
a cluster are copies of one another: exchanging the names node3 and node7 maps the topology onto itself, so the
route node7.gpu2 -> node9.gpu5 is the route node0.gpu2 -> node1.gpu5 with its machines renamed, provided that
route is the only shortest one. Among equal-cost routes the search picks one by the order it visits nodes in,
which follows names and the order links were added, and renaming does not keep that order: the caller asks
`RouteIndex.unique` and searches such routes one by one, as before.

A machine is the part of a component's name before its first '.' (`node7` of `node7.gpu2`); names without a
dot (`rail3`, `spine`) are shared. Two machines are interchangeable when their descriptions agree once each one's
own name is taken out of them: components (kind and attributes), links (ends, kind, latency, bandwidth each way) and
caps (name, bandwidth, links, classes, endpoints). Exchanging two such machines is then an automorphism: every
component, link or cap naming one maps onto one naming the other, and nothing else moves. To keep that argument
short, a machine named together with another machine by any link, cap or attribute is interchangeable with
none (it stands for itself only), and a topology with pinned routes has no interchangeable machines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def machine_of(name: str) -> str:
    """The machine a component name belongs to: the part before its first '.', or '' for a shared name."""
    i = name.find(".")
    return name[:i] if i > 0 else ""


class Machines:
    """The interchangeable machines of one graph and its caps, as they were when this was built.

    `standin(s, d)` maps a copy's ends onto the ends of the representative copy of its shape: within a class of
    interchangeable machines the first stands for every machine, and the second for the other end of a copy
    between two machines of one class."""

    def __init__(self, nodes: Iterable[tuple[str, dict]], edges: Iterable[tuple[str, str, dict]],
                 caps: Iterable[Any]) -> None:
        nodes = list(nodes)
        self.names = {m for n, _ in nodes if (m := machine_of(n))}
        self._canon: dict = {}  # one object per name and (name, coefficient) pair made by renaming (`RouteTemplate`)
        described: dict[str, list[str]] = {m: [] for m in self.names}
        mixed: set[str] = set()

        def note(names: Iterable[str], what: tuple) -> None:
            owners = self._owners(names)
            if len(owners) > 1:
                mixed.update(owners)
            elif owners:
                m = owners.pop()
                described[m].append(repr(_written(what, m)))

        for n, attrs in nodes:
            texts = [v for v in attrs.values() if isinstance(v, str)]
            note([n, *texts], ("node", n, list(attrs.items())))
        for u, v, d in edges:
            note([u, v], ("link", list(d["bw"].items()), [(k, x) for k, x in d.items() if k != "bw"]))
        for cap in caps:
            names = [cap.name, *cap.endpoints, *(x for e in cap.edges for x in e)]
            note(names, ("cap", cap.name, cap.Bps, list(cap.edges), list(cap.classes), list(cap.endpoints),
                         cap.local_copy_coeff))
        classes: dict[tuple[str, ...], list[str]] = {}
        for m in dict.fromkeys(machine_of(n) for n, _ in nodes):  # in the graph's order: deterministic
            if m in self.names:
                key = ("!" + m,) if m in mixed else tuple(sorted(described[m]))
                classes.setdefault(key, []).append(m)
        # machine -> (the first machine of its class, the second or '')
        self.rep: dict[str, tuple[str, str]] = {}
        for members in classes.values():
            pair = (members[0], members[1] if len(members) > 1 else "")
            for m in members:
                self.rep[m] = pair

    def _owners(self, names: Iterable[str]) -> set[str]:
        return {m for x in names for part in x.split("->") if (m := machine_of(part)) in self.names}

    def standin(self, s: str, d: str) -> tuple[str, str, str, str] | None:
        """(s0, d0, machine of s, machine of d) where s0 -> d0 is the representative copy of s -> d: its route with
        its machines renamed to these two is s -> d's (see `template`). None when s -> d is its own representative
        (nothing to rename) or involves no machine. Called once per distinct copy, so written for speed."""
        ms, dot_s, _ = s.partition(".")
        md, dot_d, _ = d.partition(".")
        rs = self.rep.get(ms) if dot_s else None
        rd = self.rep.get(md) if dot_d else None
        if rs is None:
            if rd is None:
                return None
            ms, a0 = "", ""
        else:
            a0 = rs[0]
        if rd is None:
            md, b0 = "", ""
        elif ms == md:
            b0 = a0
        else:
            b0 = rd[0] if rs is None or rs[0] != rd[0] else rs[1]  # (two machines of one class: its second)
        if a0 == ms and b0 == md:
            return None
        return a0 + s[len(ms):], b0 + d[len(md):], ms, md

    def template(self, s0: str, d0: str, entry: tuple) -> RouteTemplate | None:
        """The template of the representative copy s0 -> d0 whose path-cache entry is `entry` (see
        `RouteTemplate`); None when a name of it involves a machine other than those of s0 and d0, or both (the
        route would not rename into the other copies' routes)."""
        slot_of = {}
        if (m := machine_of(s0)) in self.names:
            slot_of[m] = 1
        if (m := machine_of(d0)) in self.names:
            slot_of.setdefault(m, 2)
        nodes, cls, resources, latency, engine = entry
        names: list = []
        slots = []
        for name in [*nodes, *(r for r, _ in resources), *([engine] if engine is not None else [])]:
            owners = self._owners([name])
            if not owners:
                slots.append(0)
                names.append(name)
            elif len(owners) == 1 and (m := owners.pop()) in slot_of:
                slots.append(slot_of[m])
                # its parts (a link's two ends), each with whether it is the machine's and what follows the machine
                names.append([(machine_of(p) == m, p[len(m):] if machine_of(p) == m else p) for p in name.split("->")])
            else:
                return None
        return RouteTemplate(names, slots, len(nodes), tuple(c for _, c in resources), cls, latency,
                             engine is not None, self._canon)


class RouteTemplate:
    """A representative copy's path-cache entry with its two machines left open: `entry(a, b)` is the entry of the
    copy between machines a and b (`Machines.standin`) that the representative stands for.

    Every name of the route belongs to the source's machine (slot 1), the destination's (slot 2) or neither (0),
    and the names of one slot for one machine are made once (`_side`) and shared by every route that has them, as
    one topology's routes share its link names: a 1,024-GPU pull-on-publish sync keeps 262,144 routes, and new
    strings and pairs per route held 0.4 GB more than searched routes did. The resources are sorted again after
    renaming: a name's place among the others follows the machines' names (`node9.x` sorts after `node10.x`)."""

    __slots__ = ("_names", "_slots", "_n", "_coefs", "cls", "latency", "_queued", "_canon", "_shared", "_sides",
                 "_order")

    def __init__(self, names: list, slots: list[int], n_nodes: int, coefs: tuple[float, ...], cls: str,
                 latency: float, queued: bool, canon: dict) -> None:
        self._names, self._slots, self._n, self._coefs = names, slots, n_nodes, coefs
        self.cls, self.latency, self._queued, self._canon = cls, latency, queued, canon
        self._shared = self._side(0, "")
        self._sides: tuple[dict, dict] = ({}, {})
        # where each node of the route is in (slot 1's nodes + slot 0's + slot 2's)
        by_slot = [[i for i in range(n_nodes) if slots[i] == k] for k in (1, 0, 2)]
        at = {i: j for j, i in enumerate(by_slot[0] + by_slot[1] + by_slot[2])}
        self._order = tuple(at[i] for i in range(n_nodes))

    def _side(self, slot: int, machine: str) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...], str | None]:
        """(nodes, (resource, coefficient) pairs, engine) of one slot with `machine` in its place."""
        canon, n, k = self._canon, self._n, len(self._coefs)
        made = []
        for name, s in zip(self._names, self._slots, strict=True):
            if s != slot:
                made.append(None)
                continue
            if slot:
                name = "->".join(machine + rest if own else rest for own, rest in name)
            made.append(canon.setdefault(name, name))
        nodes = tuple(x for x in made[:n] if x is not None)
        pairs = tuple(canon.setdefault((x, c), (x, c)) for x, c in zip(made[n:n + k], self._coefs, strict=True)
                      if x is not None)
        engine = made[-1] if self._queued else None
        return nodes, pairs, engine

    def entry(self, a: str, b: str) -> tuple:
        """The path-cache entry (nodes, path class, resources, latency, engine) of the copy from machine a to
        machine b that this template's representative stands for."""
        sa = self._sides[0].get(a)
        if sa is None:
            sa = self._sides[0][a] = self._side(1, a)
        sb = self._sides[1].get(b)
        if sb is None:
            sb = self._sides[1][b] = self._side(2, b)
        sh = self._shared
        nodes = sa[0] + sh[0] + sb[0]
        return (tuple(map(nodes.__getitem__, self._order)), self.cls, tuple(sorted(sa[1] + sh[1] + sb[1])),
                self.latency, sa[2] or sh[2] or sb[2])


def _written(what: Any, m: str) -> Any:
    """`what` (tuples, in order, and lists, in any order, of names, numbers and specs) with machine m's own name
    taken out, each list sorted once written so: two machines' descriptions compare equal whatever order their
    names sorted in. A name becomes the tuple of its parts (a link's two ends), each part of m's own as (None,
    what follows m): no string, whatever its characters, reads the same as another machine's own name."""
    if isinstance(what, str):
        return tuple((None, p[len(m):]) if machine_of(p) == m else p for p in what.split("->"))
    if isinstance(what, tuple):
        return tuple(_written(x, m) for x in what)
    if isinstance(what, list):
        return tuple(sorted((_written(x, m) for x in what), key=repr))
    return what
