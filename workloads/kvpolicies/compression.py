"""KV compression policies: a system prompt compressed offline, and older context compressed at run time.

`system-prompt-compression` (from the project's origin): the system prompt's KV is compressed once,
offline, with a heavy method (`ratio` fewer bytes), stored once in HBM and loaded from host on first use.
Each use pays a decompression/preparation cost (`decompress_s` of GPU time in the request's first prefill
step), and the part of the prompt that depends on per-request content (tools, user parameters: a
`dynamic_fraction` of it) changes position embeddings, so it is recomputed per request and stored at full
size. Attention reads the compressed prompt per sequence.

`async-compression`: once a sequence's context reaches `trigger_tokens`, everything but the last
`window_tokens` is compressed by `ratio` in a background kernel (`flops_per_token` per compressed token
per GPU, plus reading those tokens and writing the result) that runs beside the decode steps and shares
HBM bandwidth with them; when it finishes, the sequence's footprint and reads shrink.
"""

from __future__ import annotations

import math
from typing import Any

from .base import KVPolicy, Seq, ServingInstance, StepItem, StepWork
from .params import check_count, check_fraction, check_positive, check_ratio


class SystemPromptCompression(KVPolicy):
    name = "system-prompt-compression"
    coalescible = True
    shares_prefixes = True

    def __init__(self, ratio: float = 4.0, decompress_s: float = 50e-6, dynamic_fraction: float = 0.1) -> None:
        self.ratio = check_ratio(self.name, "ratio", ratio)
        self.decompress_s = check_positive(self.name, "decompress_s", decompress_s, allow_zero=True)
        self.dynamic = check_fraction(self.name, "dynamic_fraction", dynamic_fraction)
        self.stored: dict[str, int] = {}

    def _static_tokens(self, seq: Seq) -> int:
        return int(seq.req.prefix_tokens * (1 - self.dynamic)) if seq.req.prefix_id else 0

    def shared_bytes(self) -> float:
        return sum(self.layout.bytes_per_gpu(t) / self.ratio for t in self.stored.values())

    def on_admit(self, seq: Seq) -> tuple[int, float]:
        static = self._static_tokens(seq)
        if static == 0:
            return 0, 0.0
        key = seq.req.prefix_id
        fetch = 0.0
        if key not in self.stored:
            self.stored[key] = static
            fetch = self.layout.bytes_per_gpu(static) / self.ratio
        seq.shared_key, seq.shared_tokens = key, static
        return static, fetch

    def read_bytes(self, seq: Seq, ctx: float) -> float:
        lay = self.layout
        shared = min(ctx, seq.shared_tokens)
        return lay.bytes_per_gpu(ctx - shared, paged=False) + lay.bytes_per_gpu(shared, paged=False) / self.ratio

    def add_seq_work(self, work: StepWork, seq: Seq, ctx: float, new: int) -> None:
        super().add_seq_work(work, seq, ctx, new)
        if seq.shared_tokens and seq.prefilling and ctx == seq.shared_tokens:
            work.extra_s += self.decompress_s  # first prefill chunk of this use

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "ratio": self.ratio, "decompress_s": self.decompress_s,
                "dynamic_fraction": self.dynamic}


class AsyncCompression(KVPolicy):
    name = "async-compression"
    coalescible = False

    def __init__(self, ratio: float = 4.0, trigger_tokens: int = 1024, window_tokens: int = 256,
                 flops_per_token: float | None = None) -> None:
        self.ratio = check_ratio(self.name, "ratio", ratio)
        self.trigger = check_count(self.name, "trigger_tokens", trigger_tokens)
        self.window = check_count(self.name, "window_tokens", window_tokens, allow_zero=True)
        # Checked here, not at bind: a bad value is refused where it is given, before any serving system is built.
        self.flops_per_token = (None if flops_per_token is None
                                else check_positive(self.name, "flops_per_token", flops_per_token, allow_zero=True))
        self.jobs = 0

    def bind(self, instance: ServingInstance) -> None:
        super().bind(instance)
        if self.flops_per_token is None:
            # A light learned projection per cached element (order of a small MLP over K and V): 64 FLOPs each.
            self.flops_per_token = 64.0 * self.layout.elements_per_token_per_layer * self.layout.model.num_layers

    def _held_tokens(self, seq: Seq, tokens: float) -> float:
        c = min(seq.compressed_src, tokens)
        return tokens - c + c / self.ratio

    def hbm_bytes(self, seq: Seq, kv_tokens: int) -> float:
        return self.layout.bytes_per_gpu(self._held_tokens(seq, kv_tokens))

    def read_bytes(self, seq: Seq, ctx: float) -> float:
        return self.layout.bytes_per_gpu(self._held_tokens(seq, ctx), paged=False)

    def after_step(self, items: list[StepItem]) -> None:
        for it in items:
            s = it.seq
            if (s.compressing or s.prefilling or s.kv_tokens < self.trigger or s not in self.instance.running
                    or s.generated >= s.req.output_tokens):
                continue
            n = s.kv_tokens - self.window - s.compressed_src
            if n < self.layout.page_tokens:
                continue
            lay = self.layout
            nbytes = lay.bytes_per_gpu(n, paged=False) * (1 + 1 / self.ratio)
            s.compressing = True
            self.jobs += 1
            ev = self.instance.run_background(self.flops_per_token * n / lay.tp, nbytes, "kv-compress")
            epoch = s.preemptions
            ev.callbacks.append(lambda _ev, s=s, n=n, epoch=epoch: self._done(s, n, epoch))

    def _done(self, s: Seq, n: int, epoch: int) -> None:
        s.compressing = False
        if s.preemptions == epoch and math.isnan(s.finish_s):  # not preempted or finished meanwhile
            s.compressed_src += n
            self.instance.record_memory()

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "ratio": self.ratio, "trigger_tokens": self.trigger,
                "window_tokens": self.window}
