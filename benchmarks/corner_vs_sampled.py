"""Corner intervals against sampled ones, on points of the studies that carry them.

Studies get their 90% intervals from the point run plus one run on the slow and one on the fast corner
topology (`hwmodels.intervals.corner_intervals`; kv_offload and pd_disaggregation mirror the slow corner);
`fabricsim simulate`, `sync` and `serve` sample 32 perturbed topologies instead
(`hwmodels.intervals.predict_interval`). The corner is meant to bound the sampled interval from outside at
first order (an L1 norm of the groups' effects against an L2 norm). This script measures, per point:
the point value, the sampled interval (`--samples`: 256 re-runs, 64 for the costly serving cases, so that the
reference is not itself noisy; studies' `simulate` uses 32), the corner interval (two corners) and the
mirrored one (slow corner only), the log-width ratio corner / sampled, whether the corner interval contains
the sampled one (allowing 1% for the sampled interval's own noise), and each method's wall time.

    python benchmarks/corner_vs_sampled.py             # -> benchmarks/results/corner-vs-sampled.json
    python benchmarks/corner_vs_sampled.py --quick     # the cheap half of the points, 64 samples
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _record import machine_facts, write_result

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.intervals import Interval, corner_intervals, intervals_over
from fabricsim.hwmodels.topology import Topology, nearest_host
from fabricsim.simcore import Simulation

RESULTS = Path(__file__).with_name("results")
STUDIES = Path(__file__).resolve().parent.parent / "studies"
# The sampled interval is itself an estimate: at 32 samples its log half-width moves by ~12% between seeds (the
# spread of a 32-sample standard deviation), enough to make a corner look narrow or wide by chance. The reference
# here takes 256 samples (64 for the serving loops that cost seconds a run), and allows its ends 1%.
SAMPLES, QUICK_SAMPLES, EXPENSIVE_SAMPLES = 256, 64, 64
SLACK = 0.01


def _study(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", STUDIES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fanout(topology: str, fanout: int, nbytes: int) -> tuple[Topology, Callable[[Topology], dict[str, float]]]:
    def run(t: Topology) -> dict[str, float]:
        sim = Simulation(t, record_load=False)
        for i, gpu in enumerate(t.gpus()[:fanout]):
            sim.transfer(f"c{i}", nearest_host(t, gpu), gpu, nbytes)
        return {"makespan_s": sim.run().makespan_s}

    return presets.get(topology), run


def _weight_sync(layout: str, model: str, strategy: str) -> tuple[Topology, Callable[[Topology], dict[str, float]]]:
    from fabricsim.workloads import models
    from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
    from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync

    ws = _study("weight_sync")
    topo_name, trainer, rollout = ws.LAYOUTS[layout]
    topo = presets.get(topo_name)
    m = models.get(model)
    tp = ws.rollout_tp(m, topo.gpu(rollout[0]).hbm_bytes, len(rollout))

    def run(t: Topology) -> dict[str, float]:
        res = simulate_sync(SyncSetup(t, m, FSDPLayout(trainer), RolloutLayout(rollout, tp=tp)), get(strategy))
        return {"sync_s": res.sync_s, "stall_s": res.stall_s}

    return topo, run


def _kv_offload(topology: str, context: int, policy: str) -> tuple[Topology, Callable[[Topology], dict[str, float]]]:
    from fabricsim.workloads.requests import Request
    from fabricsim.workloads.serving import ServingConfig, serve

    kv = _study("kv_offload")
    setup = kv.SETUPS[topology]
    reqs = [Request(i, 0.0, context, kv.OUTPUT_TOKENS) for i in range(setup["requests"])]
    cfg = ServingConfig(model=setup["model"], tp=setup["tp"], page_tokens=16, mechanism="ce-batched",
                        token_budget=32768, layer_groups=setup["layer_groups"])

    def run(t: Topology) -> dict[str, float]:
        m = serve(t, reqs, policy, cfg).metrics()
        return {k: m[k] for k in ("throughput_tok_s", "tpot_p50_s", "makespan_s")}

    return presets.get(topology), run


def _pd(link: str, split: str) -> tuple[Topology, Callable[[Topology], dict[str, float]]]:
    from fabricsim.workloads.requests import poisson_requests
    from fabricsim.workloads.serving import ServingConfig, serve

    pd = _study("pd_disaggregation")
    prefill, decode = pd.SPLITS[split]
    reqs = poisson_requests(16.0, pd.REQUESTS, prompt_tokens=2048, output_tokens=128, prompt_dist="uniform",
                            output_dist="geometric", seed=0)
    cfg = ServingConfig(model="Llama-3-8B", gpus=pd._gpus(link, prefill, decode))

    def run(t: Topology) -> dict[str, float]:
        m = serve(t, reqs, "pd-disaggregation", cfg,
                  policy_params={"prefill_instances": prefill, "decode_instances": decode}).metrics()
        return {k: m[k] for k in ("ttft_p99_s", "tpot_p99_s", "kv_handoff_mean_s")}

    return presets.get(pd.LINKS[link]), run


def _uncalibrated(case: tuple[Topology, Callable]) -> tuple[Topology, Callable]:
    topo, run = case
    return presets.get(topo.name, calibration=None), run


# (name, builder, cheap?): a spread of shapes: lone copies (one group carries them), fan-outs on shared caps,
# weight syncs (pipelines of many copies, one of them not monotone), serving loops (copies beside compute)
CASES: list[tuple[str, Callable[[], tuple[Topology, Callable]], bool]] = [
    ("lone h2d 4 KiB, h200-2", lambda: _fanout("h200-2", 1, 4096), True),
    ("lone h2d 1 GiB, h200-2", lambda: _fanout("h200-2", 1, 1 << 30), True),
    ("lone h2d 1 GiB, h200-2 uncalibrated", lambda: _uncalibrated(_fanout("h200-2", 1, 1 << 30)), True),
    ("h2d fan-out 8 x 64 MiB, hgx-h200-8", lambda: _fanout("hgx-h200-8", 8, 64 << 20), True),
    ("h2d fan-out 8 x 1 MiB, hgx-h200-8", lambda: _fanout("hgx-h200-8", 8, 1 << 20), True),
    ("weight_sync split-4+4 Llama-3-8B rdma-p2p", lambda: _weight_sync("split-4+4", "Llama-3-8B", "rdma-p2p"), True),
    ("weight_sync colocated Llama-3-8B rdma-p2p", lambda: _weight_sync("colocated", "Llama-3-8B", "rdma-p2p"), True),
    ("weight_sync colocated Llama-3-8B cuda-ipc-buckets",
     lambda: _weight_sync("colocated", "Llama-3-8B", "cuda-ipc-buckets"), True),
    ("weight_sync split-4+4 Llama-3-8B host-staged", lambda: _weight_sync("split-4+4", "Llama-3-8B", "host-staged"),
     False),
    ("weight_sync nodes-2+2 Llama-3-8B nccl-broadcast (uncalibrated)",
     lambda: _weight_sync("nodes-2+2", "Llama-3-8B", "nccl-broadcast"), False),
    ("kv_offload h100-1 4k host-offload", lambda: _kv_offload("h100-1", 4096, "host-offload"), False),
    ("kv_offload h100-1 16k topk-paging", lambda: _kv_offload("h100-1", 16384, "topk-paging"), False),
    ("pd_disaggregation nvlink 2:2", lambda: _pd("nvlink", "2:2"), False),
]


def _iv(iv: Interval) -> dict[str, float]:
    return {"lo": iv.lo, "hi": iv.hi}


def _log_width(iv: Interval) -> float:
    return math.log(iv.hi / iv.lo) if iv.lo > 0 and iv.hi > 0 else float("nan")


def compare(name: str, topo: Topology, run: Callable[[Topology], Mapping[str, float]], samples: int) -> list[dict]:
    """One case: every metric of `run` with its three intervals and the methods' wall times."""
    t0 = time.perf_counter()
    sampled = intervals_over(run, topo, samples=samples)
    t1 = time.perf_counter()
    corner = corner_intervals(run, topo)
    t2 = time.perf_counter()
    mirror = corner_intervals(run, topo, mirror=True)
    t3 = time.perf_counter()
    rows = []
    for metric, s in sampled.items():
        c, m = corner[metric], mirror[metric]
        rows.append({
            "case": name, "metric": metric, "value": s.value, "calibrated": s.calibrated, "samples": samples,
            "sampled": _iv(s), "corner": _iv(c), "mirrored": _iv(m),
            "width_ratio_corner": _log_width(c) / _log_width(s) if _log_width(s) > 0 else None,
            "width_ratio_mirrored": _log_width(m) / _log_width(s) if _log_width(s) > 0 else None,
            "corner_contains_sampled": c.lo <= s.lo * (1 + SLACK) and s.hi * (1 - SLACK) <= c.hi,
            "mirrored_contains_sampled": m.lo <= s.lo * (1 + SLACK) and s.hi * (1 - SLACK) <= m.hi,
            "wall_s": {"sampled": round(t1 - t0, 3), "corner": round(t2 - t1, 3), "mirrored": round(t3 - t2, 3)},
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=SAMPLES,
                    help=f"perturbed re-runs of the sampled reference interval ({SAMPLES}; at most "
                         f"{EXPENSIVE_SAMPLES} for the costly cases)")
    ap.add_argument("--quick", action="store_true", help=f"only the cheap cases, {QUICK_SAMPLES} samples")
    ap.add_argument("--out", type=Path, default=RESULTS / "corner-vs-sampled.json")
    args = ap.parse_args(argv)
    samples = QUICK_SAMPLES if args.quick else args.samples
    started = datetime.now(UTC)
    rows: list[dict] = []
    for name, build, cheap in CASES:
        if args.quick and not cheap:
            continue
        topo, run = build()
        n = samples if cheap else min(samples, EXPENSIVE_SAMPLES)
        for r in compare(name, topo, run, n):
            rows.append(r)
            s, c = r["sampled"], r["corner"]
            print(f"{name:62s} {r['metric']:18s} sampled [{s['lo']:.4g}, {s['hi']:.4g}]  corner "
                  f"[{c['lo']:.4g}, {c['hi']:.4g}]  width x{r['width_ratio_corner'] or float('nan'):.2f}  "
                  f"contains: {r['corner_contains_sampled']}", file=sys.stderr)
    ratios = [r["width_ratio_corner"] for r in rows if r["width_ratio_corner"] is not None]
    summary = {
        "metrics": len(rows),
        "corner_contains_sampled": sum(r["corner_contains_sampled"] for r in rows),
        "mirrored_contains_sampled": sum(r["mirrored_contains_sampled"] for r in rows),
        "width_ratio_corner_median": sorted(ratios)[len(ratios) // 2] if ratios else None,
        "width_ratio_corner_min": min(ratios) if ratios else None,
        "width_ratio_corner_max": max(ratios) if ratios else None,
    }
    write_result(args.out, {
        "benchmark": "corner_vs_sampled", "command": "python benchmarks/corner_vs_sampled.py"
        + (" --quick" if args.quick else f" --samples {samples}"),
        "started": started.isoformat(timespec="seconds"), "machine": machine_facts(), "samples": samples,
        "level": 0.9, "slack": SLACK, "summary": summary, "rows": rows})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
