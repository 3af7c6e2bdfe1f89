"""`fabricsim serve`: serve a request stream (Poisson or a trace CSV) with a KV policy and print the metrics."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.fileio import refuse_overwrite
from fabricsim.hwmodels.intervals import intervals_over, say_calibration_note
from fabricsim.simcore.units import parse_bytes

from .keyvalue import split_all
from .kvpolicies import PolicyError
from .kvpolicies import names as policy_names
from .metrics_out import (
    add_output_args,
    default_samples,
    interval_values,
    metric_values,
    print_json,
    print_metrics,
    rerun_note,
)
from .requests import RequestError, load_trace, poisson_requests
from .serving import MECHANISMS, PREEMPTION_MODES, ServingConfig, serve

SERVE_SAMPLES = 8  # a serving run re-runs the whole request trace: fewer samples than `simulate` takes


def _serve(args: argparse.Namespace) -> int:
    if args.perfetto:  # before the run: a long trace replay must not end in a refusal
        refuse_overwrite(args.perfetto, args.force, "trace", file=True)
    if args.request_trace:
        try:
            reqs = load_trace(args.request_trace)
        except RequestError as exc:
            if Path(args.request_trace).exists():
                raise
            raise RequestError(f"{exc} (--request-trace reads a request CSV; --perfetto PATH writes a Perfetto "
                               "trace)") from None
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
    params = split_all(args.param, what="parameter", example="prefetch_depth=2", error=PolicyError)
    started = time.perf_counter()
    res = serve(topo, reqs, args.policy, cfg, policy_params=params)
    first_run_s = time.perf_counter() - started
    samples, skipped = default_samples(args.samples, SERVE_SAMPLES, gpus=cfg.tp * cfg.instances,
                                       first_run_s=first_run_s)
    if skipped:
        print(skipped, file=sys.stderr)  # a note, on stderr in every mode like the others: stdout is the answer
    if args.perfetto:
        res.result.write_trace(args.perfetto)
    metrics = res.metrics_with_units()
    intervals = {}
    if samples:
        if note := rerun_note(samples, first_run_s):
            print(note, file=sys.stderr, flush=True)
        intervals = intervals_over(lambda t: serve(t, reqs, args.policy, cfg, policy_params=params).metrics(), topo,
                                   samples=samples, point=res.metrics())
    say_calibration_note(topo)
    if args.json:
        out = metric_values(metrics)
        if intervals:
            out["intervals"] = interval_values(intervals)
        print_json(out)
    else:
        print(f"{len(reqs)} requests on {topo.name} ({topo.calibration_id or 'uncalibrated'}), {cfg.model}, "
              f"policy {args.policy}")
        print_metrics(metrics, intervals)
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default in its help line (unless it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d == [] or d is argparse.SUPPRESS or "(default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        description="Run the serving loop (continuous batching, chunked prefill, KV policies) on a topology.",
        epilog="examples:\n  fabricsim serve --topology h100-1 --policy host-offload --param prefetch_depth=2\n"
               "  fabricsim serve --request-trace requests.csv --policy prefix-sharing --json\n"
               "trace CSV columns: arrival_s, prompt_tokens, output_tokens[, prefix_id[, prefix_tokens]]",
        formatter_class=_HelpFormatter)
    p.add_argument("--topology", default="h100-1", help="preset name or topology file")
    p.add_argument("--calibration", default="default", help="'default' (bundled profile), 'none' or a path")
    p.add_argument("--model", default="Llama-3-8B", help="model preset (fabricsim sync --list shows them)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of each instance")
    p.add_argument("--instances", type=int, default=1, help="serving instances (each on its own GPUs)")
    p.add_argument("--policy", default="hbm-only", help=f"KV policy, one of {', '.join(policy_names())}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter (repeat), typed like the policy's own (e.g. prefetch_depth=2)")
    p.add_argument("--request-trace", dest="request_trace", metavar="CSV",
                   help="request trace CSV (arrival_s, prompt_tokens, output_tokens[, prefix_id]); "
                        "otherwise a Poisson stream")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (Poisson; inf = all at once)")
    p.add_argument("--requests", "-n", type=int, default=200, help="requests in the Poisson stream")
    p.add_argument("--prompt-tokens", type=float, default=1024, help="mean prompt length in tokens")
    p.add_argument("--output-tokens", type=float, default=128, help="mean output length in tokens")
    p.add_argument("--prompt-dist", default="fixed", help="prompt length distribution: fixed, uniform, geometric")
    p.add_argument("--output-dist", default="fixed", help="output length distribution: fixed, uniform, geometric")
    p.add_argument("--prefix-tokens", type=int, default=0, help="shared prefix length at the start of every prompt")
    p.add_argument("--prefixes", type=int, default=1, help="distinct shared prefixes")
    p.add_argument("--seed", type=int, default=0, help="random seed of the Poisson stream (>= 0)")
    p.add_argument("--page-tokens", type=int, default=16, help="tokens per KV page")
    p.add_argument("--kv-dtype", default="bf16", help="KV cache dtype: bf16, fp8, int4, ...")
    p.add_argument("--kv-budget", metavar="SIZE",
                   help="KV memory per GPU, e.g. 20GiB (default: what HBM leaves beside the weights)")
    p.add_argument("--max-batch", type=int, default=256, help="sequences per batch at most")
    p.add_argument("--token-budget", type=int, default=2048, help="tokens per step at most (chunked prefill)")
    p.add_argument("--preemption", default="recompute", choices=PREEMPTION_MODES,
                   help="what happens to a preempted sequence")
    p.add_argument("--mechanism", default="ce-batched", choices=MECHANISMS, help="how KV pages are copied")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    add_output_args(p, SERVE_SAMPLES, "run")
    p.set_defaults(func=_serve)
