"""Weight sync: getting new weights from the trainer GPUs to the rollout GPUs, strategy by strategy.

    from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync
    result = simulate_sync(setup, get("rdma-p2p"))

Strategies (registered by name; see each module's docstring for the procedure and its cost defaults):
`nccl-broadcast`, `cuda-ipc-buckets`, `host-staged`, `rdma-p2p`, `shared-pool` (`:zero-copy`,
`:pull-on-publish`, `:relay`) and the `delta:<strategy>` wrapper; `SyncSetup(rollout_dtype="fp8")` adds conversion.
"""

from .base import SyncResult, SyncSetup, delta_encoding, fp8_conversion, simulate_sync
from .registry import get, names

__all__ = ["SyncResult", "SyncSetup", "delta_encoding", "fp8_conversion", "get", "names", "simulate_sync"]
