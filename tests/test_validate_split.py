"""What `report` judges as held out, and how it says so: a case the profile was fitted on never counts as held
out (new-user trial: `--split file` scored the bundled h200x2 profile on 32 of its own calibration cases), a
profile that does not record its split is said to be unchecked, provenance names inputs the same way from any
folder, and a statistic beside its aim is printed so that a miss never reads as a hit."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import load_profile
from fabricsim.validate import cli
from fabricsim.validate.cases import CALIBRATION, HELD_OUT
from fabricsim.validate.fit.calibrate import calibrate_file
from fabricsim.validate.fit.report import judging_split, pct_beside, report_file, vs_aim, vs_range
from fabricsim.validate.fit.workloads_report import calibrate_workloads, report_workloads
from fabricsim.validate.gpu.device_fake import FakeDevice
from fabricsim.validate.gpu.measure import run_validate
from fabricsim.validate.measurements import load_measurements, recorded_path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ROOT / "validate" / "data" / "h200x1-workloads"
H200X1 = ROOT / "hwmodels" / "profiles" / "h200x1.json"


@pytest.fixture(scope="module")
def old_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A measurement file whose recorded split differs from today's (as files measured before every collective
    calibrated at alternate sizes): its NCCL calibration sizes were recorded held-out. Returns it and those ids."""
    folder = tmp_path_factory.mktemp("old")
    run_validate(folder / "v", "quick", FakeDevice(2), verbose=False)
    doc = json.loads((folder / "v" / "measured.json").read_text())
    moved = []
    for c in doc["cases"]:
        if c["group"] == "nccl" and c["split"] == CALIBRATION:
            c["split"] = HELD_OUT
            moved.append(c["id"])
    path = folder / "measured.json"
    path.write_text(json.dumps(doc))
    return path, moved


def test_report_refuses_a_split_that_calls_the_profiles_calibration_cases_held_out(
        tmp_path: Path, old_split: tuple[Path, list[str]], capsys: pytest.CaptureFixture) -> None:
    path, moved = old_split
    assert cli.main(["calibrate", str(path), str(tmp_path / "p.json")]) == 0  # today's split (the default)
    assert f"split current: {len(moved)} cases judged by today's case list" in capsys.readouterr().out
    rc = cli.main(["report", str(path), "--profile", str(tmp_path / "p.json"), "--split", "file", "--no-store",
                   "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    assert f"fitted on these measurements with --split current; --split file would call {len(moved)} of its" in err
    # without --split: the profile's own split, said in the one-line summary and the summary file
    line = report_file(path, profile=tmp_path / "p.json", out=tmp_path / "r", store=None)
    assert f"split current (the profile's), {len(moved)} cases judged by today's case list" in line
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["split"] == "current" and sorted(summary["split_changed_from_file"]) == sorted(moved)
    assert "split_note" not in summary


def test_report_defaults_to_the_split_the_profile_was_fitted_with(
        tmp_path: Path, old_split: tuple[Path, list[str]]) -> None:
    path, moved = old_split
    profile = calibrate_file(path, tmp_path / "p.json", split="file")
    assert not set(moved) & set(profile.provenance["calibration_cases"])
    report_file(path, profile=tmp_path / "p.json", out=tmp_path / "r", store=None)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["split"] == "file" and summary["split_changed_from_file"] == []
    # asking for today's split calls none of the cases it was fitted on held-out: allowed, and recorded
    report_file(path, profile=tmp_path / "p.json", out=tmp_path / "r2", store=None, split="current")
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["split"] == "current"


def test_a_profile_whose_cases_the_case_list_now_holds_out_is_refused(
        tmp_path: Path, old_split: tuple[Path, list[str]]) -> None:
    path, _ = old_split
    m = load_measurements(path)
    profile = calibrate_file(path, tmp_path / "p.json")
    held = next(c.id for c in m.cases if c.split == HELD_OUT and c.group == "copies")
    stale = replace(profile, provenance={**profile.provenance,
                                         "calibration_cases": [*profile.provenance["calibration_cases"], held]})
    with pytest.raises(CalibrationError, match="1 of its .* calibration cases are held-out under --split current"):
        judging_split(m, stale)
    # measurements the profile was not fitted on (another run): its case ids are not its cases
    other = json.loads(path.read_text())
    other["created_at"] = "2030-01-01T00:00:00+00:00"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert judging_split(load_measurements(tmp_path / "other.json"), stale, "file") == ("file", None)


def test_a_profile_without_a_recorded_split_is_said_to_be_unchecked(
        tmp_path: Path, old_split: tuple[Path, list[str]]) -> None:
    path, _ = old_split
    profile = calibrate_file(path, tmp_path / "p.json")
    replace(profile, provenance={}).save(tmp_path / "hand.json")
    line = report_file(path, profile=tmp_path / "hand.json", out=tmp_path / "r", store=None)
    assert line.startswith("note: profile ") and "records no split" in line and "cannot be checked" in line
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["split"] == "current" and "records no split" in summary["split_note"]
    assert "Note: profile " in (tmp_path / "r" / "report.md").read_text()


def test_workload_split_is_not_an_option_and_the_fit_source_is_recorded_relative(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(H200X1, tmp_path / "p.json")
    assert cli.main(["calibrate", str(WORKLOADS), str(tmp_path / "p.json"), "--split", "file"]) == 2
    assert "--split does not apply to a workload measurement" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # another folder, the path typed absolute
    calibrate_workloads(WORKLOADS.resolve(), tmp_path / "p.json")
    got = json.loads((tmp_path / "p.json").read_text())
    assert got["provenance"]["workload_fit"]["source"] == "validate/data/h200x1-workloads"
    assert got == json.loads(H200X1.read_text())  # the committed profile, reproduced from elsewhere
    assert recorded_path(tmp_path / "x" / "run1") == "x/run1"  # inside the working folder: relative to it
    assert recorded_path("/nonexistent-root/runs/run1") == "run1"  # elsewhere: the name, as `measurements`


def test_workload_report_refuses_costs_fitted_on_its_held_out_cases(tmp_path: Path) -> None:
    prof = json.loads(H200X1.read_text())
    fit = prof["provenance"]["workload_fit"]
    fit["fitted_on"]["bucket_fixed_s"].append("ws-ipc-bucket-256M-llama8b")  # a held-out case
    (tmp_path / "p.json").write_text(json.dumps(prof))
    with pytest.raises(CalibrationError, match="fitted its software costs on 1 cases this file calls held-out"):
        report_workloads(WORKLOADS, profile=tmp_path / "p.json", out=tmp_path / "r", store=None)
    del prof["provenance"]["workload_fit"]
    (tmp_path / "p.json").write_text(json.dumps(prof))
    line = report_workloads(WORKLOADS, profile=tmp_path / "p.json", out=tmp_path / "r", store=None)
    assert line.startswith("note: profile ") and "cannot be checked" in line
    assert load_profile(tmp_path / "p.json").software_costs  # the costs themselves are still used


def test_a_statistic_beside_its_aim_never_prints_as_the_aim() -> None:
    assert pct_beside(0.1000016, 0.10) == "10.0002%" and vs_aim(0.1000016, 0.10) == "10.0002% > 10%"
    assert vs_aim(0.0999996, 0.10) == "9.99996% ≤ 10%" and vs_aim(0.10, 0.10) == "10.0% ≤ 10%"
    assert vs_aim(0.014, 0.03) == "1.4% ≤ 3%" and vs_aim(0.102, 0.10) == "10.2% > 10%"
    assert vs_range(0.9500001, 0.85, 0.95) == "95.00001% > 95%" and vs_range(0.8, 0.85, 0.95) == "80.0% < 85%"
    assert vs_range(0.927, 0.85, 0.95) == "85% ≤ 92.7% ≤ 95%"


def test_reporting_a_measurement_twice_leaves_the_store_comparison_as_once(
        tmp_path: Path, old_split: tuple[Path, list[str]]) -> None:
    """`fabricsim report` stores its measured and simulated rows on every run; the results store keeps them all,
    and `compare` counts each case by its newest run, so n_measured stays what one measurement gives."""
    from fabricsim.harness.store import ResultsStore, compare
    from fabricsim.validate.fit.report import compare as simulate_cases
    from fabricsim.validate.fit.report import store_rows

    path, _ = old_split
    m, p = load_measurements(path), calibrate_file(path, tmp_path / "p.json")
    df, fdf = simulate_cases(m, p, samples=0)
    store = ResultsStore(tmp_path / "store")
    store_rows(m, p, df, fdf, store.root)
    once = compare(store.load(f"validate-{m.preset}"))
    assert once["n_measured"].sum() == len(df) + len(fdf)  # every case and finish rank counted once
    for _ in range(2):
        store_rows(m, p, df, fdf, store.root)
    assert store.summary()["runs"].tolist() == [3, 3]  # the store keeps every run ...
    pd.testing.assert_frame_equal(compare(store.load(f"validate-{m.preset}")), once)  # ... counted once


def test_the_newest_measurement_counts_whichever_was_reported_last(
        tmp_path: Path, old_split: tuple[Path, list[str]]) -> None:
    """Measured rows are dated by when they were measured: reporting an older measurement after a newer one of the
    same cases must not make the older one the store's newest (its rows were dated by the report, so it did)."""
    from fabricsim.harness.store import ResultsStore, compare
    from fabricsim.validate.fit.report import compare as simulate_cases
    from fabricsim.validate.fit.report import store_rows

    path, _ = old_split
    old = load_measurements(path)
    doc = json.loads(path.read_text())
    doc["created_at"] = "2099-01-01T00:00:00+00:00"  # measured later, every time twice the old one
    for c in doc["cases"]:
        if "makespan_s" in c["measured"]:
            c["measured"]["makespan_s"] *= 2
    (tmp_path / "new.json").write_text(json.dumps(doc))
    new = load_measurements(tmp_path / "new.json")
    p = calibrate_file(path, tmp_path / "p.json")
    store = ResultsStore(tmp_path / "store")
    for m in (new, old):  # the older one reported last
        df, fdf = simulate_cases(m, p, samples=0)
        store_rows(m, p, df, fdf, store.root)
    got = compare(store.load(f"validate-{old.preset}"))
    got = got[got["metric"] == "makespan_s"].set_index(["pattern", "split"])["measured"].sort_index()
    df_new, _ = simulate_cases(new, p, samples=0)
    want = df_new.groupby(["pattern", "split"])["measured_s"].mean().sort_index()  # compare averages a pattern
    assert got.tolist() == pytest.approx(want.loc[got.index].tolist(), rel=1e-12)
