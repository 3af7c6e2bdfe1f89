"""Prediction intervals: closed forms for the sampled spread, invariants, profiles of other GPU counts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import bundled_profile_path, load_profile, profile_from_dict
from fabricsim.hwmodels.intervals import Interval, interval_from_samples, predict_interval, say_calibration_note
from fabricsim.hwmodels.uncertainty import PRIOR_SIGMA, PRIOR_WEIGHT, Uncertainty, spread_from_residuals
from fabricsim.hwmodels.uncertainty import Spread as S
from fabricsim.simcore import Simulation

GiB = 1 << 30


def lone_h2d(topo) -> float:
    sim = Simulation(topo, record_load=False)
    sim.transfer("a", "host", "gpu0", GiB)
    return sim.run().makespan_s


def test_one_rate_spread_gives_the_lognormal_interval() -> None:
    # Only the H2D rate varies (sigma 0.05): a 1 GiB lone copy's time is latency + bytes / (rate x f), so
    # log(time / point) ~ -log f ~ N(0, 0.05) and the 90% interval is point x exp(+-1.645 x 0.05).
    profile = load_profile(bundled_profile_path("h200x2"))
    only = replace(profile, uncertainty=Uncertainty({"rate.h2d": S(0.05)}, "test", default_sigma=0.0))
    topo = presets.get("h200-2", calibration=only)
    iv = predict_interval(lone_h2d, topo, samples=400)
    z = 1.6448536
    assert math.log(iv.hi / iv.value) == pytest.approx(z * 0.05, rel=0.12)
    assert math.log(iv.value / iv.lo) == pytest.approx(z * 0.05, rel=0.12)


def test_no_spread_no_width_and_same_seed_same_interval() -> None:
    profile = load_profile(bundled_profile_path("h200x2"))
    none = replace(profile, uncertainty=Uncertainty({}, "test", default_sigma=0.0))
    iv = predict_interval(lone_h2d, presets.get("h200-2", calibration=none), samples=8)
    assert iv.lo == iv.value == iv.hi
    topo = presets.get("h200-2")
    assert predict_interval(lone_h2d, topo, samples=8) == predict_interval(lone_h2d, topo, samples=8)


def test_uncalibrated_is_wider_and_says_so() -> None:
    cal = predict_interval(lone_h2d, presets.get("h200-2"), samples=16)
    raw = predict_interval(lone_h2d, presets.get("h200-2", calibration=None), samples=16)
    assert raw.lo <= raw.value <= raw.hi and cal.lo <= cal.value <= cal.hi
    assert raw.hi / raw.lo > 1.5 * (cal.hi / cal.lo)
    assert "uncalibrated" in raw.format() and "uncalibrated" not in cal.format()
    assert cal.format().endswith("(90%)") and " ms [" in cal.format()


def test_interval_contains_its_point() -> None:
    iv = interval_from_samples(1.0, [1.5, 1.6, 1.7])  # every sample above: the point still lies inside
    assert iv.lo == 1.0 < iv.hi
    assert Interval(1.0, 0.5, 2.0).format() == "1000.0 ms [500.0, 2000.0] (90%)"


def test_spread_shrinks_toward_the_prior() -> None:
    s = spread_from_residuals([0.1, -0.1])
    assert s.sigma == pytest.approx(math.sqrt((0.02 + PRIOR_WEIGHT * PRIOR_SIGMA ** 2) / (2 + PRIOR_WEIGHT)))
    assert spread_from_residuals([]).sigma == pytest.approx(PRIOR_SIGMA)


def test_profile_uncertainty_round_trip_and_bad_input() -> None:
    p = load_profile(bundled_profile_path("h200x2"))
    assert p.uncertainty is not None and p.uncertainty.spreads
    assert profile_from_dict(p.to_dict()).uncertainty == p.uncertainty
    bad = p.to_dict()
    bad["uncertainty"]["spreads"]["rate.h2d"]["sigma"] = -1
    with pytest.raises(CalibrationError, match="uncertainty.spreads.rate.h2d.sigma"):
        profile_from_dict(bad, "p.json")


def test_profile_of_more_gpus_applies_to_fewer_with_a_note() -> None:
    topo = presets.get("h200-1", calibration=bundled_profile_path("h200x2"))
    assert "fitted on 2x H200" in topo.calibration_note and "applied to 1 GPUs" in topo.calibration_note
    assert "gpu1.pcie-duplex" not in topo.caps and "gpu0.pcie-duplex" in topo.caps
    assert presets.get("h200-1").calibration_id == load_profile(bundled_profile_path("h200x1")).id
    with pytest.raises(CalibrationError, match="H100"):
        presets.get("h100-1", calibration=bundled_profile_path("h200x2"))


def test_the_calibration_note_is_said_once_on_stderr_and_only_when_there_is_one(capsys) -> None:
    """The CLIs say it through `say_calibration_note` (tests/test_serving_cli.py runs serve and sync in both modes)."""
    say_calibration_note(presets.get("h200-1", calibration=bundled_profile_path("h200x2")))
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("note: profile ") == 1 and "fitted on 2x H200" in cap.err
    say_calibration_note(presets.get("h200-1", calibration=None))
    assert capsys.readouterr() == ("", "")


def test_study_rows_carry_intervals(tmp_path) -> None:
    from fabricsim.harness.store import ResultsStore
    from fabricsim.harness.study import StudyError, metric_intervals, normalise_metrics
    from fabricsim.harness.sweep import run_sweep

    raw = {"t": (2.0, "s", Interval(2.0, 1.5, 3.0)), "n": 4}
    assert normalise_metrics(raw) == {"t": (2.0, "s"), "n": (4.0, "")}
    assert metric_intervals(raw) == {"t": (1.5, 3.0, 0.9)}
    with pytest.raises(StudyError, match="'t': the third element must be an interval"):
        metric_intervals({"t": (1.0, "s", "wide")})
    run_sweep("example_fanout", store=str(tmp_path), workers=1, progress=False, limit=12)
    df = ResultsStore(str(tmp_path)).load("example_fanout")
    ms = df[df["metric"] == "makespan_s"]
    assert (ms["lo"] <= ms["value"]).all() and (ms["value"] <= ms["hi"]).all() and (ms["level"] == 0.9).all()
    assert df[df["metric"] == "per_gpu_GBps"]["lo"].isna().all()  # only the metrics given one


def test_a_mechanism_copy_takes_its_own_closed_form_and_shares_the_link() -> None:
    # A lone SM copy takes latency + bytes / (rate x efficiency) of the profile's `sm` parameters for its class;
    # beside a copy-engine copy on the same link the two share it (neither beats the link alone).
    from fabricsim.hwmodels.calibration import PathParams

    profile = load_profile(bundled_profile_path("h200x2"))
    sm = PathParams(latency_s=7e-6, bandwidth_Bps=40e9)
    topo = presets.get("h200-2", calibration=replace(profile, mechanisms={"sm": {"h2d": sm}}))
    sim = Simulation(topo, record_load=False)
    sim.transfer("a", "host", "gpu0", GiB, mechanism="sm")
    assert sim.run().makespan_s == pytest.approx(7e-6 + GiB / 40e9, rel=1e-9)
    both = Simulation(topo, record_load=False)
    both.transfer("a", "host", "gpu0", GiB, mechanism="sm")
    both.transfer("b", "host", "gpu0", GiB)
    link = topo.graph.edges["cpu0", "gpu0"]["bw"][("cpu0", "gpu0")]
    assert both.run().makespan_s >= 2 * GiB / link
    # a mechanism the profile lacks still takes the copy engine's parameters in the prediction, but not silently:
    # `fits` says so (the CLI prints it) and the copy's interval is wide, reaching the ~6-9x a pageable copy costs
    assert topo.path("host", "gpu0", GiB, "pageable").rate_cap_Bps == topo.path("host", "gpu0", GiB).rate_cap_Bps
    assert topo.fits("sm", "host", "gpu0") and not topo.fits("pageable", "host", "gpu0") and topo.fits("ce", "host",
                                                                                                         "gpu0")

    def lone(mech: str):
        def run(t):
            s = Simulation(t, record_load=False)
            s.transfer("a", "host", "gpu0", GiB, mechanism=mech)
            return s.run().makespan_s
        return run

    pinned, pageable = predict_interval(lone("ce"), topo, samples=32), predict_interval(lone("pageable"), topo,
                                                                                          samples=32)
    assert pageable.value == pytest.approx(pinned.value)
    assert pinned.hi < 1.2 * pinned.value and pageable.hi > 6 * pageable.value


def test_simulate_says_which_mechanism_has_no_fit(tmp_path, capsys) -> None:
    import json

    from fabricsim.cli import main

    d = load_profile(bundled_profile_path("h200x2")).to_dict()
    del d["mechanisms"]["pageable"]
    (tmp_path / "p.json").write_text(json.dumps(d))
    (tmp_path / "s.yaml").write_text("topology: h200-2\ntransfers:\n"
                                     "  - {id: a, src: host, dst: gpu0, bytes: 1GiB, mechanism: pageable}\n"
                                     "  - {id: b, src: host, dst: gpu1, bytes: 1GiB, mechanism: sm}\n")
    assert main(["simulate", str(tmp_path / "s.yaml"), "--calibration", str(tmp_path / "p.json"),
                 "--samples", "0"]) == 0
    cap = capsys.readouterr()
    notes = [line for line in cap.err.splitlines() if line.startswith("note:")]  # notes: stderr, in every mode
    assert len(notes) == 1 and "pageable (h2d)" in notes[0] and "sm" not in notes[0] and "note:" not in cap.out
    assert main(["simulate", str(tmp_path / "s.yaml"), "--samples", "0"]) == 0  # the bundled profile fits both
    cap = capsys.readouterr()
    assert "note:" not in cap.out + cap.err


def test_unknown_mechanism_is_a_one_line_error() -> None:
    d = load_profile(bundled_profile_path("h200x2")).to_dict()
    d["mechanisms"] = {"dma-magic": {}}
    with pytest.raises(CalibrationError, match="p.json: mechanisms.dma-magic: unknown mechanism"):
        profile_from_dict(d, "p.json")


@pytest.mark.parametrize("samples", [0, 1, True, 2.0])
def test_an_interval_needs_two_reruns(samples):
    """One re-run has no spread (its interval was the point itself, labelled 90%): the API refuses it as the CLIs do."""
    from fabricsim.hwmodels.intervals import intervals_over

    topo = presets.get("h200-2", calibration=None)
    with pytest.raises(ValueError, match="at least 2"):
        predict_interval(lambda t: 1.0, topo, samples=samples)
    with pytest.raises(ValueError, match="at least 2"):
        intervals_over(lambda t: {"x": 1.0}, topo, samples=samples)


def test_a_count_gets_whole_number_ends_rounded_outward() -> None:
    """`serve` printed `steps 1163 [1160.9, 1165.36]`: a count's interval has whole ends, floored and ceiled (never
    narrower than the continuous one), while a time beside it keeps its own; a count that is the same in every
    draw stays without spread."""
    from fabricsim.hwmodels.intervals import intervals_over

    topo = presets.get("h200-2", calibration=None)  # the wide a priori spread: the copy time moves a lot

    def run(t) -> dict[str, float | int]:
        s = lone_h2d(t)
        return {"copies": round(s * 1e5), "time_s": s, "flows": 1}

    got = intervals_over(run, topo, samples=16)
    continuous = interval_from_samples(run(topo)["copies"], [float(run(t)["copies"]) for t in _draws(topo, 16)])
    assert continuous.lo != int(continuous.lo) and continuous.hi != int(continuous.hi)  # the case being tested
    iv = got["copies"]
    assert (iv.lo, iv.hi) == (math.floor(continuous.lo), math.ceil(continuous.hi))
    assert isinstance(iv.lo, int) and isinstance(iv.hi, int) and iv.value == run(topo)["copies"]
    assert got["time_s"].lo != int(got["time_s"].lo)  # not a count: untouched
    assert got["flows"].lo == got["flows"].hi == 1


def _draws(topo, samples: int):
    """The perturbed topologies `intervals_over` runs on with its default seed, in its order."""
    import numpy as np

    from fabricsim.hwmodels.intervals import perturbed, uncertainty_of

    rng = np.random.default_rng(0)
    unc = uncertainty_of(topo)
    return [perturbed(topo, rng, unc) for _ in range(samples)]
