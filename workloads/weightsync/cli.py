"""`fabricsim sync MODEL STRATEGY ...`: simulate one weight sync and print its metrics (or JSON).

GPU lists are comma-separated names or ranges: `gpu0-3`, `node2.gpu0-7,node3.gpu0-7`, `node0-63.gpu0-7`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace

from fabricsim.errors import TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.endpoints import compress_endpoints, expand_endpoints, spell_for_message
from fabricsim.hwmodels.fileio import refuse_overwrite
from fabricsim.hwmodels.intervals import intervals_over, say_calibration_note
from fabricsim.hwmodels.symmetry import machine_of
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore import ScenarioError
from fabricsim.simcore.lowering import load_loop
from fabricsim.simcore.units import parse_seconds

from .. import models
from ..decode import DecodeBatch
from ..errors import WorkloadError
from ..keyvalue import Setting, parse_key_values, settings_of, split_all
from ..metrics_out import (
    add_output_args,
    default_samples,
    interval_fields,
    metric_values,
    print_json,
    print_metrics,
    rerun_note,
    why_no_intervals,
)
from ..placement import FSDPLayout, MegatronLayout, RolloutLayout
from .base import (
    SyncResult,
    SyncSetup,
    check_bytes_per_param,
    check_colocation,
    check_kv_reserve,
    check_train_step,
    simulate_sync,
)
from .delta import CHANGED_FRACTION
from .registry import STRATEGIES, get, names

_MEGATRON = {k: Setting(k, 1) for k in ("tp", "pp", "ep")}
SYNC_SAMPLES = 16  # a sync re-run costs up to a second: fewer samples than `simulate` takes


def parse_gpus(spec: str) -> list[str]:
    """'gpu0-3,node2.gpu4' -> ['gpu0', 'gpu1', 'gpu2', 'gpu3', 'node2.gpu4']; 'node0-1.gpu0-7' -> 16 GPUs."""
    try:
        return expand_endpoints(spec)
    except TopologyError as exc:
        raise WorkloadError(str(exc).replace("endpoint list", "GPU list")) from None


DEFAULT_TRAINER, DEFAULT_ROLLOUT = "gpu0-3", "gpu4-7"  # the two halves of one 8-GPU box


def _span(gpus: list[str]) -> str:
    """The shortest list string that `parse_gpus` reads back as `gpus`: 'node0.gpu0-3' where the names count up."""
    first = gpus[0].rpartition("gpu")[2]
    short = f"{gpus[0]}-{len(gpus) - 1 + int(first)}" if first.isdigit() and len(gpus) > 1 else gpus[0]
    return short if expand_endpoints(short) == gpus else ",".join(gpus)


def _colocated_note(topo: Topology, trainer: list[str], rollout: list[str]) -> str:
    """What a sync whose trainer and rollout lists are the same GPUs means, said so that it is seen: a colocated
    layout, as RL frameworks that train and generate on the same GPUs run it (lists that share only some GPUs are
    refused before: `check_colocation`)."""
    both = sorted({topo.resolve(g) for g in trainer} & {topo.resolve(g) for g in rollout})
    if not both:
        return ""
    return (f"{len(both)} GPU{'s' if len(both) > 1 else ''} ({compress_endpoints(both)}) both train and "
            f"serve (a colocated layout): both roles' weights count against their HBM, and copies between the "
            f"two roles on one GPU are local HBM copies")


def _split_engine_note(topo: Topology, rollout: RolloutLayout) -> str:
    """What an engine whose TP group spans machines means (the first one, and how many more do): its every decode
    step's all-reduces would cross the network, which the decode-step model leaves out (it prices an engine as if
    its ranks shared one machine), so a layout that splits engines by mistake (a range off by a few GPUs) is seen."""
    if not (split := _first_split(topo, rollout.engines, "engines")):
        return ""
    i, gpus, spans = split
    return (f"rollout engine {i} (TP {rollout.tp}: {gpus}) {spans}: its TP all-reduces would cross the network, which "
            f"the decode-step time leaves out (it is priced as if its ranks shared one machine)")


def _split_trainer_note(topo: Topology, trainer: FSDPLayout | MegatronLayout) -> str:
    """What a Megatron TP group across machines means: training's TP all-reduces, every layer's, would cross the
    network, which trainers avoid (TP stays inside an NVLink domain); the sync, which does not run training, is
    simulated as given, so a degree or a GPU list given by mistake (`--megatron tp=16` on 8-GPU nodes) is seen."""
    if not isinstance(trainer, MegatronLayout) or not (split := _first_split(topo, trainer.tp_groups, "TP groups")):
        return ""
    i, gpus, spans = split
    return (f"trainer TP group {i} (TP {trainer.tp}: {gpus}) {spans}: training's TP all-reduces would cross the "
            f"network (trainers keep TP inside a machine); the sync only reads where the shards lie, as given")


def _first_split(topo: Topology, groups: list[list[str]], plural: str) -> tuple[int, str, str] | None:
    """The first group of GPUs that spans machines: (its index, its GPUs spelt short, 'spans M1 and M2 (N more of
    the K PLURAL do too)'); None when none does."""
    split = []
    for i, group in enumerate(groups):
        machines = list(dict.fromkeys(machine_of(topo.resolve(g)) for g in group))
        if len(machines) > 1:
            split.append((i, group, machines))
    if not split:
        return None
    i, group, machines = split[0]
    n = len(split) - 1
    more = f" ({n} more of the {len(groups)} {plural} {'does' if n == 1 else 'do'} too)" if n else ""
    return i, compress_endpoints(group), f"spans {', '.join(machines[:-1])} and {machines[-1]}{more}"


def _gpu_lists(args: argparse.Namespace, topo: Topology) -> tuple[list[str], list[str]]:
    """The --trainer and --rollout GPUs, or the defaults where they name GPUs the topology has.

    The defaults are the halves of one 8-GPU box: on a cluster (GPUs named nodeK.gpuN) or a smaller box they
    name GPUs that are not there, and the unknown-endpoint error would not say that it came from a default."""
    given = {"--trainer": args.trainer, "--rollout": args.rollout}
    defaults = {"--trainer": DEFAULT_TRAINER, "--rollout": DEFAULT_ROLLOUT}
    lists = {flag: _flag_gpus(flag, defaults[flag] if spec is None else spec) for flag, spec in given.items()}
    for flag, gpus in lists.items():
        missing = [g for g in gpus if g not in topo.graph and g not in topo.aliases]
        if given[flag] is None and missing:
            all_gpus = topo.gpus()
            first = [g for g in all_gpus if g.rpartition(".")[0] == all_gpus[0].rpartition(".")[0]] if all_gpus else []
            pair = first if len(first) > 1 else all_gpus[:2]  # one box's halves, else two GPUs of two nodes
            half = len(pair) // 2
            hint = f"; e.g. --trainer {_span(pair[:half])} --rollout {_span(pair[half:])}" if half else ""
            raise WorkloadError(f"the default {flag} {defaults[flag]} names {missing[0]}, which topology "
                                f"'{topo.name}' lacks: give --trainer and --rollout{hint}")
        _check_gpus(flag, gpus, topo)
    check_colocation(topo, lists["--trainer"], lists["--rollout"], names=("--trainer", "--rollout"))
    return lists["--trainer"], lists["--rollout"]


def _flag_gpus(flag: str, spec: str) -> list[str]:
    """`parse_gpus` with the flag the list came from named in its error."""
    try:
        return parse_gpus(spec)
    except WorkloadError as exc:
        raise WorkloadError(f"{flag}: {exc}") from None


def _check_gpus(flag: str, gpus: list[str], topo: Topology) -> None:
    """Every name of a --trainer/--rollout list is a GPU of the topology; else an error that names the flag (the
    layouts would only say which endpoint, and a sync has two lists)."""
    for gpu in gpus:
        name = topo.aliases.get(gpu, gpu)
        if name in topo.graph and topo.kind(name) == "gpu":
            continue
        has = spell_for_message(topo.gpus())
        what = (f"'{gpu}' is a {topo.kind(name)} in topology '{topo.name}', not a GPU" if name in topo.graph
                else f"unknown GPU '{gpu}' in topology '{topo.name}'")
        raise WorkloadError(f"{flag}: {what} (it has {has})")


def _flag(check, text: str, flag: str) -> float:
    """A number flag read by the check `SyncSetup` applies to it (one rule in one place), its message without the
    flag (argparse names it)."""
    try:
        value: object = float(text)
    except ValueError:
        value = text  # not a number: the check says what it expects
    try:
        return check(value, flag)
    except WorkloadError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None


def _fraction(text: str) -> float:
    return _flag(check_kv_reserve, text, "--kv-reserve")


def _step_seconds(text: str) -> float:
    """--train-step: a duration ('60', '90s') by `check_train_step`, the rule `SyncSetup` checks it by (read as
    > 0 from the start: a -1 refused as not '>= 0' and then a 0 as not '> 0' were two rules)."""
    try:
        return check_train_step(parse_seconds(text, "--train-step", positive=True), "--train-step", shown=text)
    except (ScenarioError, WorkloadError) as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--train-step: ")) from None


def _bytes_per_param(text: str) -> float:
    return _flag(check_bytes_per_param, text, "--trainer-bytes-per-param")


def _trainer(args: argparse.Namespace, gpus: list[str]):
    if args.megatron is None:
        return FSDPLayout(gpus)
    degrees = parse_key_values([kv for kv in args.megatron.split(",") if kv.strip()], _MEGATRON, "--megatron",
                               what="--megatron degree", example="tp=2,pp=2")
    return MegatronLayout(gpus, **degrees)


def _run(args: argparse.Namespace) -> int:
    if args.list:
        print("models:     " + ", ".join(models.names()))
        print("strategies: " + ", ".join(n if n != "shared-pool" else "shared-pool (= shared-pool:pull-on-publish)"
                                         for n in names()))
        print("knobs (--knob KEY=VALUE), with their defaults:")
        for line in _knob_lines():
            print(f"  {line}")
        return 0
    if not args.model or not args.strategy:
        raise WorkloadError("give MODEL and STRATEGY (or --list)")
    if args.perfetto:  # before the run: a long sync must not end in a refusal
        refuse_overwrite(args.perfetto, args.force, "trace", file=True, inputs=(args.topology, args.calibration))
    topo = presets.load(args.topology, calibration=args.calibration or "default")
    trainer_gpus, rollout_gpus = _gpu_lists(args, topo)
    rollout = RolloutLayout(rollout_gpus, tp=args.tp, expert_parallel=args.ep)
    setup = SyncSetup(topo, models.get(args.model), _trainer(args, trainer_gpus), rollout,
                      rollout_dtype="fp8" if args.fp8 else None,
                      decode=DecodeBatch(batch=args.batch, context=args.context),
                      kv_reserve_fraction=args.kv_reserve, train_step_s=args.train_step,
                      trainer_bytes_per_param=args.trainer_bytes_per_param)
    given = split_all(args.knob, what="knob", example="bucket_bytes=512MiB")
    strategy = get(args.strategy, **given)
    changed = _changed_knobs(strategy, args.strategy, given)  # before the run: a mistake here must not wait for it
    for note in (_colocated_note(topo, trainer_gpus, rollout_gpus), _split_trainer_note(topo, setup.trainer),
                 _split_engine_note(topo, rollout),
                 strategy.scale_note(setup) or _beyond_benchmark_note(len(trainer_gpus) + len(rollout_gpus))):
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
    load_loop()  # compiled (the first time) before the run is timed: its cost must not count as the sync's
    started = time.perf_counter()
    try:
        res = simulate_sync(setup, strategy, keep_result=bool(args.perfetto))
    except ScenarioError as exc:
        if not changed:
            raise
        # a cost or size from a knob, multiplied into some copy, is refused where the copy is declared: say which
        # knobs were set, or the message names only the copy (per_tensor_s=1e8 made a 2.9e9 s setup)
        raise WorkloadError(f"{exc} (knobs set: {', '.join(f'{k}={v}' for k, v in changed.items())})") from None
    # the re-runs copy and perturb the whole topology: its size decides their cost, not the GPUs the sync uses
    first_run_s = time.perf_counter() - started
    samples, skipped = default_samples(args.samples, SYNC_SAMPLES, gpus=len(topo.gpus()), first_run_s=first_run_s)
    metrics = res.metrics_with_units()
    intervals = None
    if samples and res.feasible:
        if note := rerun_note(samples, first_run_s):
            print(note, file=sys.stderr, flush=True)
        # every metric's interval from re-running the sync on perturbed topologies (hwmodels.intervals)
        intervals = intervals_over(lambda t: simulate_sync(replace(setup, topology=t), strategy).metrics(), topo,
                                   samples=samples, point=res.metrics())
    if skipped and res.feasible:
        print(skipped, file=sys.stderr)  # a note, on stderr in every mode like the others: stdout is the answer
    say_calibration_note(topo)
    if args.perfetto and res.sim_result is not None:
        res.sim_result.write_trace(args.perfetto)
    if args.json:
        print_json({"strategy": res.strategy, "feasible": res.feasible, "reason": res.reason,
                    "inputs": _inputs(args, setup, strategy, changed), "metrics": metric_values(metrics),
                    "memory_gpus": {"peak_extra_GiB": res.peak_extra_gpu, "headroom_GiB": res.headroom_gpu},
                    **interval_fields(intervals, _why_no_intervals(res, skipped))})
        return 0
    # which parameters answered: a profile fitted on real GPUs, or datasheet numbers (said here too, since the
    # interval that says so is skipped on clusters by default; a trial compared the two as if alike)
    print(f"{res.strategy}: {setup.model.name} on {topo.name} ({_gpu_models(topo, setup)}, "
          f"{topo.calibration_id or 'uncalibrated'}), trainer "
          f"{setup.trainer.describe()}, rollout {setup.rollout.describe()}"
          + (f"; knobs {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else ""))
    if not res.feasible:
        print(f"infeasible: {res.reason}")
    print_metrics(metrics, intervals)
    if where := _memory_where(res, setup):
        print(where)
    return 0


def _gpu_models(topo: Topology, setup: SyncSetup) -> str:
    """The GPU models the sync runs on ('H200'; 'H100 trainer, H200 rollout' where they differ): a cluster preset
    is H100 unless its name says -h200, and the header must not leave that to be guessed (a trial read an H100
    cluster's answer as an H200 one)."""
    trainer = sorted({topo.gpu(g).model for g in setup.trainer.gpus})
    rollout = sorted({topo.gpu(g).model for g in setup.rollout.gpus})
    if trainer == rollout:
        return "/".join(trainer)
    return f"{'/'.join(trainer)} trainer, {'/'.join(rollout)} rollout"


# the largest sync `benchmarks/sync_scale.py` times (README, "At cluster scale"): every strategy but the
# point-to-point ones answers there in under 10 s and ~1 GB on the 2-core VM
BENCHMARKED_GPUS = 1024


def _beyond_benchmark_note(gpus: int) -> str:
    """A note before a sync larger than any the scale benchmark measured (a trial's 4,096-GPU pull-on-publish sync
    declared for ~100 s and took 12.7 GB, with nothing said before)."""
    if gpus <= BENCHMARKED_GPUS:
        return ""
    return (f"{gpus:,} GPUs: beyond the {BENCHMARKED_GPUS:,} the scale benchmark measures (under 10 s and about 1 GB "
            f"for most strategies there); a simulation's time and memory can grow faster than the GPUs: this one may "
            f"take minutes and many GB")


def _knob_lines() -> list[str]:
    """Each strategy's knobs and their defaults, one line per strategy (a trial found them only in errors and the
    source); what each costs is said where its default is defined (the strategy's module docstring)."""
    lines = [f"{name}: " + ", ".join(f"{k}={_plain(s.default)}" for k, s in settings_of(cls.Knobs).items())
             for name, cls in STRATEGIES.items()]
    return [*lines, f"delta:<strategy>: changed_fraction={CHANGED_FRACTION}, and the wrapped strategy's"]


def _changed_knobs(strategy, name: str, given: dict[str, object]) -> dict[str, object]:
    """The strategy's knobs that differ from those its name gives (`shared-pool:relay` is mode=relay by name, not by
    a --knob, and `delta --knob inner=rdma-p2p` wraps rdma-p2p): an answer made with a coarser simulation
    (`max_sim_tasks=1`) or another cost must say so wherever it is read later."""
    default = get(name, **{k: v for k, v in given.items() if k == "inner"})
    changed = {f.name: getattr(strategy.knobs, f.name) for f in fields(strategy.knobs)
               if getattr(strategy.knobs, f.name) != getattr(default.knobs, f.name)}
    if strategy.changed_fraction != default.changed_fraction:  # `delta:`'s own knob
        changed["changed_fraction"] = strategy.changed_fraction
    return changed


def _inputs(args: argparse.Namespace, setup: SyncSetup, strategy, changed: dict[str, object]) -> dict[str, object]:
    """What `--json` says was asked, so that a stored answer carries its question: model, machine and GPU models,
    layouts, dtype, decode batch, the other settings, and every knob's value (`knobs_changed`: those not at their
    defaults)."""
    topo = setup.topology
    return {"model": setup.model.name, "topology": topo.name, "gpu_models": _gpu_models(topo, setup),
            "calibration": topo.calibration_id, "trainer": compress_endpoints(list(setup.trainer.gpus)),
            "trainer_layout": setup.trainer.describe(), "rollout": compress_endpoints(list(setup.rollout.gpus)),
            "rollout_layout": setup.rollout.describe(), "tp": setup.rollout.tp, "ep": setup.rollout.expert_parallel,
            "fp8": setup.wire_dtype == "fp8", "batch": setup.decode.batch, "context": setup.decode.context,
            "kv_reserve": setup.kv_reserve_fraction, "train_step_s": setup.train_step_s,
            "trainer_bytes_per_param": setup.trainer_bytes_per_param,
            "knobs": _knob_values(strategy),
            "knobs_changed": sorted(changed)}


def _knob_values(strategy) -> dict[str, object]:
    """Every knob's value, as --json holds it: `delta:`'s own first, where it wraps the strategy."""
    values = {} if strategy.changed_fraction is None else {"changed_fraction": strategy.changed_fraction}
    return values | {f.name: _plain(getattr(strategy.knobs, f.name)) for f in fields(strategy.knobs)}


def _plain(value: object) -> object:
    """A knob's value as JSON holds it (numbers, booleans, strings; anything else by its text)."""
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def _why_no_intervals(res: SyncResult, skipped: str) -> str:
    """Why `sync --json` carries no intervals (`metrics_out.interval_fields`): an infeasible configuration has no
    times to spread, `--samples 0` asked for none, and the default skips them on a costly setup (its note)."""
    return "infeasible" if not res.feasible else why_no_intervals(skipped)


def _memory_where(res: SyncResult, setup: SyncSetup) -> str:
    """Which GPU the memory figures are of: the largest extra memory is often a trainer's (its pool slot), the
    least headroom a rollout's, and a table of two numbers does not say so (a trial read them as one GPU's)."""
    def role(g: str) -> str:
        roles = [r for r, gpus in (("trainer", setup.trainer.gpus), ("rollout", setup.rollout.gpus)) if g in gpus]
        return f"{g} (a {' and '.join(roles)} GPU)" if roles else g

    parts = []
    if res.peak_extra_gpu:
        parts.append(f"peak_extra_GiB on {role(res.peak_extra_gpu)}")
    if res.headroom_gpu:
        parts.append(f"the least headroom_GiB on {role(res.headroom_gpu)}")
    return "memory: " + "; ".join(parts) if parts else ""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        description="Simulate one weight sync with a strategy and print sync time, stall, bytes, memory, decode step.",
        epilog="examples:\n  fabricsim sync --list\n"
               "  fabricsim sync Qwen3-30B-A3B rdma-p2p --trainer gpu0-3 --rollout gpu4-7\n"
               "  fabricsim sync Llama-3-70B nccl-broadcast --topology cluster-4x8 "
               "--trainer node0-1.gpu0-7 --rollout node2-3.gpu0-7 --tp 8 --json\n"
               "  fabricsim sync Llama-3-8B host-staged --knob bucket_bytes=1e9 --knob include_d2h=false",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="model preset (see --list)")
    p.add_argument("strategy", nargs="?", help="strategy name, e.g. rdma-p2p, shared-pool:zero-copy, delta:rdma-p2p")
    p.add_argument("--list", action="store_true", help="list models, strategies and their knobs")
    p.add_argument("--topology", default="hgx-h200-8",
                   help=f"topology preset or file (default hgx-h200-8; clusters: {presets.CLUSTER_PATTERN}, H100 "
                        "unless the name has -h200)")
    p.add_argument("--calibration", metavar="PATH", help="calibration profile: a path, a bundled profile's name "
                   "(h200x8), or 'none' for the datasheet figures (default: the preset's bundled one)")
    p.add_argument("--trainer", help=f"trainer GPUs (default {DEFAULT_TRAINER})")
    p.add_argument("--megatron", metavar="tp=T,pp=P,ep=E", help="Megatron trainer layout instead of FSDP")
    p.add_argument("--rollout", help=f"rollout GPUs (default {DEFAULT_ROLLOUT})")
    p.add_argument("--tp", type=int, default=1, help="rollout engine TP degree (default 1)")
    p.add_argument("--ep", action="store_true", help="rollout engines spread experts over their ranks")
    p.add_argument("--fp8", action="store_true", help="engines run fp8 weights (bf16 -> fp8 conversion)")
    p.add_argument("--batch", type=int, default=64, help="decode batch per engine (default 64)")
    p.add_argument("--context", type=int, default=4096, help="cached tokens per sequence (default 4096)")
    p.add_argument("--kv-reserve", type=_fraction, default=0.0, metavar="FRACTION",
                   help="HBM fraction each rollout GPU keeps for KV cache during the sync, on top of its weights "
                        "(default 0: engines release it, as colocated sleep mode does; an engine that keeps it "
                        "holds vLLM's gpu_memory_utilization, 0.9 by default, less the share its weights and "
                        "activations take, e.g. about 0.75 for an 8B bf16 model on an H200)")
    p.add_argument("--train-step", type=_step_seconds, default=60.0, metavar="SECONDS",
                   help="training step length, for the staleness of asynchronous modes (default 60 s)")
    p.add_argument("--trainer-bytes-per-param", type=_bytes_per_param, default=2.0, metavar="N",
                   help="bytes per parameter the trainer keeps on its GPUs during the sync (default 2: bf16 shards, "
                        "optimizer state offloaded; 14 keeps fp32 master weights and Adam moments on the GPU)")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy cost knob (repeat); sizes (*_bytes) and times (*_s) take units: 512MiB, 20us")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_output_args(p, SYNC_SAMPLES, "sync")
    p.set_defaults(func=_run)
