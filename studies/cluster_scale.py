"""Cluster scale: weight-sync time of every strategy for three large MoE models on 8 ... 1,024 H200 GPUs.

Placement: half the GPUs train (FSDP over `node0 ... node{N/2-1}`, bf16), half serve fp8 weights (bf16 -> fp8
on the way, as the Kimi-K2 and Perplexity setups do) in expert-parallel engines of the smallest TP degree
(8 or more) whose fp8 weights take at most half of a GPU's HBM: TP 8 for Qwen3-235B-A22B, 16 for DeepSeek-V3
and Kimi-K2. On `cluster-Nx8-h200` (rail-optimised, one 400 Gb/s NIC per GPU, the datasheet fabric: no bundled
calibration covers a cluster). A configuration that does not fit (the trainer's bf16 shards on few GPUs, an
engine wider than the rollout half) or needs one machine (CUDA IPC, zero-copy pool reads beyond one node) is answered
"infeasible", which is itself the finding.

Sizes per strategy stop where one simulation stops taking seconds on a 2-core machine (`MAX_GPUS`):
point-to-point schedules (`rdma-p2p`, `delta:rdma-p2p`) create one flow per (trainer, peer) pair per pipeline
task, so their flow count grows with GPUs^2 (65,536 flow events at 128 GPUs, ~4 million at 1,024), and in
their rotated all-to-all a departure re-rates a few hundred flows, which the engine's incremental solve often
fails to bound, so it re-solves the whole network (~1 ms at 128 GPUs); `pull-on-publish` pulls every
rollout GPU's slices from every trainer GPU (262,144 distinct routes to build at 1,024 GPUs), and `relay`
moves its chains' chunks one after another (a million flow events at 1,024 GPUs, 4-7 s per simulation on the
dev VM). `host-staged` broadcasts every rank's bucket around the whole ring (GPUs^2 hops per round); it and
the shared pool (with one publish) declare all their work up front, so the compiled event loop runs them. See
`benchmarks/sync_scale.py` for the wall time of each point, also beyond these sizes.

`sync_s` and `stall_s` carry 90% intervals (`lo`, `hi` in the rows) from one re-run on the slow corner, mirrored:
without a profile they are the a priori spread, about x/÷ 1.5.

Run it:  fabricsim sweep cluster_scale && fabricsim plot cluster_scale   (a few minutes on two cores)
"""

from __future__ import annotations

from dataclasses import replace

from fabricsim.harness.study import REASON, Figure, Grid, PointContext, Study, attach_intervals
from fabricsim.hwmodels.intervals import corner_topology
from fabricsim.workloads.weightsync import get, simulate_sync
from fabricsim.workloads.weightsync.base import Strategy
from fabricsim.workloads.weightsync.cluster_layout import expert_parallel_tp, layout, setup_of

__all__ = ["GPUS", "MAX_GPUS", "MODELS", "STUDY", "VARIANTS", "expert_parallel_tp", "layout", "run_point", "setup_of",
           "strategy_of"]

MODELS = ["Qwen3-235B-A22B", "DeepSeek-V3", "Kimi-K2"]
INTERVAL_METRICS = ("sync_s", "stall_s")  # 90% intervals: datasheet parameters, the a priori 25% spread
GPUS = [8, 16, 32, 64, 128, 256, 512, 1024]
MAX_GPUS = {"nccl-broadcast": 1024, "cuda-ipc-buckets": 1024, "host-staged": 1024, "rdma-p2p": 128,
            "shared-pool:zero-copy": 1024, "shared-pool:pull-on-publish": 1024, "shared-pool:relay": 1024,
            "delta:rdma-p2p": 128, "rdma-p2p max_sim_tasks=1": 512}
# Strategies run with knobs other than their defaults, by the name the study gives them: `rdma-p2p` with each GPU's
# pipeline simulated as one task (a coarser pipeline: -2.0% to +5.4% off the default's sync time from 32 GPUs up, up to
# 19% longer on 8-16; see `rdma_p2p`'s docstring), which reaches 512 GPUs (256 trainer NICs, Perplexity's scale)
# in under a minute per simulation.
VARIANTS = {"rdma-p2p max_sim_tasks=1": ("rdma-p2p", {"max_sim_tasks": 1})}


def strategy_of(name: str) -> Strategy:
    """The strategy a point's `strategy` names: a registered one, or a `VARIANTS` entry."""
    spec, knobs = VARIANTS.get(name, (name, {}))
    return get(spec, **knobs)


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    setup = setup_of(point)
    tp = setup.rollout.tp
    res = simulate_sync(setup, strategy_of(point["strategy"]),
                        keep_result=ctx is not None and ctx.trace_path is not None)
    if ctx is not None and ctx.trace_path is not None and res.sim_result is not None:
        res.sim_result.write_trace(str(ctx.trace_path))
    out = {**res.metrics_with_units(), "rollout_tp": (float(tp), "")}
    if not res.feasible:
        return {**out, REASON: res.reason}
    # One re-run on the slow corner, mirrored: without a profile every link's rate and latency moves by the same
    # a priori factor, so the fast side is close to the slow side's mirror image (hwmodels.intervals).
    slow = simulate_sync(replace(setup, topology=corner_topology(setup.topology, "slow")),
                         strategy_of(point["strategy"]))
    runs = {"point": out, "slow": slow.metrics_with_units()}
    return attach_intervals(runs, INTERVAL_METRICS, calibrated=setup.topology.calibration_id is not None)


GRID = Grid.points([{"strategy": s, "model": m, "gpus": g}
                    for s, top in MAX_GPUS.items() for m in MODELS for g in GPUS if g <= top])

STUDY = Study(
    name="cluster_scale",
    description=__doc__.splitlines()[0],
    grid=GRID,
    run=run_point,
    topology=lambda point: layout(int(point["gpus"]))[0],
    figures=[
        Figure("sync_time_vs_gpus", x="gpus", y="sync_s", hue="strategy", facet="model", logx=True, logy=True,
               xlabel="GPUs (half train, half serve)", ylabel="sync time [s]",
               title="Weight sync time against cluster size (missing point = infeasible or beyond MAX_GPUS; "
                     "bands: 90% interval, a priori: no profile)"),
        Figure("stall_vs_gpus", x="gpus", y="stall_s", hue="strategy", facet="model", logx=True, logy=True,
               xlabel="GPUs (half train, half serve)", ylabel="generation stall [s]",
               title="Generation stall against cluster size"),
    ],
)
