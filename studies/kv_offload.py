"""KV offload study: context length x KV policy x page size (x copy mechanism), on one H100 and an HGX H200.

The question: once the KV cache outgrows HBM, what does keeping it in host memory cost, and does keeping
only the pages that matter in HBM (FlexiCache-style top-K paging) buy back throughput? An offline batch (all
requests at t = 0, as in FlexGen's and FlexiCache's throughput runs) is served with
- `hbm-only`: everything in HBM; the batch is limited by the KV budget and queues;
- `host-offload`: everything in pinned host memory, streamed in layer group by layer group;
- `topk-paging`: 75% of heads keep their top-32 pages in HBM, the rest on the host, reranked every 16 steps,
and, for the policies that move pages, three ways to move them (copy engine per page, batched, SM gather).
Small pages make per-page copies latency-bound; that is why page size is an axis. Times and throughputs carry a
90% interval (`lo`, `hi` in the rows) from one re-run on the machine's slow corner (`serve_with_intervals`).

Run it:  fabricsim sweep kv_offload && fabricsim plot kv_offload
"""

from __future__ import annotations

from fabricsim.harness.study import REASON, Figure, Grid, PointContext, Study
from fabricsim.workloads.errors import InfeasibleError
from fabricsim.workloads.requests import Request
from fabricsim.workloads.serving import ServingConfig, serve_with_intervals

# One model per machine: an 8B model on one H100, a 70B model across eight H200s (TP 8).
SETUPS = {
    "h100-1": dict(model="Llama-3-8B", tp=1, requests=32, layer_groups=8),
    "hgx-h200-8": dict(model="Llama-3-70B", tp=8, requests=48, layer_groups=4),
}
OUTPUT_TOKENS = 256
MOVERS = ("host-offload", "topk-paging")
# Corner intervals from the slow corner alone (mirrored in log space): the costliest serving sweep pays for one
# re-run per point instead of two.
MIRROR = True


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    setup = SETUPS[point["topology"]]
    reqs = [Request(i, 0.0, point["context"], OUTPUT_TOKENS) for i in range(setup["requests"])]
    cfg = ServingConfig(model=setup["model"], tp=setup["tp"], page_tokens=point["page_tokens"],
                        mechanism=point["mechanism"], token_budget=32768,
                        layer_groups=setup["layer_groups"])
    try:
        # times and throughputs with a 90% interval from one run on the slow corner, mirrored (hwmodels.intervals)
        res, metrics = serve_with_intervals(point["topology"], reqs, point["policy"], cfg, mirror=MIRROR)
    except InfeasibleError as exc:
        return {"feasible": 0.0, REASON: str(exc)}
    if ctx is not None and ctx.trace_path is not None:
        res.result.write_trace(str(ctx.trace_path))
    return {**metrics, "feasible": 1.0}


MECHANISMS = ["ce-per-page", "ce-batched", "sm-gather"]
CONTEXTS = [4096, 16384, 65536]
# Every policy x context on both machines (batched copies, 16-token pages); the page-size x mechanism
# sub-grid on the H100 only, where a point costs a fraction of a second (TP 8 issues 8x the flows).
GRID = (
    Grid.product(topology=["h100-1", "hgx-h200-8"], context=CONTEXTS, policy=["hbm-only", *MOVERS],
                 page_tokens=[16], mechanism=["ce-batched"])
    + Grid.product(topology=["h100-1"], context=CONTEXTS, policy=list(MOVERS), page_tokens=[16, 128],
                   mechanism=MECHANISMS)
)

STUDY = Study(
    name="kv_offload",
    description=__doc__.splitlines()[0],
    grid=GRID,
    run=run_point,
    calibration="default",
    figures=[
        Figure("throughput", x="context", y="throughput_tok_s", hue="policy", facet="topology", logx=True,
               where={"page_tokens": 16, "mechanism": "ce-batched"},
               title="Offline throughput vs context (16-token pages, batched copies)"),
        Figure("decode_throughput", x="context", y="decode_tok_s", hue="policy", facet="topology", logx=True,
               where={"page_tokens": 16, "mechanism": "ce-batched"}, title="Decode-step throughput vs context"),
        Figure("mechanism", x="page_tokens", y="throughput_tok_s", hue="mechanism", facet="topology", logx=True,
               where={"policy": "host-offload", "context": 16384, "topology": "h100-1"},
               title="host-offload, 16k context, H100: mechanism vs page size"),
        Figure("topk_mechanism", x="page_tokens", y="decode_tok_s", hue="mechanism", facet="context", logx=True,
               where={"policy": "topk-paging", "topology": "h100-1"},
               title="topk-paging, H100: mechanism vs page size"),
        Figure("kv_moved", x="context", y="kv_bytes_moved_per_token", hue="policy", facet="topology", logx=True,
               logy=True, where={"page_tokens": 16, "mechanism": "ce-batched"},
               title="KV bytes moved per generated token"),
        Figure("pcie", x="context", y="pcie_util", hue="policy", facet="topology", logx=True,
               where={"page_tokens": 16, "mechanism": "ce-batched"}, title="Busiest PCIe link, mean utilisation"),
    ],
)
