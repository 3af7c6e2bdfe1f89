"""`Machines`: which machines of a topology are copies of one another, so that one searched route stands for
every route of the same shape (`Topology` renames it).

Why: a point-to-point sync between the two halves of a 1,024-GPU cluster asks for 262,144 distinct routes, and
searching and building each one cost ~10 us, about half of a pull-on-publish sync's wall time. The machines of
a cluster are copies of one another: exchanging the names node3 and node7 maps the topology onto itself, so the
route node7.gpu2 -> node9.gpu5 is the route node0.gpu2 -> node1.gpu5 with its machines renamed, provided that
route is the only shortest one. Among equal-cost routes the search picks one by the order it visits nodes in,
which follows names and the order links were added, and renaming does not keep that order: the caller asks
`RouteIndex.unique` and searches such routes one by one, as before.

A machine is the part of a component's name before its first '.' (`node7` of `node7.gpu2`); names without a
dot (`rail3`, `spine`) are shared. Two machines are interchangeable when their descriptions agree once each one's
own name is written '@': components (kind and attributes), links (ends, kind, latency, bandwidth each way) and
caps (name, bandwidth, links, classes, endpoints). Exchanging two such machines is then an automorphism: every
component, link or cap naming one maps onto one naming the other, and nothing else moves. To keep that argument
short, a machine named together with another machine by any link, cap or attribute is interchangeable with
none (it stands for itself only), and a topology with pinned routes has no interchangeable machines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_MARKS = frozenset("\0\1\2")  # a template's separators and machine marks (`Machines.template`)


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
        self.names = {m for n, _ in nodes if (m := machine_of(n)) and not _MARKS.intersection(m)}
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

    def template(self, s0: str, d0: str, names: list[str]) -> str | None:
        """The names of the route s0 -> d0 (its representative copy) as one string, NUL between names, with the
        machine of s0 written \\1 and that of d0 \\2 (`rename` puts other machines in their place); None when a
        name involves a third machine (the route would not rename into the other copies' routes) or holds one of
        those three characters."""
        sub = {}
        if (m := machine_of(s0)) in self.names:
            sub[m] = "\1"
        if (m := machine_of(d0)) in self.names:
            sub.setdefault(m, "\2")
        out = []
        for name in names:
            if _MARKS.intersection(name):
                return None
            pieces = []
            for part in name.split("->"):
                m = machine_of(part)
                if m in sub:
                    pieces.append(sub[m] + part[len(m):])
                elif m in self.names:
                    return None
                else:
                    pieces.append(part)
            out.append("->".join(pieces))
        return "\0".join(out)


def rename(template: str, a: str, b: str) -> list[str]:
    """The names of a `Machines.template` with machines a and b put in place (machine names hold no marks:
    `Machines` leaves out any that does)."""
    return template.replace("\1", a).replace("\2", b).split("\0")


def _written(what: Any, m: str) -> Any:
    """`what` (tuples, in order, and lists, in any order, of names, numbers and specs) with machine m's own name
    written '@', each list sorted once written so: two machines' descriptions compare equal whatever order
    their names sorted in."""
    if isinstance(what, str):
        return "->".join("@" + p[len(m):] if machine_of(p) == m else p for p in what.split("->"))
    if isinstance(what, tuple):
        return tuple(_written(x, m) for x in what)
    if isinstance(what, list):
        return tuple(sorted((_written(x, m) for x in what), key=repr))
    return what
