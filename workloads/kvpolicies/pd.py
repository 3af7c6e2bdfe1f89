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

from .base import KVPolicy, Seq, StepWork
from .params import check_positive


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
        self.prefill_instances = int(check_positive(self.name, "prefill_instances", prefill_instances))
        self.decode_instances = int(check_positive(self.name, "decode_instances", decode_instances))

    def roles(self, instances: int) -> list[str]:
        """Instance roles in GPU order (the config's `instances` is ignored: the split decides)."""
        return ["prefill"] * self.prefill_instances + ["decode"] * self.decode_instances

    def instance_policy(self, role: str) -> KVPolicy:
        return _PrefillSide() if role == "prefill" else KVPolicy()

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "prefill_instances": self.prefill_instances,
                "decode_instances": self.decode_instances}
