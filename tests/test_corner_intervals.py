"""Corner intervals (the cheap interval studies carry): closed forms on a lone copy, invariants, the study and
serving helpers, the stored columns, `results show` and the weight-sync bars."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import bundled_profile_path, load_profile
from fabricsim.hwmodels.intervals import (
    Interval,
    corner_interval,
    corner_intervals,
    corner_runs,
    corner_topology,
    intervals_from_corner_runs,
    predict_interval,
    z_of,
)
from fabricsim.hwmodels.uncertainty import UNFITTED_MECHANISM_SIGMA, Uncertainty
from fabricsim.hwmodels.uncertainty import Spread as S
from fabricsim.simcore import Simulation

GiB = 1 << 30
Z90 = 1.6448536269514722


def lone_h2d(topo, nbytes: int = GiB) -> float:
    sim = Simulation(topo, record_load=False)
    sim.transfer("a", "host", "gpu0", nbytes)
    return sim.run().makespan_s


def only(spreads: dict[str, float]):
    """h200-2 with the bundled profile, but only the given groups have a spread."""
    profile = load_profile(bundled_profile_path("h200x2"))
    unc = Uncertainty({g: S(s) for g, s in spreads.items()}, "test", default_sigma=0.0)
    return presets.get("h200-2", calibration=replace(profile, uncertainty=unc))


def test_z_of_the_level() -> None:
    assert z_of(0.9) == pytest.approx(Z90)
    assert z_of(0.5) == pytest.approx(0.6744897501960817)
    with pytest.raises(ValueError, match="level"):
        z_of(1.0)


def test_lone_copy_rate_corner_in_closed_form() -> None:
    # time = latency + bytes / rate: the rate moved by exp(-+z sigma) moves the transfer part by exp(+-z sigma)
    topo = only({"rate.h2d": 0.05})
    lat = topo.path_params["h2d"].latency_s
    iv = corner_interval(lone_h2d, topo)
    assert (iv.hi - lat) / (iv.value - lat) == pytest.approx(math.exp(Z90 * 0.05), rel=1e-9)
    assert (iv.lo - lat) / (iv.value - lat) == pytest.approx(math.exp(-Z90 * 0.05), rel=1e-9)


def test_lone_copy_latency_corner_in_closed_form() -> None:
    topo = only({"latency.h2d": 0.2})
    lat = topo.path_params["h2d"].latency_s
    point = lone_h2d(topo, 4096)
    assert lone_h2d(corner_topology(topo, "slow"), 4096) == pytest.approx(point + lat * (math.exp(Z90 * 0.2) - 1))
    assert lone_h2d(corner_topology(topo, "fast"), 4096) == pytest.approx(point + lat * (math.exp(-Z90 * 0.2) - 1))
    # another level, another z
    slow50 = lone_h2d(corner_topology(topo, "slow", level=0.5), 4096)
    assert slow50 == pytest.approx(point + lat * (math.exp(z_of(0.5) * 0.2) - 1))


def test_one_group_corner_matches_the_sampled_interval() -> None:
    # a lone copy rests on one group: the first-order argument is exact, corner and sampling agree
    topo = only({"rate.h2d": 0.05})
    corner = corner_interval(lone_h2d, topo)
    sampled = predict_interval(lone_h2d, topo, samples=400)
    assert math.log(corner.hi / corner.lo) == pytest.approx(math.log(sampled.hi / sampled.lo), rel=0.15)


def test_corner_contains_its_point_and_is_deterministic() -> None:
    topo = presets.get("h200-2")
    for nbytes in (4096, 1 << 20, 64 << 20, GiB):
        a = corner_interval(lambda t, n=nbytes: lone_h2d(t, n), topo)
        b = corner_interval(lambda t, n=nbytes: lone_h2d(t, n), topo)
        assert a == b
        assert a.lo < a.value < a.hi and a.level == 0.9 and a.calibrated
    assert corner_interval(lone_h2d, only({})) == Interval(*(lone_h2d(only({})),) * 3, note="")


def test_uncalibrated_corner_is_wider_and_says_so() -> None:
    cal = corner_interval(lone_h2d, presets.get("h200-2"))
    raw = corner_interval(lone_h2d, presets.get("h200-2", calibration=None))
    assert raw.lo <= raw.value <= raw.hi
    assert raw.hi / raw.lo > 1.5 * (cal.hi / cal.lo)
    assert not raw.calibrated and "uncalibrated" in raw.format()


def test_corner_topology_leaves_the_original_alone_and_names_its_corners() -> None:
    topo = presets.get("h200-2")
    before = topo.path_params["h2d"]
    slow = corner_topology(topo, "slow")
    assert topo.path_params["h2d"] == before and not topo.unfitted_mechanism_scale
    assert slow.path_params["h2d"].latency_s > before.latency_s
    assert slow.path_params["h2d"].bandwidth_Bps < before.bandwidth_Bps
    far = math.exp(Z90 * UNFITTED_MECHANISM_SIGMA)  # an unfitted mechanism: 90% one-sided far end
    assert all(v == pytest.approx((far, 1 / far)) for v in slow.unfitted_mechanism_scale.values())
    assert not corner_topology(topo, "fast").unfitted_mechanism_scale
    with pytest.raises(ValueError, match="corner must be one of slow, fast"):
        corner_topology(topo, "sideways")


def test_intervals_from_corner_runs_rules() -> None:
    def runs(slow: float, fast: float | None = None) -> dict:
        out = {"point": {"t": (2.0, "s")}, "slow": {"t": (slow, "s")}}
        if fast is not None:
            out["fast"] = {"t": (fast, "s")}
        return out

    # monotone: the corners are the ends; a throughput falls at the slow corner and still fits
    assert intervals_from_corner_runs(runs(3.0, 1.5))["t"] == Interval(2.0, 1.5, 3.0)
    assert intervals_from_corner_runs(runs(1.5, 3.0))["t"] == Interval(2.0, 1.5, 3.0)
    # one corner: mirrored in log space
    iv = intervals_from_corner_runs(runs(4.0))["t"]
    assert (iv.lo, iv.hi) == pytest.approx((1.0, 4.0))
    # not monotone (both corners on one side): the larger deviation on both sides
    iv = intervals_from_corner_runs(runs(1.0, 1.9))["t"]
    assert (iv.lo, iv.hi) == pytest.approx((1.0, 4.0))
    # only the named metrics; missing and non-finite ones get none
    both = {"point": {"t": 2.0, "n": 5.0, "x": float("nan")}, "slow": {"t": 3.0, "n": 5.0}, "fast": {"t": 1.0}}
    assert set(intervals_from_corner_runs(both, ["t", "x", "absent"])) == {"t"}


def test_corner_intervals_over_several_metrics_one_run_each() -> None:
    calls = []

    def run(t) -> dict:
        calls.append(t)
        ms = lone_h2d(t)
        return {"makespan_s": ms, "GBps": GiB / ms / 1e9}

    ivs = corner_intervals(run, presets.get("h200-2"))
    assert len(calls) == 3
    assert ivs["GBps"].lo == pytest.approx(GiB / ivs["makespan_s"].hi / 1e9)
    assert len(corner_runs(run, presets.get("h200-2"), mirror=True)) == 2


def test_with_intervals_attaches_to_the_named_metrics() -> None:
    from fabricsim.harness.study import StudyError, metric_intervals, normalise_metrics, with_intervals

    topo = presets.get("h200-2")

    def run(t) -> dict:
        return {"makespan_s": (lone_h2d(t), "s"), "copies": 1}

    out = with_intervals(run, topo, ["makespan_s"])
    assert normalise_metrics(out) == {"makespan_s": (lone_h2d(topo), "s"), "copies": (1.0, "")}
    lo, hi, level = metric_intervals(out)["makespan_s"]
    assert lo < lone_h2d(topo) < hi and level == 0.9 and "copies" not in metric_intervals(out)
    sampled = with_intervals(run, topo, ["makespan_s"], method="sampled", samples=8)
    assert set(metric_intervals(sampled)) == {"makespan_s"}
    with pytest.raises(StudyError, match="interval method"):
        with_intervals(run, topo, ["makespan_s"], method="guess")


def test_serve_with_intervals_keeps_the_point_values() -> None:
    from fabricsim.workloads.requests import Request
    from fabricsim.workloads.serving import ServingConfig, ServingError, serve, serve_with_intervals

    reqs = [Request(i, 0.0, 4096, 16) for i in range(4)]
    cfg = ServingConfig(model="Llama-3-8B")
    plain = serve("h100-1", reqs, "host-offload", cfg).metrics_with_units()
    res, out = serve_with_intervals("h100-1", reqs, "host-offload", cfg)
    assert res.metrics_with_units() == plain
    assert {k: v[:2] for k, v in out.items()} == plain
    for k in ("ttft_p50_s", "tpot_p50_s", "throughput_tok_s", "makespan_s"):  # KV streamed from the host
        assert len(out[k]) == 3 and out[k][2].lo <= plain[k][0] <= out[k][2].hi and out[k][2].lo < out[k][2].hi
    assert len(out["steps"]) == 2  # a count: no interval
    # corner runs record no link load: the same times as a full run on the corner topology
    slow = serve(corner_topology(presets.get("h100-1"), "slow"), reqs, "host-offload", cfg).metrics()
    assert out["makespan_s"][2].hi == pytest.approx(slow["makespan_s"], rel=1e-12)
    with pytest.raises(ServingError, match="no interval for pcie_util"):
        serve_with_intervals("h100-1", reqs, "host-offload", cfg, interval_metrics=["makespan_s", "pcie_util"])
    _, mirrored = serve_with_intervals("h100-1", reqs, "host-offload", cfg, mirror=True)
    iv = mirrored["makespan_s"][2]
    assert iv.lo * iv.hi == pytest.approx(plain["makespan_s"][0] ** 2)


def test_weight_sync_rows_carry_intervals(tmp_path) -> None:
    from fabricsim.harness.store import ResultsStore
    from fabricsim.harness.study import load_study, metric_intervals
    from fabricsim.harness.sweep import run_sweep

    study = load_study("weight_sync")
    point = {"layout": "split-4+4", "model": "Llama-3-8B", "strategy": "rdma-p2p", "decode_steps": 10}
    raw = study.run(point)
    ivs = metric_intervals(raw)
    assert set(ivs) == {"sync_s", "stall_s", "gen_time_s"}
    for k, (lo, hi, level) in ivs.items():
        assert lo <= raw[k][0] <= hi and lo < hi and level == 0.9
    run_sweep("weight_sync", store=str(tmp_path), workers=1, progress=False, limit=3)
    df = ResultsStore(str(tmp_path)).load("weight_sync")
    sync = df[df["metric"] == "sync_s"]
    assert len(sync) == 3 and (sync["lo"] <= sync["value"]).all() and (sync["value"] <= sync["hi"]).all()
    assert df[df["metric"] == "flow_events"]["lo"].isna().all()


def test_weight_sync_bars_draw_the_intervals() -> None:
    import pandas as pd

    from fabricsim.harness.study import load_study

    study = load_study("weight_sync")
    bars = next(f for f in study.figures if getattr(f, "__name__", "") == "sync_time_bars")
    rows = [{"metric": "sync_s", "source": "sim", "layout": "colocated", "model": m, "strategy": s,
             "value": 1.0, "lo": 0.8, "hi": 1.3} for m in ("Llama-3-8B", "Llama-3-70B")
            for s in ("rdma-p2p", "nccl-broadcast")]
    fig = bars(pd.DataFrame(rows))
    ax = fig.axes[0]
    whiskers = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    assert len(whiskers) == 2
    segs = whiskers[0].errorbar.lines[2][0].get_segments()
    assert [tuple(s[:, 1]) for s in segs] == [pytest.approx((0.8, 1.3))] * 2
    # rows from before intervals: bars without whiskers, no error
    old = bars(pd.DataFrame(rows).drop(columns=["lo", "hi"]))
    assert all(getattr(c, "errorbar", None) is None for c in old.axes[0].containers)


def test_results_show_prints_the_interval_columns(tmp_path, capsys) -> None:
    from fabricsim.cli import main
    from fabricsim.harness.store import ResultsStore, make_row

    rows = [make_row(study="s", run_id="r1", point_id=f"p{i}", params={"n": i}, metric=m, value=v, unit=u,
                     source="sim", calibration_id="c", interval=iv)
            for i in (1, 2) for m, v, u, iv in (("t", 2.0 * i, "s", (1.5 * i, 3.0 * i, 0.9)), ("k", 7.0, "", None))]
    ResultsStore(str(tmp_path)).write(rows, study="s", run_id="r1")
    assert main(["results", "show", "s", "--store", str(tmp_path), "--csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "point_id,topology,n,source,t [s],t lo [s],t hi [s],k,level"  # metrics with intervals first
    assert out[1].endswith(",2.0,1.5,3.0,7.0,0.9")
    assert main(["results", "show", "s", "--store", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "t lo [s]" in text and "t hi [s]" in text and "level = 0.9" in text


def test_cluster_scale_mirrors_its_slow_corner() -> None:
    from fabricsim.harness.study import load_study, metric_intervals

    study = load_study("cluster_scale")
    out = study.run({"strategy": "nccl-broadcast", "model": "Qwen3-235B-A22B", "gpus": 16})
    v = out["sync_s"][0]
    lo, hi, level = metric_intervals(out)["sync_s"]
    assert lo < v < hi and lo * hi == pytest.approx(v * v) and level == 0.9
    assert hi / v > 1.3  # no profile covers a cluster: the a priori spread, wide
    assert not metric_intervals(study.run({"strategy": "cuda-ipc-buckets", "model": "Qwen3-235B-A22B", "gpus": 16}))


def test_categorical_whiskers_sit_on_their_markers() -> None:
    import pandas as pd

    from fabricsim.harness.plots import draw_figure
    from fabricsim.harness.study import Figure

    rows = pd.DataFrame([{"metric": "t", "unit": "s", "source": "sim", "model": m, "strategy": s, "value": v,
                          "lo": 0.9 * v, "hi": 1.2 * v}
                         for m in ("a", "b") for s, v in (("x", 1.0), ("y", 2.0))])
    ax = draw_figure(Figure("f", x="model", y="t", hue="strategy"), rows).axes[0]
    markers = {tuple(line.get_xdata()) for line in ax.lines if line.get_marker() not in ("None", "", "_")}
    whiskers = [c for c in ax.containers if getattr(c, "has_yerr", False)]
    assert len(whiskers) == 2
    for c in whiskers:  # each hue's whiskers at its own (dodged) marker positions, not at the category labels
        assert tuple(c.lines[0].get_xdata()) in markers
