"""Prefill/decode disaggregation study: prefill:decode GPU split x the link the KV crosses.

The question (DistServe, Splitwise, Mooncake): with four GPUs serving an 8B model, is it better to run
four colocated replicas (chunked prefill mixed into decode steps) or to dedicate some GPUs to prefill and
the rest to decode, shipping each prompt's KV layer group by layer group while the prefill of later groups
runs? And does the link matter: NVLink inside an HGX node, RDMA between two nodes (prefill GPUs on one,
decode GPUs on the other), or plain PCIe peer copies through the root complex?

Machines: `hgx-h100-8` (NVLink), `cluster-2x8` (H100 nodes, 400 Gb/s RDMA NIC per GPU), `pcie-4gpu` (H100
PCIe cards, no NVLink: note the PCIe card's lower HBM bandwidth and FLOP/s also change the decode and
prefill times). Requests: Poisson at 16/s or 32/s, prompts uniform on 1..4095 tokens, outputs geometric with
mean 128. Times and throughputs carry a 90% corner interval (`lo`, `hi` in the rows): each point is also served
on the machine's slow and fast corner topology (`serve_with_intervals`).

Run it:  fabricsim sweep pd_disaggregation && fabricsim plot pd_disaggregation
"""

from __future__ import annotations

from fabricsim.harness.study import Figure, Grid, PointContext, Study
from fabricsim.workloads.requests import poisson_requests
from fabricsim.workloads.serving import ServingConfig, serve_with_intervals

LINKS = {"nvlink": "hgx-h100-8", "rdma": "cluster-2x8", "pcie": "pcie-4gpu"}
SPLITS = {"colocated": (0, 4), "1:3": (1, 3), "2:2": (2, 2), "3:1": (3, 1)}
REQUESTS = 400
# Both corners, not the slow one mirrored: near saturation a slower machine lengthens the queues far more than a
# faster one shortens them (colocated, NVLink, 16/s: p99 TTFT +257% at the slow corner, -4% at the fast one); a mirror
# would put the low end below any possible TTFT.
MIRROR = False


def _gpus(link: str, prefill: int, decode: int) -> tuple[str, ...]:
    if link == "rdma":  # prefill on node 0, decode on node 1: every KV byte crosses the network
        return tuple(f"node0.gpu{i}" for i in range(prefill)) + tuple(f"node1.gpu{i}" for i in range(decode))
    return tuple(f"gpu{i}" for i in range(prefill + decode))


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    reqs = poisson_requests(point["rate"], REQUESTS, prompt_tokens=2048, output_tokens=128, prompt_dist="uniform",
                            output_dist="geometric", seed=point["seed"])
    prefill, decode = SPLITS[point["split"]]
    if prefill == 0:
        cfg = ServingConfig(model="Llama-3-8B", instances=decode, gpus=_gpus(point["link"], 0, decode))
        res, metrics = serve_with_intervals(LINKS[point["link"]], reqs, "hbm-only", cfg, mirror=MIRROR)
    else:
        cfg = ServingConfig(model="Llama-3-8B", gpus=_gpus(point["link"], prefill, decode))
        res, metrics = serve_with_intervals(LINKS[point["link"]], reqs, "pd-disaggregation", cfg,
                                            policy_params={"prefill_instances": prefill, "decode_instances": decode},
                                            mirror=MIRROR)
    if ctx is not None and ctx.trace_path is not None:
        res.result.write_trace(str(ctx.trace_path))
    return metrics  # times and throughputs with a 90% corner interval (hwmodels.intervals)


STUDY = Study(
    name="pd_disaggregation",
    description=__doc__.splitlines()[0],
    grid=Grid.product(link=list(LINKS), split=list(SPLITS), rate=[16.0, 32.0], seed=[0]),
    run=run_point,
    calibration="default",
    topology=lambda point: LINKS[point["link"]],
    figures=[
        Figure("ttft", x="split", y="ttft_p99_s", hue="link", facet="rate", logy=True,
               title="p99 time to first token"),
        Figure("tpot", x="split", y="tpot_p99_s", hue="link", facet="rate", title="p99 time per output token"),
        Figure("handoff", x="split", y="kv_handoff_frac", hue="link", facet="rate", logy=True,
               title="Exposed KV transfer time / mean request latency"),
        Figure("throughput", x="split", y="throughput_tok_s", hue="link", facet="rate",
               title="Output tokens per second"),
    ],
)
