"""KV-cache placement and movement policies, registered by name so studies and the CLI pick them by string.

    from fabricsim.workloads.kvpolicies import make_policy, names
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

from .base import KVPolicy, Seq, ServingInstance, SplitsRoles, StepItem, StepWork
from .params import PolicyError, check_count, check_fraction, check_positive, check_ratio
from .registry import POLICIES, make_policy, names

__all__ = ["POLICIES", "KVPolicy", "PolicyError", "Seq", "ServingInstance", "SplitsRoles", "StepItem", "StepWork",
           "check_count", "check_fraction", "check_positive", "check_ratio", "make_policy", "names"]
