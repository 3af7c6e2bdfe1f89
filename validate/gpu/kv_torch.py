"""KV-cache policies run for real on one GPU with the paged-KV kernels of `kernels.paged_kv`.

One paged cache in vLLM's layout (Llama-3-8B's geometry: 32 layers, K and V, 16-token pages of 8 heads x 128,
bf16; `workload_cases.KV_GEOMETRY`) and pinned host buffers. The cases:

- `kv-offload-decode` / `kv-prefetch-decode`: a decode-like loop (an HBM-bound elementwise kernel standing in
  for a decode step's weight and KV reads, `DECODE_STEPS` of them) on one stream while `gather_pages` offloads
  pages to pinned host memory (or `scatter_pages` prefetches them back) on another; both start behind one gate
  (MEASURING.md 3) and each finish is timed on the same GPU's events. Each part is also timed alone;
- `kv-topk-fetch`: fetch K pages, chosen at random, of a cache kept in pinned host memory (the kernel reads
  host memory through UVA) into one GPU buffer, as top-K sparse attention does per step;
- `kv-swap`: preemption: gather a sequence's pages to host, then scatter them back into other free pages;
- `kv-prefix-copy`: copy-on-write of shared prefix pages: gather them into a scratch buffer and scatter it into
  new pages (two launches, on the GPU).

Every case checks the pages it moved against the torch reference before its time counts.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from fabricsim.validate.workload_cases import KV_GEOMETRY, WorkloadCase

GATE_CYCLES = 4_000_000


def _ev() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


class KVRunner:
    """Holds the GPU cache, the host cache and the buffers the KV cases share."""

    def __init__(self, host_blocks: int = 1024, max_pages: int = 512, decode_bytes: int = 2 << 30) -> None:
        g = KV_GEOMETRY
        self.dev = torch.device("cuda", 0)
        self.page = (g["page_tokens"], g["kv_heads"], g["head_dim"])
        self.layers = g["layers"]
        self.blocks = g["blocks"]
        self.kv = torch.randn(self.layers, 2, self.blocks, *self.page, device=self.dev, dtype=torch.bfloat16)
        self.host_kv = torch.randn(self.layers, 2, host_blocks, *self.page, dtype=torch.bfloat16).pin_memory()
        per_page = 2 * self.layers * self.page[0] * self.page[1] * self.page[2]
        self.host_flat = torch.randn(per_page * max_pages, dtype=torch.bfloat16).pin_memory()
        self.gpu_flat = torch.empty(per_page * max_pages, device=self.dev, dtype=torch.bfloat16)
        self.a = torch.rand(decode_bytes // 4, device=self.dev)
        self.b = torch.empty_like(self.a)
        self.streams = [torch.cuda.Stream(self.dev) for _ in range(3)]
        self.gen = torch.Generator().manual_seed(14)

    def close(self) -> None:
        del self.kv, self.host_kv, self.host_flat, self.gpu_flat, self.a, self.b
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def pages_view(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        """A contiguous `[layers, 2, n, page, heads, dim]` buffer at the start of `flat`."""
        shape = (self.layers, 2, n, *self.page)
        numel = 1
        for d in shape:
            numel *= d
        return flat[:numel].view(shape)

    def table(self, n: int, blocks: int | None = None, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """`n` distinct random block ids (never zero-filled or in order: a real block table is neither)."""
        perm = torch.randperm(blocks or self.blocks, generator=self.gen)
        if exclude is not None:
            perm = perm[~torch.isin(perm, exclude.cpu().to(perm.dtype))]
        return perm[:n].to(torch.int32).to(self.dev)

    def gated(self, ops: list[Callable[[], None]]) -> list[float]:
        """Start `ops` (each on its own stream) behind one gate; each one's finish from the gate, seconds."""
        torch.cuda.synchronize()
        gate_stream = self.streams[-1]
        with torch.cuda.stream(gate_stream):
            torch.cuda._sleep(GATE_CYCLES)
        gate = _ev()
        gate.record(gate_stream)
        ends = []
        for s, fn in zip(self.streams, ops, strict=False):
            s.wait_event(gate)
            with torch.cuda.stream(s):
                fn()
            e = _ev()
            e.record(s)
            ends.append(e)
        torch.cuda.synchronize()
        return [gate.elapsed_time(e) / 1e3 for e in ends]

    def decode_loop(self, steps: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                torch.mul(self.a, 1.0001, out=self.b)
        return run

    # -- cases
    def overlap(self, case: WorkloadCase, reps: int, offload: bool) -> dict[str, Any]:
        from fabricsim.kernels.paged_kv import gather_pages, scatter_pages

        n, steps = int(case.params["pages"]), int(case.params["steps"])
        t = self.table(n)
        host = self.pages_view(self.host_flat, n)

        def copy() -> None:
            if offload:
                gather_pages(self.kv, t, out=host)
            else:
                scatter_pages(host, self.kv, t)

        decode = self.decode_loop(steps)
        copy()  # warm-up: the kernel is compiled and its plane table cached before any timing
        decode()
        both = [self.gated([decode, copy]) for _ in range(reps)]
        alone_decode = [self.gated([decode])[0] for _ in range(reps)]
        alone_copy = [self.gated([copy])[0] for _ in range(reps)]
        from fabricsim.kernels.paged_kv import gather_ref

        ref = gather_ref(self.kv, t)
        if not torch.equal(ref.cpu(), host):
            raise RuntimeError(f"{case.id}: pages differ from the torch reference")
        return {"times_s": [max(x) for x in both], "decode_s": [x[0] for x in both], "copy_s": [x[1] for x in both],
                "decode_alone_s": alone_decode, "copy_alone_s": alone_copy}

    def topk(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        from fabricsim.kernels.paged_kv import gather_pages, gather_ref

        k = int(case.params["pages"])
        out = self.pages_view(self.gpu_flat, k)
        tables = [self.table(k, self.host_kv.shape[2]) for _ in range(reps + 2)]
        times = []
        for i, t in enumerate(tables):
            dt = self.gated([lambda t=t: gather_pages(self.host_kv, t, out=out)])[0]
            if i >= 2:
                times.append(dt)
        if not torch.equal(gather_ref(self.host_kv, tables[-1].cpu()).to(self.dev), out):
            raise RuntimeError(f"{case.id}: fetched pages differ from the torch reference")
        return {"times_s": times}

    def swap(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        from fabricsim.kernels.paged_kv import gather_pages, gather_ref, scatter_pages

        n = int(case.params["pages"])
        host = self.pages_view(self.host_flat, n)
        times, out_s = [], []
        for i in range(reps + 2):
            t_out = self.table(n)
            t_in = self.table(n, exclude=t_out)
            before = gather_ref(self.kv, t_out).clone()
            ends = self.gated([lambda t_out=t_out, t_in=t_in: (gather_pages(self.kv, t_out, out=host),
                                                               scatter_pages(host, self.kv, t_in))])
            if i >= 2:
                times.append(ends[0])
            if not torch.equal(gather_ref(self.kv, t_in), before):
                raise RuntimeError(f"{case.id}: swapped-in pages differ from the swapped-out ones")
        for _ in range(reps):
            t_out = self.table(n)
            out_s.append(self.gated([lambda t_out=t_out: gather_pages(self.kv, t_out, out=host)])[0])
        return {"times_s": times, "swap_out_s": out_s}

    def prefix_copy(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        from fabricsim.kernels.paged_kv import gather_pages, gather_ref, scatter_pages

        n = int(case.params["pages"])
        tmp = self.pages_view(self.gpu_flat, n)
        times = []
        for i in range(reps + 2):
            src = self.table(n)
            dst = self.table(n, exclude=src)
            ends = self.gated([lambda src=src, dst=dst: (gather_pages(self.kv, src, out=tmp),
                                                         scatter_pages(tmp, self.kv, dst))])
            if i >= 2:
                times.append(ends[0])
            if not torch.equal(gather_ref(self.kv, dst), gather_ref(self.kv, src)):
                raise RuntimeError(f"{case.id}: copied prefix pages differ from their source")
        return {"times_s": times}

    def run(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        if case.mech == "kv-offload-decode":
            raw = self.overlap(case, reps, offload=True)
        elif case.mech == "kv-prefetch-decode":
            raw = self.overlap(case, reps, offload=False)
        elif case.mech == "kv-topk-fetch":
            raw = self.topk(case, reps)
        elif case.mech == "kv-swap":
            raw = self.swap(case, reps)
        elif case.mech == "kv-prefix-copy":
            raw = self.prefix_copy(case, reps)
        else:
            raise ValueError(f"unknown KV mechanism {case.mech}")
        med = {f"{k[:-2]}_median_s": float(statistics.median(v)) for k, v in raw.items() if k != "times_s"}
        return {"reps": len(raw["times_s"]), "time_s": float(statistics.median(raw["times_s"])), **med, **raw}
