"""Endpoint lists with ranges: `gpu0-3`, `node2.gpu0-7`, `node0-63.gpu0-7` (64 nodes x 8 GPUs).

One parser for every place that takes a list of endpoints (the sync CLI's --trainer/--rollout, the placement
layouts), so a 1,024-GPU cluster is one short string instead of 128 comma-separated entries. Each dot-separated
part of an item may end in a range `LO-HI`; ranges expand outer part first (node-major order: node0.gpu0,
node0.gpu1, ..., node1.gpu0, ...), which is the order rings and layouts expect.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable

from fabricsim.errors import TopologyError

_PART = re.compile(r"^(.*?)(\d+)-(\d+)$")
# More endpoints than this in one item is a typo (gpu0-99999999999), not a machine; checked before expanding,
# which would otherwise build the list for minutes.
MAX_ENDPOINTS = 1 << 20


def _expand_part(part: str, item: str) -> list[str]:
    m = _PART.match(part)
    if not m:
        return [part]
    lo, hi = int(m[2]), int(m[3])
    if hi < lo:
        raise TopologyError(f"range '{part}' in endpoint list item '{item}' runs backwards")
    if hi - lo >= MAX_ENDPOINTS:
        raise TopologyError(f"range '{part}' in endpoint list item '{item}' names {hi - lo + 1} endpoints "
                            f"(at most {MAX_ENDPOINTS})")
    return [f"{m[1]}{i}" for i in range(lo, hi + 1)]


def expand_endpoints(spec: str | Iterable[str]) -> list[str]:
    """'node0-1.gpu0-1,host' -> ['node0.gpu0', 'node0.gpu1', 'node1.gpu0', 'node1.gpu1', 'host'].

    A list is expanded item by item (each item may itself hold ranges or commas). Raises `TopologyError` for a
    backwards range, an empty list or an empty item (`gpu0,,gpu2`, `gpu0-3,`: a name left out, as an unset shell
    variable leaves it, which was skipped silently).
    """
    items = spec.split(",") if isinstance(spec, str) else [s for x in spec for s in str(x).split(",")]
    shown = spec if isinstance(spec, str) else ",".join(map(str, spec))
    if any(s.strip() for s in items) and not all(s.strip() for s in items):
        raise TopologyError(f"endpoint list '{shown}' has an empty item (two commas in a row, or one at an end)")
    out: list[str] = []
    for item in filter(None, (s.strip() for s in items)):
        parts = [_expand_part(p, item) for p in item.split(".")]
        if math.prod(len(p) for p in parts) > MAX_ENDPOINTS:
            raise TopologyError(f"endpoint list item '{item}' names more than {MAX_ENDPOINTS} endpoints")
        out += [".".join(combo) for combo in itertools.product(*parts)]
    if not out:
        raise TopologyError(f"empty endpoint list '{shown}'")
    return out


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _runs(stem: str, numbers: list[int]) -> list[str]:
    """'gpu', [0, 1, 2, 5] -> ['gpu0-2', 'gpu5']: the consecutive runs of numbered names, as ranges."""
    out: list[str] = []
    for _, run in itertools.groupby(enumerate(sorted(numbers)), key=lambda t: t[1] - t[0]):
        ns = [n for _, n in run]
        out.append(f"{stem}{ns[0]}" if len(ns) == 1 else f"{stem}{ns[0]}-{ns[-1]}")
    return out


def _spell(names: list[str]) -> list[str]:
    """Names as ranges where they count up under one stem ('gpu0', 'gpu1', 'host' -> 'gpu0-1', 'host')."""
    stems: dict[str, list[int]] = {}
    rest: list[str] = []
    for name in names:
        m = _NUMBERED.match(name)
        if m:
            stems.setdefault(m[1], []).append(int(m[2]))
        else:
            rest.append(name)
    return [x for stem, ns in stems.items() for x in _runs(stem, ns)] + rest


def natural_key(name: str) -> tuple:
    """Sort key that reads the numbers in a name as numbers: node2.gpu1 before node10.gpu0, leaf2 before leaf10
    (plain string order puts node100 before node64, and a tie broken by it names an odd GPU)."""
    parts = _DIGITS.split(name)  # text, digits, text, ...: the runs of ASCII digits at the odd places
    # the parts in a tuple of their own, the name after it (gpu01 and gpu1 differ): the name beside the parts
    # compared a text with a number where one name was the other's prefix ('gpu' and 'gpu0'), a TypeError
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


_DIGITS = re.compile(r"([0-9]+)")


def spell_for_message(names: list[str], limit: int = 200) -> str:
    """`names` as an error message lists them: `compress_endpoints`'s ranges, or, where those run past `limit`
    characters (names that do not count up), the first dozen and how many there are."""
    shown = compress_endpoints(names)
    if len(shown) > limit:
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return shown


def compress_endpoints(names: list[str], *, ordered: bool = False) -> str:
    """A short spelling of `names` in the notation `expand_endpoints` reads, for messages: a 4,096-GPU cluster's
    endpoints as 'node0-511.gpu0-7, node0-511.host0, node0-511.nvme0' rather than its first dozen names. Nodes that
    hold the same local endpoints share one node range; the result is checked to expand to exactly the set of
    `names` (with `ordered`, to `names` in their order: a collective's ring, where gpu7, gpu3, gpu5 is not
    gpu3, gpu5, gpu7), and they are listed instead where it would not."""
    by_local: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in names:
        node, _, local = name.partition(".")
        m = _NUMBERED.match(node) if local else None
        if m and m[1] == "node":
            by_local.setdefault(local, []).append(int(m[2]))
        else:
            plain.append(name)
    groups: dict[tuple[int, ...], list[str]] = {}
    for local, nodes in by_local.items():
        groups.setdefault(tuple(sorted(set(nodes))), []).append(local)
    parts = _spell(plain) + [f"{n}.{lp}" for nodes, locals_ in groups.items()
                             for n in _runs("node", list(nodes)) for lp in _spell(locals_)]
    short = ", ".join(parts)
    spelled = expand_endpoints(short)
    same = spelled == list(names) if ordered else sorted(spelled) == sorted(names)
    return short if same else ", ".join(names)
