"""KV policies by name, so studies and the CLI pick them with a string ("host-offload", "topk-paging").

One explicit table (the weight-sync registry has the same shape): adding a policy means writing its module
and adding its class here; policy modules never import this one back.
"""

from __future__ import annotations

from typing import Any

from ..keyvalue import coerce_all, settings_of
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
    cls = POLICIES.get(name) if isinstance(name, str) else None  # a list as a name is no TypeError
    if cls is None:
        raise PolicyError(f"unknown KV policy '{name}' (known: {', '.join(POLICIES)})")
    typed = coerce_all(params, settings_of(cls), f"policy '{name}'", PolicyError, noun="parameter")
    return cls(**typed)
