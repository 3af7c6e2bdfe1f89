"""`host-offload`: every sequence's KV lives in pinned host memory and streams in layer group by group.

FlexGen and CachedAttention keep KV in host DRAM and overlap its transfer with compute: while layer group
g computes, groups g+1..g+depth are already on their way. HBM then holds only the in-flight buffers, so the
batch is no longer limited by HBM but every step moves the whole batch's KV over PCIe: a step can be no
faster than KV bytes / host-link bandwidth. New KV (the prompt's, then one token per step) is written back
to the host as each group finishes.
"""

from __future__ import annotations

from typing import Any

from .base import KVPolicy, Seq, StepWork
from .params import check_count


class HostOffload(KVPolicy):
    name = "host-offload"
    coalescible = False

    def __init__(self, prefetch_depth: int = 1) -> None:
        self.prefetch_depth = check_count(self.name, "prefetch_depth", prefetch_depth, allow_zero=True)

    def _buffer_fraction(self) -> float:
        """Share of a sequence's KV resident in HBM: the groups being computed and prefetched."""
        return min(1.0, (self.prefetch_depth + 1) / self.instance.layer_groups)  # at most the layers: ServingSystem

    def hbm_bytes(self, seq: Seq, kv_tokens: int) -> float:
        return self.layout.bytes_per_gpu(kv_tokens) * self._buffer_fraction()

    def host_bytes(self, seq: Seq, kv_tokens: int) -> float:
        return self.layout.bytes_per_gpu(kv_tokens)

    def add_seq_work(self, work: StepWork, seq: Seq, ctx: float, new: int) -> None:
        lay = self.layout
        fetch = lay.bytes_per_gpu(ctx, paged=False)
        write = lay.bytes_per_gpu(new, paged=False)
        work.fetch_bytes += fetch
        work.fetch_copies += lay.page_copies(ctx)
        work.hbm_bytes += fetch + write  # attention reads the fetched buffer; new KV lands in HBM first
        work.kv_read_bytes += fetch
        work.writeback_bytes += write
        work.writeback_copies += lay.page_copies(new)

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "prefetch_depth": self.prefetch_depth}
