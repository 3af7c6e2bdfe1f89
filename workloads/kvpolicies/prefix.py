"""`prefix-sharing`: a shared prefix (a system prompt) whose KV is stored once, in an LRU prefix cache.

Requests with the same `prefix_id` share their first `prefix_tokens` tokens. The first request computes the
prefix; once its prefill has passed the prefix, those pages move to the cache and later requests skip that
part of the prefill (a cache hit). Reads are either once per *sequence* (vLLM automatic prefix caching: one
copy in memory, but attention still reads it for every sequence) or once per *batch* (Hydragen,
RelayAttention: the prefix's attention runs as one matrix product over all sequences sharing it), which is
what keeps decode bytes flat as the shared prefix grows. When the cache is full, the least recently used
unreferenced prefix is evicted to host memory and fetched back on its next hit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .base import KVPolicy, Seq, ServingInstance, StepItem, StepWork
from .params import PolicyError, check_fraction, check_positive

READ_MODES = ("per-batch", "per-sequence")


@dataclass
class _Entry:
    tokens: int
    refs: int = 0
    where: str = "filling"  # filling (its first sequence is computing it) | hbm | host
    owner: int | None = None


class PrefixSharing(KVPolicy):
    name = "prefix-sharing"
    coalescible = True
    shares_prefixes = True

    def __init__(self, reads: str = "per-batch", cache_fraction: float = 0.5) -> None:
        if reads not in READ_MODES:
            raise PolicyError(f"policy '{self.name}': reads must be one of {', '.join(READ_MODES)}, got '{reads}'")
        self.reads = reads
        # A share of the KV budget: above 1 the cache would hold more than the budget it is part of.
        self.cache_fraction = check_fraction(self.name, "cache_fraction", cache_fraction, lo_open=True)
        self.cache: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def bind(self, instance: ServingInstance) -> None:
        super().bind(instance)
        self.capacity = self.cache_fraction * instance.kv_budget_total

    def _bytes(self, tokens: float) -> float:
        return self.layout.bytes_per_gpu(tokens)

    def shared_bytes(self) -> float:
        return sum(self._bytes(e.tokens) for e in self.cache.values() if e.where == "hbm")

    def host_shared_bytes(self) -> float:
        return sum(self._bytes(e.tokens) for e in self.cache.values() if e.where == "host")

    def _make_room(self, nbytes: float) -> bool:
        """Evict unreferenced prefixes (LRU first) to host until `nbytes` more fit the cache."""
        while self.shared_bytes() + nbytes > self.capacity:
            victim = next((k for k, e in self.cache.items() if e.where == "hbm" and e.refs == 0), None)
            if victim is None:
                return False
            e = self.cache[victim]
            e.where = "host"
            self.evictions += 1
            self.instance.move_all("d2h", self._bytes(e.tokens), self.layout.page_copies(e.tokens), "kv-prefix-evict")
        return True

    def on_admit(self, seq: Seq) -> tuple[int, float]:
        key, P = seq.req.prefix_id, seq.req.prefix_tokens
        if key is None or P == 0:
            return 0, 0.0
        e = self.cache.get(key)
        if e is None:
            self.misses += 1
            self.cache[key] = _Entry(P, refs=1, owner=id(seq))
            seq.shared_key = key
            return 0, 0.0
        if e.where == "filling":
            self.misses += 1
            return 0, 0.0
        fetch = 0.0
        if e.where == "host":
            if not self._make_room(self._bytes(P)):
                self.misses += 1
                return 0, 0.0
            e.where = "hbm"
            fetch = self._bytes(P)
        self.hits += 1
        self.cache.move_to_end(key)
        e.refs += 1
        seq.shared_key, seq.shared_tokens = key, P
        return P, fetch

    def after_step(self, items: list[StepItem]) -> None:
        for it in items:
            s = it.seq
            e = self.cache.get(s.shared_key) if s.shared_key else None
            if e is not None and e.where == "filling" and e.owner == id(s) and s.prefilled >= e.tokens:
                # The first sequence's prefix pages become the cache's (no copy: ownership moves).
                e.owner = None
                if self._make_room(self._bytes(e.tokens)):
                    e.where = "hbm"
                    s.shared_tokens = e.tokens
                else:
                    del self.cache[s.shared_key]
                    s.shared_key = None

    def release(self, seq: Seq) -> None:
        e = self.cache.get(seq.shared_key) if seq.shared_key else None
        if e is None:
            return
        if e.where == "filling" and e.owner == id(seq):
            del self.cache[seq.shared_key]
        else:
            e.refs -= 1

    def read_bytes(self, seq: Seq, ctx: float) -> float:
        lay = self.layout
        if self.reads == "per-batch":
            return lay.bytes_per_gpu(max(0.0, ctx - seq.shared_tokens), paged=False)
        return lay.bytes_per_gpu(ctx, paged=False)

    def add_batch_work(self, work: StepWork, items: list[StepItem]) -> None:
        if self.reads != "per-batch":
            return
        keys = {it.seq.shared_key for it in items if it.seq.shared_tokens > 0}
        for k in sorted(keys):
            nbytes = self.layout.bytes_per_gpu(self.cache[k].tokens, paged=False)
            work.hbm_bytes += nbytes
            work.kv_read_bytes += nbytes

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "reads": self.reads, "cache_fraction": self.cache_fraction}


def prefix_read_factor(batch: int, prefix_tokens: int, suffix_tokens: int) -> float:
    """Bytes read per decode step without sharing over bytes read with per-batch sharing, for `batch` sequences
    of `prefix_tokens` shared + `suffix_tokens` own context: b (P + S) / (P + b S)."""
    check_positive("prefix-sharing", "batch", batch)
    return batch * (prefix_tokens + suffix_tokens) / (prefix_tokens + batch * suffix_tokens)
