"""KV policies by name, so studies and the CLI pick them with a string ("host-offload", "topk-paging").

One explicit table (the weight-sync registry has the same shape): adding a policy means writing its module
and adding its class here; policy modules never import this one back.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import KVPolicy
from .compression import AsyncCompression, SystemPromptCompression
from .host_offload import HostOffload
from .params import PolicyError
from .pd import PDDisaggregation
from .prefix import PrefixSharing
from .topk import TopKPaging

POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (KVPolicy, HostOffload, TopKPaging, PrefixSharing, SystemPromptCompression, AsyncCompression,
                PDDisaggregation)
}


def names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, **params: Any) -> KVPolicy:
    """A fresh policy object by registered name; `PolicyError` lists the known names or the bad parameter."""
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyError(f"unknown KV policy '{name}' (known: {', '.join(POLICIES)})")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(set(params) - set(known))
    if bad:
        raise PolicyError(f"policy '{name}' has no parameter {', '.join(bad)} "
                          f"(it takes: {', '.join(known) or 'none'})")
    return cls(**params)
