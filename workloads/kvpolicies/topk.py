"""`topk-paging`: stable heads keep only their top-K pages in HBM; the rest of their KV lives on the host.

FlexiCache observes that most KV heads attend to a stable set of pages over many steps. For those heads it
keeps the top-K pages (plus the page being written) in HBM and the rest in host memory, reranks every
`rerank_interval` steps and fetches the pages that became important; unstable heads keep all their KV in
HBM. Attention of a stable head reads only its K pages, so both HBM footprint and bytes read per step fall,
which lets a larger batch fit. Page copies here are per head (a page of one KV head is `page_bytes /
kv_heads_per_gpu`), so they are small and scattered: the mechanism (copy engine per page vs SM gather)
matters. Reranking's scoring compute (page summaries kept on the GPU) is not modelled.
"""

from __future__ import annotations

from typing import Any

from .base import KVPolicy, Seq, StepWork
from .params import check_count, check_fraction


class TopKPaging(KVPolicy):
    name = "topk-paging"
    coalescible = False

    def __init__(self, stable_fraction: float = 0.75, topk_pages: int = 32, rerank_interval: int = 16,
                 promote_fraction: float = 0.125) -> None:
        self.stable = check_fraction(self.name, "stable_fraction", stable_fraction)
        self.topk_pages = check_count(self.name, "topk_pages", topk_pages)
        self.rerank_interval = check_count(self.name, "rerank_interval", rerank_interval)
        self.promote = check_fraction(self.name, "promote_fraction", promote_fraction)

    def _resident_tokens(self, tokens: float) -> float:
        """Tokens a stable head keeps in HBM: its top-K pages and the page being written."""
        return min(tokens, (self.topk_pages + 1) * self.layout.page_tokens)

    def hbm_bytes(self, seq: Seq, kv_tokens: int) -> float:
        lay = self.layout
        full = lay.bytes_per_gpu(kv_tokens)
        return (1 - self.stable) * full + self.stable * min(full, lay.bytes_per_gpu(self._resident_tokens(kv_tokens)))

    def host_bytes(self, seq: Seq, kv_tokens: int) -> float:
        lay = self.layout
        spilled = lay.bytes_per_gpu(kv_tokens) - lay.bytes_per_gpu(self._resident_tokens(kv_tokens))
        return self.stable * max(0.0, spilled)

    def read_bytes(self, seq: Seq, ctx: float) -> float:
        lay = self.layout
        return ((1 - self.stable) * lay.bytes_per_gpu(ctx, paged=False)
                + self.stable * lay.bytes_per_gpu(min(ctx, self.topk_pages * lay.page_tokens), paged=False))

    def _heads_per_gpu(self) -> int:
        m = self.layout.model
        return 1 if m.is_mla else max(1, m.num_kv_heads // self.layout.tp)

    def add_seq_work(self, work: StepWork, seq: Seq, ctx: float, new: int) -> None:
        lay = self.layout
        read = self.read_bytes(seq, ctx)
        write = lay.bytes_per_gpu(new, paged=False)
        work.hbm_bytes += read + write
        work.kv_read_bytes += read
        # Stable heads spill what falls out of their window to the host as it is written.
        spill_tokens = max(0.0, ctx + new - self._resident_tokens(ctx + new))
        if spill_tokens > 0:
            work.writeback_bytes += self.stable * write
            work.writeback_copies += max(1, round(self.stable * self._heads_per_gpu() * lay.model.num_layers
                                                  * new / lay.page_tokens))
        # Reranking: every `rerank_interval` steps a share of each stable head's top-K is replaced from host.
        if new == 1 and seq.generated % self.rerank_interval == 0 and ctx > self._resident_tokens(ctx):
            pages = self.promote * self.topk_pages
            nbytes = self.stable * lay.bytes_per_gpu(pages * lay.page_tokens, paged=False)
            work.fetch_bytes += nbytes
            work.fetch_copies += max(1, round(pages * self.stable * self._heads_per_gpu() * lay.model.num_layers))
            work.kv_read_bytes += nbytes

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "stable_fraction": self.stable, "topk_pages": self.topk_pages,
                "rerank_interval": self.rerank_interval, "promote_fraction": self.promote}
