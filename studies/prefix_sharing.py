"""Prefix-sharing study: shared-prefix length x batch size, with and without a shared-prefix attention kernel.

The question (Hydragen, RelayAttention): when every request in a batch starts with the same long prefix (a
system prompt, few-shot examples, a document), does throughput have to fall as the prefix grows? Three ways:
- `hbm-only`: every sequence stores and reads its own copy of the prefix (no sharing);
- `prefix-sharing`, reads `per-sequence`: one stored copy (vLLM automatic prefix caching), read by every
  sequence's attention;
- `prefix-sharing`, reads `per-batch`: one copy, read once per batch (Hydragen's shared-prefix attention).
A warm-up request computes the prefix first; the batch of `batch` requests (64-token suffix, 128 output
tokens) arrives one second later, as a burst. Times and throughputs carry a 90% corner interval (`lo`, `hi`).

Run it:  fabricsim sweep prefix_sharing && fabricsim plot prefix_sharing
"""

from __future__ import annotations

from fabricsim.harness.study import Figure, Grid, PointContext, Study
from fabricsim.workloads.requests import Request
from fabricsim.workloads.serving import INTERVAL_METRICS, ServingConfig, ServingResult, serve_with_intervals

SUFFIX_TOKENS = 64
OUTPUT_TOKENS = 128
VARIANTS = {
    "no-sharing": ("hbm-only", {}),
    "store-once": ("prefix-sharing", {"reads": "per-sequence"}),
    "read-once": ("prefix-sharing", {"reads": "per-batch"}),
}


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    P, b = point["prefix_tokens"], point["batch"]
    reqs = [Request(0, 0.0, P + SUFFIX_TOKENS, 1, "sys", P)]
    reqs += [Request(i, 1.0, P + SUFFIX_TOKENS, OUTPUT_TOKENS, "sys", P) for i in range(1, b + 1)]
    policy, params = VARIANTS[point["sharing"]]
    cfg = ServingConfig(model="Llama-3-8B", max_batch_seqs=512, token_budget=8192)

    def metrics(res: ServingResult) -> dict:
        batch = [s for s in res.seqs if s.req.id > 0]
        span = max(s.finish_s for s in batch) - 1.0
        return {**res.metrics_with_units(), "batch_throughput_tok_s": (b * OUTPUT_TOKENS / span, "tokens/s")}

    # times and throughputs with a 90% interval from the slow- and fast-corner runs (hwmodels.intervals)
    res, out = serve_with_intervals(point["topology"], reqs, policy, cfg, policy_params=params, metrics=metrics,
                                    interval_metrics=(*INTERVAL_METRICS, "batch_throughput_tok_s"))
    if ctx is not None and ctx.trace_path is not None:
        res.result.write_trace(str(ctx.trace_path))
    return out


STUDY = Study(
    name="prefix_sharing",
    description=__doc__.splitlines()[0],
    grid=Grid.product(topology=["h100-1"], sharing=list(VARIANTS), prefix_tokens=[1024, 4096, 16384],
                      batch=[16, 64, 256]),
    run=run_point,
    calibration="default",
    figures=[
        Figure("throughput", x="prefix_tokens", y="batch_throughput_tok_s", hue="sharing", facet="batch", logx=True,
               title="Batch throughput vs shared-prefix length"),
        Figure("decode", x="prefix_tokens", y="decode_tok_s", hue="sharing", facet="batch", logx=True,
               title="Decode-step throughput vs shared-prefix length"),
        Figure("kv_read", x="prefix_tokens", y="kv_bytes_read_per_token", hue="sharing", facet="batch", logx=True,
               logy=True, title="KV bytes read per generated token"),
        Figure("ttft", x="prefix_tokens", y="ttft_p50_s", hue="sharing", facet="batch", logx=True, logy=True,
               title="Median time to first token"),
    ],
)
