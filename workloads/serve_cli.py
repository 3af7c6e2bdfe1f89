"""`fabricsim serve`: serve a request stream (Poisson or a trace CSV) with a KV policy and print the metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.intervals import intervals_over
from fabricsim.simcore.units import parse_bytes

from .kvpolicies import PolicyError
from .kvpolicies import names as policy_names
from .metrics_out import interval_values, metric_values, print_json, print_metrics
from .requests import RequestError, load_trace, poisson_requests
from .serving import MECHANISMS, PREEMPTION_MODES, ServingConfig, serve

SERVE_SAMPLES = 8  # a serving run re-runs the whole request trace: fewer samples than `simulate` takes


def _param(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise PolicyError(f"policy parameter {text!r}: write KEY=VALUE, e.g. prefetch_depth=2")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _serve(args: argparse.Namespace) -> int:
    if args.request_trace:
        try:
            reqs = load_trace(args.request_trace)
        except RequestError as exc:
            if Path(args.request_trace).exists():
                raise
            # `--trace` writes a Perfetto file in every other command; here it reads requests: say so
            raise RequestError(f"{exc} (serve's --request-trace/--trace reads a request CSV; --perfetto PATH "
                               "writes a Perfetto trace)") from None
    else:
        reqs = poisson_requests(args.rate, args.requests, prompt_tokens=args.prompt_tokens,
                                output_tokens=args.output_tokens, prompt_dist=args.prompt_dist,
                                output_dist=args.output_dist, seed=args.seed, prefix_tokens=args.prefix_tokens,
                                prefixes=args.prefixes)
    calibration = None if args.calibration == "none" else args.calibration
    topo = presets.load(args.topology, calibration=calibration)
    cfg = ServingConfig(
        model=args.model, tp=args.tp, instances=args.instances, kv_dtype=args.kv_dtype, page_tokens=args.page_tokens,
        max_batch_seqs=args.max_batch, token_budget=args.token_budget, preemption=args.preemption,
        mechanism=args.mechanism,
        kv_budget_bytes=None if args.kv_budget is None else parse_bytes(args.kv_budget, "--kv-budget"))
    res = serve(topo, reqs, args.policy, cfg, policy_params=dict(_param(p) for p in args.param))
    if args.perfetto:
        res.result.write_trace(args.perfetto)
    metrics = res.metrics()
    intervals = {}
    if args.samples:
        params = dict(_param(p) for p in args.param)
        intervals = intervals_over(lambda t: metric_values(serve(t, reqs, args.policy, cfg, policy_params=params)
                                                           .metrics()), topo, samples=args.samples)
    if args.json:
        out = metric_values(metrics)
        if intervals:
            out["intervals"] = interval_values(intervals)
        print_json(out)
    else:
        print(f"{len(reqs)} requests on {topo.name} ({topo.calibration_id or 'uncalibrated'}), {cfg.model}, "
              f"policy {args.policy}")
        if topo.calibration_note:
            print(f"note: {topo.calibration_note}")
        print_metrics(metrics, intervals)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve requests with a KV-cache policy and report latency, throughput and traffic",
        description="Run the serving loop (continuous batching, chunked prefill, KV policies) on a topology.",
        epilog="examples:\n  fabricsim serve --topology h100-1 --policy host-offload --param prefetch_depth=2\n"
               "  fabricsim serve --request-trace requests.csv --policy prefix-sharing --json\n"
               "trace CSV columns: arrival_s, prompt_tokens, output_tokens[, prefix_id[, prefix_tokens]]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="h100-1", help="preset name or topology file (default h100-1)")
    p.add_argument("--calibration", default="default", help="'default' (bundled profile), 'none' or a path")
    p.add_argument("--model", default="Llama-3-8B")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--policy", default="hbm-only", help=f"one of {', '.join(policy_names())}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter (repeat)")
    # `--trace` means an output Perfetto file everywhere else, so the request CSV is `--request-trace`;
    # `--trace` stays accepted here for scripts written before the rename.
    p.add_argument("--request-trace", "--trace", dest="request_trace", metavar="CSV",
                   help="request trace CSV (arrival_s, prompt_tokens, output_tokens[, prefix_id]); "
                        "otherwise a Poisson stream")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (Poisson)")
    p.add_argument("--requests", "-n", type=int, default=200)
    p.add_argument("--prompt-tokens", type=float, default=1024)
    p.add_argument("--output-tokens", type=float, default=128)
    p.add_argument("--prompt-dist", default="fixed")
    p.add_argument("--output-dist", default="fixed")
    p.add_argument("--prefix-tokens", type=int, default=0)
    p.add_argument("--prefixes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page-tokens", type=int, default=16)
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--kv-budget", help="KV memory per GPU, e.g. 20GiB (default: what HBM leaves)")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--token-budget", type=int, default=2048)
    p.add_argument("--preemption", default="recompute", choices=PREEMPTION_MODES)
    p.add_argument("--mechanism", default="ce-batched", choices=MECHANISMS)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--samples", type=int, default=SERVE_SAMPLES, metavar="N",
                   help=f"perturbed re-runs for the 90%% intervals (default {SERVE_SAMPLES}; 0: none)")
    p.add_argument("--perfetto", metavar="PATH", help="write a Perfetto trace of the run")
    p.set_defaults(func=_serve)
