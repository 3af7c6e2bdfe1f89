"""The workload suite on the CPU: case lists, the fake device's bookkeeping, the file, the twins, the fit of
software costs (calibration split only) and the report against the committed one-H200 runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import load_profile
from fabricsim.validate import cli
from fabricsim.validate.errors import MeasurementError, ValidateRunError
from fabricsim.validate.fit.workloads_fit import PROFILE_KEYS, costs_from_profile, fit_costs
from fabricsim.validate.fit.workloads_models import tensor_document
from fabricsim.validate.fit.workloads_report import compare, report_workloads, summarise
from fabricsim.validate.fit.workloads_sim import simulate_workload
from fabricsim.validate.gpu.workloads import run_workloads
from fabricsim.validate.gpu.workloads_fake import FakeWorkloads
from fabricsim.validate.workload_cases import (
    CALIBRATION,
    HELD_OUT,
    MULTI_GPU_MECHS,
    TENSORS_FILE,
    build_workload_cases,
    plan_buckets,
)
from fabricsim.validate.workloads_file import check_workload_document, load_workloads

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "validate" / "data" / "h200x1-workloads"
READERS = ROOT / "validate" / "data" / "h200x1-workloads-readers"
PROFILE = ROOT / "hwmodels" / "profiles" / "h200x1.json"


def test_committed_tensor_lists_are_the_presets() -> None:
    """The committed lists equal the presets, and live inside the package where an installed wheel has them
    (they once sat under validate/data, which package-data does not ship)."""
    assert TENSORS_FILE == ROOT / "validate" / "workload_tensors.json"
    assert json.loads(TENSORS_FILE.read_text()) == json.loads(json.dumps(tensor_document()))


def test_case_list_splits_and_multi_gpu_cases() -> None:
    one = build_workload_cases(1)
    ids = [c.id for c in one]
    assert len(ids) == len(set(ids))
    assert {c.split for c in one if "ipc-bucket-256M" in c.id or c.model == "llama70b" or c.kind == "kv"} == {HELD_OUT}
    assert any(c.split == CALIBRATION for c in one)
    assert not any(c.gpus > 1 for c in one)
    four = build_workload_cases(4)
    multi = {c.mech for c in four if c.gpus == 4}
    assert multi == set(MULTI_GPU_MECHS)
    assert [c.params["readers"] for c in four if c.mech == "ipc-pull-readers" and c.gpus == 4] == [1, 2, 3]


def test_fake_run_records_every_case_and_lists_what_it_skipped(tmp_path: Path) -> None:
    dev = FakeWorkloads(fail=("ws-ipc-bucket-64M-qwen30b",))
    out = run_workloads(tmp_path / "w", dev, kind="fake", verbose=False)
    doc = json.loads((out / "workloads.json").read_text())
    done = {c["id"] for c in doc["cases"]}
    want = {c.id for c in build_workload_cases(1)} - {"ws-ipc-bucket-64M-qwen30b"}
    assert done == want and dev.closed
    reasons = {s["id"]: s["reason"] for s in doc["skipped"]}
    assert reasons["ws-ipc-bucket-64M-qwen30b"].startswith("failed")
    assert check_workload_document(doc, "x").cases
    with pytest.raises(ValidateRunError, match="not empty"):
        run_workloads(out, FakeWorkloads(), verbose=False)


def test_budget_spent_skips_cases_and_only_filters(tmp_path: Path) -> None:
    out = run_workloads(tmp_path / "w", FakeWorkloads(), budget_s=0.0, verbose=False)
    doc = json.loads((out / "workloads.json").read_text())
    assert not doc["cases"] and any(s["reason"] == "time budget spent" for s in doc["skipped"])
    out = run_workloads(tmp_path / "k", FakeWorkloads(), only=("kv-",), verbose=False)
    assert {c["kind"] for c in json.loads((out / "workloads.json").read_text())["cases"]} == {"kv"}


def test_bad_workload_files_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = json.loads((RUN / "workloads.json").read_text())
    bad = copy.deepcopy(doc)
    bad["cases"][3]["measured"]["time_s"] = -1
    with pytest.raises(MeasurementError, match="time_s"):
        check_workload_document(bad, "f")
    p = tmp_path / "workloads.json"
    p.write_text("{not json")
    assert cli.main(["report", str(p), "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed JSON" in err


def test_cli_workloads_suite_without_gpu_says_nothing_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("fabricsim.validate.gpu.workloads.open_workload_device", lambda: None)
    assert cli.main(["validate", "--suite", "workloads", "--out", str(tmp_path / "w")]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_twins_use_the_cases_bucket_plan_and_every_committed_case_has_one() -> None:
    m = load_workloads(RUN)
    topo = presets.get("h200-1")
    costs = costs_from_profile(load_profile(PROFILE))
    for c in m.cases:
        meas = m.measured[c.id]
        if "buckets" in meas:
            from fabricsim.validate.fit.workloads_sim import tensor_sizes

            assert len(plan_buckets(tensor_sizes(c.model), int(c.params["bucket_bytes"]))) == meas["buckets"]
        pred = simulate_workload(c, meas, topo, costs)
        assert pred["time_s"] > 0 and math.isfinite(pred["time_s"])


def test_fit_reads_only_the_calibration_split_and_reproduces_the_committed_profile() -> None:
    """Held-out times multiplied by 100 change nothing; the fit equals the costs in the committed profile."""
    m = load_workloads(RUN)
    for c in m.doc["cases"]:
        if c["split"] == HELD_OUT:
            c["measured"]["time_s"] *= 100
            c["measured"]["times_s"] = [t * 100 for t in c["measured"]["times_s"]]
    m = check_workload_document(m.doc, "poisoned")
    fit = fit_costs(m, presets.get("h200-1", calibration=load_profile(PROFILE)))
    committed = costs_from_profile(load_profile(PROFILE)).values
    assert set(fit.costs.values) == set(committed) <= set(PROFILE_KEYS)
    for k, v in committed.items():
        assert fit.costs.values[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert all(cid.split(":")[0] in {c.id for c in m.cases if c.split == CALIBRATION} for cid in fit.residuals)


def test_committed_reports_reproduce(tmp_path: Path) -> None:
    """Re-simulating the committed runs with the committed profile gives the committed errors (CI guard)."""
    for run in (RUN, READERS):
        df = compare(load_workloads(run), load_profile(PROFILE))
        old = pd.read_csv(run / "report" / "errors.csv")
        merged = df.merge(old, on=["case", "observable"], suffixes=("", "_old"))
        assert len(merged) == len(df)
        assert (merged.predicted_s - merged.predicted_s_old).abs().max() <= 1e-9 + 1e-6 * merged.predicted_s.max()
        summary = json.loads((run / "report" / "summary.json").read_text())
        assert summarise(df)[HELD_OUT]["n"] == summary[HELD_OUT]["n"]


def test_report_stores_measured_and_simulated_rows_with_one_point_id(tmp_path: Path) -> None:
    from fabricsim.harness.store import ResultsStore

    line = report_workloads(READERS, profile=PROFILE, out=tmp_path / "rep", store=tmp_path / "store")
    assert "held-out" in line and (tmp_path / "rep" / "report.md").exists()
    rows = ResultsStore(tmp_path / "store").load(study="validate-workloads")
    hw, sim = rows[rows.source == "hw"], rows[rows.source == "sim"]
    assert len(hw) == len(sim) > 0 and set(hw.point_id) == set(sim.point_id)


def test_multi_gpu_cases_have_twins_and_the_relay_beats_pulls_on_nvswitch() -> None:
    """The cases written for 2+ GPUs (not yet measured) simulate on an 8-GPU board: seven pulls from one
    trainer GPU share its egress, the relay chain does not, NCCL's ring broadcast reaches every GPU at once."""
    topo = presets.get("hgx-h200-8")
    costs = costs_from_profile(load_profile(PROFILE))
    cases = {c.id: c for c in build_workload_cases(8) if c.gpus == 8}
    t = {cid: simulate_workload(c, {}, topo, costs)["time_s"] for cid, c in cases.items()}
    assert set(t) >= {"ws-nccl-flat-7r-llama8b", "ws-nccl-tensor-7r-llama8b", "ws-nccl-bucket-7r-llama8b",
                      "ws-relay-7r-llama8b", "ws-ipc-pull-readers-1r-llama8b", "ws-ipc-pull-readers-7r-llama8b"}
    assert t["ws-ipc-pull-readers-7r-llama8b"] > 5 * t["ws-ipc-pull-readers-1r-llama8b"]
    assert t["ws-relay-7r-llama8b"] < 2 * t["ws-ipc-pull-readers-1r-llama8b"]
    assert t["ws-nccl-tensor-7r-llama8b"] > t["ws-nccl-flat-7r-llama8b"]
