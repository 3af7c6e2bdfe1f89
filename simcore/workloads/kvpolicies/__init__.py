"""KV-cache placement and movement policies, registered by name so studies and the CLI pick them by string.

    from simcore.workloads.kvpolicies import make_policy, names
    policy = make_policy("host-offload", prefetch_depth=2)

- `hbm-only`: every sequence's KV in HBM; preemption swaps to host or recomputes (vLLM);
- `host-offload`: KV in pinned host memory, fetched layer group by layer group, overlapped with compute
  (FlexGen, CachedAttention);
- `topk-paging`: stable heads keep their top-K pages in HBM, the rest on the host; periodic reranking
  fetches promoted pages (FlexiCache);
- `prefix-sharing`: a shared prefix stored once, read once per batch (Hydragen, RelayAttention) or once
  per sequence; LRU prefix cache spilling to host;
- `system-prompt-compression`: the system prompt's KV compressed once offline; a dynamic fraction
  recomputed per request;
- `async-compression`: older context compressed in the background at run time;
- `pd-disaggregation`: prefill and decode on different GPUs; KV shipped layer group by layer group during
  prefill (DistServe, Mooncake).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import WorkloadError
from .base import KVPolicy, Seq, StepItem, StepWork


class PolicyError(WorkloadError):
    """A KV policy that does not exist, or a parameter it does not take or cannot accept."""


def _registry() -> dict[str, type[KVPolicy]]:
    from .compression import AsyncCompression, SystemPromptCompression
    from .host_offload import HostOffload
    from .pd import PDDisaggregation
    from .prefix import PrefixSharing
    from .topk import TopKPaging

    classes = [KVPolicy, HostOffload, TopKPaging, PrefixSharing, SystemPromptCompression, AsyncCompression,
               PDDisaggregation]
    return {c.name: c for c in classes}


def names() -> list[str]:
    return list(_registry())


def make_policy(name: str, **params: Any) -> KVPolicy:
    """A fresh policy object by registered name; `PolicyError` lists the known names or the bad parameter."""
    reg = _registry()
    cls = reg.get(name)
    if cls is None:
        raise PolicyError(f"unknown KV policy '{name}' (known: {', '.join(reg)})")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(set(params) - set(known))
    if bad:
        raise PolicyError(f"policy '{name}' has no parameter {', '.join(bad)} "
                          f"(it takes: {', '.join(known) or 'none'})")
    return cls(**params)


def _number(policy: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise PolicyError(f"policy '{policy}': {what} must be a number, got {value!r}")
    return value


def check_fraction(policy: str, what: str, value: float, *, lo_open: bool = False) -> float:
    """A parameter that must lie in [0, 1] (or (0, 1] with `lo_open`)."""
    value = _number(policy, what, value)
    ok = (0 < value <= 1) if lo_open else (0 <= value <= 1)
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be in {'(0' if lo_open else '[0'}, 1], got {value}")
    return float(value)


def check_positive(policy: str, what: str, value: float, *, allow_zero: bool = False) -> float:
    value = _number(policy, what, value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise PolicyError(f"policy '{policy}': {what} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


__all__ = ["KVPolicy", "PolicyError", "Seq", "StepItem", "StepWork", "check_fraction", "check_positive",
           "make_policy", "names"]
