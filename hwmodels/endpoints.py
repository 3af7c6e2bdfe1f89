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
    backwards range or an empty list.
    """
    items = spec.split(",") if isinstance(spec, str) else [s for x in spec for s in str(x).split(",")]
    out: list[str] = []
    for item in filter(None, (s.strip() for s in items)):
        parts = [_expand_part(p, item) for p in item.split(".")]
        if math.prod(len(p) for p in parts) > MAX_ENDPOINTS:
            raise TopologyError(f"endpoint list item '{item}' names more than {MAX_ENDPOINTS} endpoints")
        out += [".".join(combo) for combo in itertools.product(*parts)]
    if not out:
        raise TopologyError(f"empty endpoint list '{spec if isinstance(spec, str) else ','.join(spec)}'")
    return out
