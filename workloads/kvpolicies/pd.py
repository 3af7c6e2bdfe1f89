"""`pd-disaggregation`: prefill on some GPUs, decode on others, KV shipped layer group by layer group.

DistServe, Splitwise and Mooncake separate the compute-bound prefill from the memory-bound decode. Here
`prefill_instances` instances only prefill; as each layer group of a prefill chunk finishes, its KV is sent
to the sequence's decode instance (over NVLink inside a node, RDMA between nodes, PCIe otherwise: the
topology's route decides), overlapped with the next groups' compute. A sequence joins its decode instance's
batch once the last group has landed. The decode side admits arrivals like swapped-in sequences; its own
KV policy is `hbm-only`. Simplification: the decode instance accepts KV without reserving memory first
(real systems pull when there is room), so back-pressure from a full decode instance is not modelled.
"""

from __future__ import annotations

from typing import Any

from fabricsim.hwmodels.endpoints import MAX_ENDPOINTS

from .base import KVPolicy, Seq, StepWork
from .params import check_count


class _PrefillSide(KVPolicy):
    """Prefill instances: KV in HBM, and every new token's KV pushed to the sequence's decode instance."""

    name = "pd-prefill"

    def add_seq_work(self, work: StepWork, seq: Seq, ctx: float, new: int) -> None:
        super().add_seq_work(work, seq, ctx, new)
        if seq.decode_instance is not None:
            nbytes = self.layout.bytes_per_gpu(new, paged=False)
            work.pushes[seq.decode_instance] = work.pushes.get(seq.decode_instance, 0.0) + nbytes


class PDDisaggregation(KVPolicy):
    name = "pd-disaggregation"

    def __init__(self, prefill_instances: int = 1, decode_instances: int = 1) -> None:
        # Each instance takes at least one GPU, and no GPU list names more than MAX_ENDPOINTS.
        self.prefill_instances = check_count(self.name, "prefill_instances", prefill_instances, most=MAX_ENDPOINTS)
        self.decode_instances = check_count(self.name, "decode_instances", decode_instances, most=MAX_ENDPOINTS)

    def role_counts(self, instances: int) -> dict[str, int]:
        """How many instances take each role, in GPU order (the config's `instances` is ignored: the split
        decides). Counts, not a list of roles: the serving system checks them against its GPUs first."""
        return {"prefill": self.prefill_instances, "decode": self.decode_instances}

    def instance_policy(self, role: str) -> KVPolicy:
        return _PrefillSide() if role == "prefill" else KVPolicy()

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "prefill_instances": self.prefill_instances,
                "decode_instances": self.decode_instances}
