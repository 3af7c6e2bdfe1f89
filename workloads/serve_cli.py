"""`fabricsim serve`: serve a request stream (Poisson or a trace CSV) with a KV policy and print the metrics."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.fileio import refuse_overwrite
from fabricsim.hwmodels.intervals import Interval, intervals_over, say_calibration_note
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore import fluid
from fabricsim.simcore.units import parse_bytes

from .keyvalue import coerce_all, settings_of, split_all
from .kvpolicies import KVPolicy, PolicyError, make_policy
from .kvpolicies import names as policy_names
from .metrics_out import (
    add_output_args,
    default_samples,
    interval_fields,
    metric_values,
    print_json,
    print_metrics,
    rerun_note,
    why_no_intervals,
)
from .requests import Request, RequestError, check_shared_prefix, load_trace, poisson_requests
from .serving import MECHANISMS, PREEMPTION_MODES, ServingConfig, role_counts, roles_said, serve

SERVE_SAMPLES = 8  # a serving run re-runs the whole request trace: fewer samples than `simulate` takes


def _serve(args: argparse.Namespace) -> int:
    if args.perfetto:  # before the run: a long trace replay must not end in a refusal
        refuse_overwrite(args.perfetto, args.force, "trace", file=True,
                         inputs=(args.request_trace, args.topology, args.calibration))
    params = split_all(args.param, what="parameter", example="prefetch_depth=2", error=PolicyError)
    policy = make_policy(args.policy, **params)  # its split and parameters are read before anything runs
    if args.request_trace:
        try:
            reqs = load_trace(args.request_trace)
        except RequestError as exc:
            if Path(args.request_trace).exists():
                raise
            raise RequestError(f"{exc} (--request-trace reads a request CSV; --perfetto PATH writes a Perfetto "
                               "trace)") from None
        if args.poisson_given:  # after the trace's own errors, which say more
            flags = list(dict.fromkeys(args.poisson_given))
            raise RequestError(f"{', '.join(flags)} set{'s' if len(flags) == 1 else ''} the Poisson stream, "
                               f"which --request-trace replaces (its rows give the arrivals and token counts): give "
                               f"one or the other")
    else:
        check_shared_prefix(args.prefix_tokens, args.prompt_tokens, names=("--prefix-tokens", "--prompt-tokens"))
        reqs = poisson_requests(args.rate, args.requests, prompt_tokens=args.prompt_tokens,
                                output_tokens=args.output_tokens, prompt_dist=args.prompt_dist,
                                output_dist=args.output_dist, seed=args.seed, prefix_tokens=args.prefix_tokens,
                                prefixes=args.prefixes)
    topo = presets.load(args.topology, calibration=args.calibration)
    cfg = ServingConfig(  # the counts' own checks (whole numbers, tp x instances) first, in its words
        model=args.model, tp=args.tp, instances=args.instances, kv_dtype=args.kv_dtype,  # (None: not given)
        page_tokens=args.page_tokens, max_batch_seqs=args.max_batch, token_budget=args.token_budget,
        preemption=args.preemption, mechanism=args.mechanism,
        kv_budget_bytes=None if args.kv_budget is None else parse_bytes(args.kv_budget, "--kv-budget"))
    # `serve` applies this rule again to the same config (an --instances not given stays None, so nothing is
    # rebuilt with the split's count); here first, to spell the count as the flag and name the roles in the header
    roles = role_counts(policy, args.policy, cfg.instances, cfg.tp, len(topo.gpus()), topo.name,
                        asked_as="--instances ")
    if note := _nothing_shared_note(policy, reqs, bool(args.request_trace)):
        print(f"note: {note}", file=sys.stderr, flush=True)
    fluid.load_core()  # loaded (or compiled) before the run is timed: its one-time cost is no run's, nor a re-run's
    started = time.perf_counter()
    res = serve(topo, reqs, args.policy, cfg, policy_params=params)
    first_run_s = time.perf_counter() - started
    if note := res.handoff_note():  # a 0 that says nothing of why was read as a handoff left out
        print(f"note: {note}", file=sys.stderr, flush=True)
    samples, skipped = default_samples(args.samples, SERVE_SAMPLES, gpus=cfg.tp * sum(roles.values()),
                                       first_run_s=first_run_s)
    if skipped:
        print(skipped, file=sys.stderr)  # a note, on stderr in every mode like the others: stdout is the answer
    if args.perfetto:
        res.result.write_trace(args.perfetto)
    metrics = res.metrics_with_units()
    # None: not computed, which --json says apart from computed without any spread (`interval_fields`)
    intervals: dict[str, Interval] | None = None
    if samples:
        if note := rerun_note(samples, first_run_s):
            print(note, file=sys.stderr, flush=True)
        intervals = intervals_over(lambda t: serve(t, reqs, args.policy, cfg, policy_params=params).metrics(), topo,
                                   samples=samples, point=res.metrics())
    say_calibration_note(topo)
    if args.json:
        out = metric_values(metrics) | interval_fields(intervals, why_no_intervals(skipped))
        out["inputs"] = _inputs(args, topo, cfg, policy, params, roles, reqs, samples)
        print_json(out)
    else:
        print(f"{len(reqs)} requests on {topo.name} ({topo.calibration_id or 'uncalibrated'}), {cfg.model}, "
              f"policy {args.policy} on {_layout(roles, cfg.tp)}")
        print_metrics(metrics, intervals)
    return 0


def _layout(roles: dict[str, int], tp: int) -> str:
    """'1 instance (tp=1)', '3 prefill + 5 decode instances (tp=2)': the header says what ran where."""
    return f"{roles_said(roles)} instance{'s' if sum(roles.values()) > 1 else ''} (tp={tp})"


def _nothing_shared_note(policy: KVPolicy, reqs: list[Request], from_trace: bool) -> str:
    """A policy that acts only on shared prefixes, given requests that share none, runs exactly as hbm-only: said,
    since its numbers would otherwise pass for the policy's (a trial compared them as such)."""
    if not policy.shares_prefixes or any(r.prefix_tokens for r in reqs):
        return ""
    how = ("in the trace's prefix_id and prefix_tokens columns" if from_trace
           else "with --prefix-tokens N, and --prefixes K for several")
    return (f"policy {policy.name} has nothing to share: no request has a shared prefix, so it runs as hbm-only "
            f"(give one {how})")


def _inputs(args: argparse.Namespace, topo: Topology, cfg: ServingConfig, policy: KVPolicy, params: dict[str, str],
            roles: dict[str, int], reqs: list[Request], samples: int) -> dict[str, object]:
    """What `--json` says was asked, so that a saved answer carries its question (as `sync --json`'s `inputs`):
    model, machine, calibration, policy and every parameter's value (`params_given`: those set with --param),
    the deployment, and where the requests came from with the settings that drew them."""
    described = {k: v for k, v in policy.describe().items() if k != "policy"}
    given = coerce_all(params, settings_of(type(policy)), f"policy '{policy.name}'", PolicyError, noun="parameter")
    out: dict[str, object] = {
        "model": cfg.model_config().name, "topology": topo.name, "calibration": topo.calibration_id,
        "policy": policy.name, "policy_params": given | described, "params_given": sorted(params),
        "tp": cfg.tp, "instances": sum(roles.values()), "roles": roles, "kv_dtype": cfg.kv_dtype,
        "page_tokens": cfg.page_tokens, "kv_budget_bytes": cfg.kv_budget_bytes, "max_batch": cfg.max_batch_seqs,
        "token_budget": cfg.token_budget, "preemption": cfg.preemption, "mechanism": cfg.mechanism,
        "request_trace": args.request_trace, "requests": len(reqs)}
    if not args.request_trace:
        out |= {"rate": args.rate if math.isfinite(args.rate) else "inf",  # JSON has no infinity
                "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                "prompt_dist": args.prompt_dist, "output_dist": args.output_dist,
                "prefix_tokens": args.prefix_tokens, "prefixes": args.prefixes, "seed": args.seed}
    return out | {"samples": samples}


class _PoissonSetting(argparse.Action):
    """Stores a setting of the Poisson stream and remembers its flag was given: beside --request-trace, which
    replaces the stream, it is refused (it was dropped without a word: `--request-trace r.csv --rate 50` ran the
    trace's own arrivals)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.poisson_given = (*namespace.poisson_given, option_string)


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
               "trace CSV columns: arrival_s, prompt_tokens, output_tokens[, prefix_id, prefix_tokens] "
               "(no others)",
        formatter_class=_HelpFormatter)
    p.add_argument("--topology", default="h100-1", help="preset name or topology file")
    p.add_argument("--calibration", default="default", help="'default' (bundled profile), 'none' or a path")
    p.add_argument("--model", default="Llama-3-8B", help="model preset (fabricsim sync --list shows them)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of each instance")
    p.add_argument("--instances", type=int,
                   help="serving instances, each on its own --tp GPUs (default: 1; a policy that splits roles sets "
                        "the count from its parameters: pd-disaggregation runs prefill_instances + "
                        "decode_instances, and an --instances that disagrees is refused)")
    p.add_argument("--policy", default="hbm-only", help=f"KV policy, one of {', '.join(policy_names())}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter (repeat), typed like the policy's own (e.g. prefetch_depth=2)")
    p.add_argument("--request-trace", dest="request_trace", metavar="CSV",
                   help="request trace CSV (arrival_s, prompt_tokens, output_tokens[, prefix_id, prefix_tokens]); "
                        "otherwise a Poisson stream")
    def poisson(*flags: str, **kw: object) -> None:  # a setting of the Poisson stream
        p.add_argument(*flags, action=_PoissonSetting, **kw)

    poisson("--rate", type=float, default=10.0, help="requests per second (Poisson; inf = all at once)")
    poisson("--requests", "-n", type=int, default=200, help="requests in the Poisson stream")
    poisson("--prompt-tokens", type=float, default=1024, help="mean prompt length in tokens")
    poisson("--output-tokens", type=float, default=128, help="mean output length in tokens")
    poisson("--prompt-dist", default="fixed", help="prompt length distribution: fixed, uniform, geometric")
    poisson("--output-dist", default="fixed", help="output length distribution: fixed, uniform, geometric")
    poisson("--prefix-tokens", type=int, default=0,
                   help="shared prefix length at the start of every prompt, shorter than --prompt-tokens (every "
                        "prompt holds it and at least one token of its own)")
    poisson("--prefixes", type=int, default=1, help="distinct shared prefixes")
    poisson("--seed", type=int, default=0, help="random seed of the Poisson stream (>= 0)")
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
    p.set_defaults(poisson_given=())
    add_output_args(p, SERVE_SAMPLES, "run")
    p.set_defaults(func=_serve)
