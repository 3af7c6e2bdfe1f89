"""Weight sync: how long each strategy takes to get new weights from trainer GPUs to rollout GPUs, and what it
costs generation — strategies x models x machine layouts.

Layouts (trainer FSDP / ZeRO-3 over its GPUs; rollout engines of the smallest TP degree whose weights take at most
half of a GPU's HBM):
- `colocated`: hgx-h200-8, trainer and engines on the same 8 GPUs;
- `split-4+4`: hgx-h200-8, trainer on gpu0-3, engines on gpu4-7 (NVLink between them);
- `nodes-2+2`: cluster-4x8 (H100 nodes, 400 Gb/s NIC per GPU), trainer on nodes 0-1, engines on nodes 2-3.

Metrics per point: sync time, generation stall, bytes per link class, peak extra memory and headroom, decode-step
time under the strategy, staleness; infeasible configurations report `feasible = 0` and their memory numbers, with
the strategy's reason (`fabricsim results show weight_sync --infeasible`).
Points with `decode_steps` add `gen_time_s` = stall + decode_steps x decode step: the time the rollout side spends
per training step, which is where zero-copy wins (few steps) or loses (many). The time metrics (`sync_s`,
`stall_s`, `gen_time_s`) carry 90% corner intervals (`lo`, `hi` in the rows): each
configuration is also run on its topology's slow and fast corner (`hwmodels.intervals.corner_topology`).

Run it:  fabricsim sweep weight_sync && fabricsim plot weight_sync   (11 s on two cores; 4.5 s without corners)
"""

from __future__ import annotations

from functools import lru_cache

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

from fabricsim.harness.study import REASON, Figure, Grid, PointContext, Study, attach_intervals
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.intervals import CORNERS, corner_topology
from fabricsim.hwmodels.topology import Topology
from fabricsim.workloads import models
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync

LAYOUTS = {
    "colocated": ("hgx-h200-8", [f"gpu{i}" for i in range(8)], [f"gpu{i}" for i in range(8)]),
    "split-4+4": ("hgx-h200-8", [f"gpu{i}" for i in range(4)], [f"gpu{i}" for i in range(4, 8)]),
    "nodes-2+2": ("cluster-4x8", [f"node{n}.gpu{i}" for n in (0, 1) for i in range(8)],
                  [f"node{n}.gpu{i}" for n in (2, 3) for i in range(8)]),
}
MODELS = ["Llama-3-8B", "Qwen3-30B-A3B", "Llama-3-70B", "Qwen3-235B-A22B"]
STRATEGIES = ["nccl-broadcast", "cuda-ipc-buckets", "host-staged", "rdma-p2p", "shared-pool:zero-copy",
              "shared-pool:pull-on-publish", "delta:rdma-p2p"]
DECODE_STEPS = [1, 10, 100, 1000, 10000]
ZC_STRATEGIES = ["cuda-ipc-buckets", "rdma-p2p", "shared-pool:zero-copy", "shared-pool:pull-on-publish"]
# the metrics whose rows carry an interval: the times that move with the calibrated parameters (the decode step is
# a roofline of the GPU datasheet, which no profile perturbs; bytes do not move)
INTERVAL_METRICS = ("sync_s", "stall_s", "gen_time_s")


def rollout_tp(model: models.ModelConfig, hbm_bytes: int, n_gpus: int) -> int:
    """Smallest TP degree (power of two dividing the rollout GPUs and the heads) whose weights fit in half of HBM."""
    tp = 1
    while tp < n_gpus and (model.weight_bytes() / tp > 0.5 * hbm_bytes or model.num_heads % tp):
        tp *= 2
    return tp


@lru_cache(maxsize=16)
def _topology(topo_name: str, calibration: str | None, corner: str | None) -> Topology:
    """A layout's machine, or one of its corner topologies (built once per process: every point of the machine
    shares it)."""
    topo = presets.get(topo_name, calibration=calibration)
    return topo if corner is None else corner_topology(topo, corner)


@lru_cache(maxsize=512)
def _sync(layout: str, model_name: str, strategy: str, calibration: str | None, corner: str | None = None):
    """One simulated sync, on the point topology or a corner (cached: the decode-steps points of a configuration
    share it)."""
    topo_name, trainer, rollout = LAYOUTS[layout]
    topo = _topology(topo_name, calibration, corner)
    model = models.get(model_name)
    tp = rollout_tp(model, topo.gpu(rollout[0]).hbm_bytes, len(rollout))
    setup = SyncSetup(topo, model, FSDPLayout(trainer), RolloutLayout(rollout, tp=tp))
    return simulate_sync(setup, get(strategy)), tp


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    calibration = ctx.calibration if ctx is not None else "default"
    steps = point.get("decode_steps")

    def metrics(corner: str | None) -> dict:
        res, tp = _sync(point["layout"], point["model"], point["strategy"], calibration, corner)
        out: dict = {**res.metrics_with_units(), "rollout_tp": (float(tp), "")}
        if steps is not None and res.feasible:
            out["gen_time_s"] = (res.stall_s + steps * res.decode_step_s, "s")
        return out

    res, tp = _sync(point["layout"], point["model"], point["strategy"], calibration)
    runs = {"point": metrics(None)}
    if res.feasible:  # an infeasible configuration has no times to bound
        runs.update({c: metrics(c) for c in CORNERS})
    topo_name, trainer, rollout = LAYOUTS[point["layout"]]
    topo = _topology(topo_name, calibration, None)
    out = {**attach_intervals(runs, INTERVAL_METRICS, calibrated=topo.calibration_id is not None),
           REASON: res.reason}  # empty when feasible
    if ctx is not None and ctx.trace_path is not None and res.feasible:
        model = models.get(point["model"])
        setup = SyncSetup(topo, model, FSDPLayout(trainer), RolloutLayout(rollout, tp=tp))
        simulate_sync(setup, get(point["strategy"]), keep_result=True).sim_result.write_trace(str(ctx.trace_path))
    return out


def _bar_errors(cells: list, vals: list[float]) -> list[list[float]] | None:
    """Whiskers from each bar's prediction interval (the rows' `lo`, `hi`): [below, above] per bar, 0 where a
    bar has none; None when no bar has one (rows from before intervals)."""
    if not cells or "lo" not in cells[0].columns:
        return None
    below, above = [], []
    for c, v in zip(cells, vals, strict=True):
        lo, hi = c["lo"].mean(), c["hi"].mean()
        ok = bool(c["lo"].notna().any()) and v == v
        below.append(max(0.0, v - lo) if ok else 0.0)
        above.append(max(0.0, hi - v) if ok else 0.0)
    return [below, above] if any(below) or any(above) else None


def sync_time_bars(df) -> MplFigure:
    """Sync time per strategy and model, one panel per layout; an infeasible configuration is a cross where its bar
    would stand (`results show weight_sync --infeasible` says why), a configuration not run is nothing."""
    sim = df[df["source"] == "sim"]
    if "decode_steps" in sim.columns:
        sim = sim[sim["decode_steps"].isna()]
    rows = sim[sim["metric"] == "sync_s"]
    ran = sim[sim["metric"].isin(["sync_s", "feasible"])]
    off = ran[(ran["metric"] == "feasible") & (ran["value"] == 0)]
    infeasible = set(zip(off["layout"], off["model"], off["strategy"], strict=True))
    layouts = [lay for lay in LAYOUTS if lay in set(ran["layout"])]
    fig = MplFigure(figsize=(5.2 * len(layouts), 4.2), layout="constrained")
    axes = fig.subplots(1, len(layouts), squeeze=False).ravel()
    for ax, lay in zip(axes, layouts, strict=True):
        panel = rows[rows["layout"] == lay]
        present = [m for m in MODELS if m in set(ran.loc[ran["layout"] == lay, "model"])]
        width = 0.8 / max(1, len(STRATEGIES))
        for k, strat in enumerate(STRATEGIES):
            cells = [panel[(panel["model"] == m) & (panel["strategy"] == strat)] for m in present]
            vals = [c["value"].mean() for c in cells]
            ax.bar([i + k * width for i in range(len(present))], vals, width, label=strat, color=f"C{k}",
                   yerr=_bar_errors(cells, vals), error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"})
            crosses = [i + k * width for i, m in enumerate(present) if (lay, m, strat) in infeasible]
            ax.plot(crosses, [0.03] * len(crosses), "x", color=f"C{k}", markersize=5, markeredgewidth=1.5,
                    transform=ax.get_xaxis_transform())  # at the foot of the panel, whatever the time axis
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(present))], present, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("sync time [s]")
        ax.set_title(lay, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    cross = Line2D([], [], marker="x", color="0.3", linestyle="none", markeredgewidth=1.5)
    fig.legend([*handles, cross], [*labels, "infeasible (why: fabricsim\nresults show weight_sync\n--infeasible)"],
               fontsize=8, loc="outside right upper")  # never over a bar
    fig.suptitle("Weight sync time per strategy and model (× at the foot: infeasible; whiskers: 90% interval)")
    return fig


GRID = (Grid.product(layout=list(LAYOUTS), model=MODELS, strategy=STRATEGIES)
        + Grid.product(layout=["colocated", "split-4+4"], model=MODELS[:3], strategy=ZC_STRATEGIES,
                       decode_steps=DECODE_STEPS))

STUDY = Study(
    name="weight_sync",
    description=" ".join(__doc__.split("\n\n")[0].split()),  # its first sentence takes two lines
    grid=GRID,
    run=run_point,
    calibration="default",
    topology=lambda point: LAYOUTS[point["layout"]][0],
    figures=[
        sync_time_bars,
        Figure("zero_copy_win_lose", x="decode_steps", y="gen_time_s", hue="strategy", facet="model", logx=True,
               logy=True, where={"layout": "split-4+4"},
               title="Rollout time per training step (stall + decode steps), split 4+4 on HGX H200"),
        Figure("stall", x="model", y="stall_s", hue="strategy", facet="layout", logy=True,
               title="Generation stall per sync"),
    ],
)
