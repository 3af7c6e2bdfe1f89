"""validate on the CPU: case lists, the fake device layer, the measurement file, calibrate round trip, report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import CalibrationProfile, CapSpec, CollectiveParams, PathParams
from fabricsim.simcore.collectives import ring_schedule
from fabricsim.simcore.scenario import load_scenario, parse_scenario
from fabricsim.validate import cli
from fabricsim.validate.cases import CALIBRATION, HELD_OUT, build_cases, to_scenario
from fabricsim.validate.errors import MeasurementError, ValidateRunError
from fabricsim.validate.fit.calibrate import calibrate, fit_path
from fabricsim.validate.fit.report import compare, report, summarise
from fabricsim.validate.fit.synthetic import synthetic_document
from fabricsim.validate.gpu.device_fake import FakeDevice
from fabricsim.validate.gpu.measure import run_validate
from fabricsim.validate.measurements import Measurements, load_measurements, with_split

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize("n_gpus", [1, 2, 8])
def test_cases_cover_both_splits_and_are_valid_scenarios(n_gpus: int) -> None:
    cases = build_cases(n_gpus, "full")
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    assert {c.split for c in cases} == {CALIBRATION, HELD_OUT}
    sizes = {c.params["bytes"] for c in cases if c.pattern == "h2d"}
    assert min(sizes) == 4096 and max(sizes) == GiB and len(sizes) == 10
    # every size sweep calibrates on both ends and holds out some sizes in between
    h2d = {c.params["bytes"]: c.split for c in cases if c.pattern == "h2d"}
    assert h2d[4096] == h2d[GiB] == CALIBRATION and HELD_OUT in h2d.values()
    preset = {1: "h100-1", 2: "h200-2", 8: "hgx-h200-8"}[n_gpus]
    for c in cases:
        scen = to_scenario(c, preset, n_gpus)
        if c.group == "ipc":
            assert scen is None
            continue
        parsed = parse_scenario(scen, source=c.id)
        assert parsed.items
    assert any(c.group == "nccl" for c in cases) == (n_gpus > 1)


def test_nccl_ring_moves_the_bytes_a_ring_must_move() -> None:
    n, size = 4, 64 * MiB
    ring = [f"gpu{i}" for i in range(n)]
    bc = ring_schedule("broadcast", size, ring)
    assert len(bc) == n - 1 and all(t["bytes"] == size for t in bc)
    ag = ring_schedule("all_gather", size, ring)
    assert sum(t["bytes"] for t in ag) == n * size * (n - 1) // n
    ar = ring_schedule("all_reduce", size, ring)
    assert sum(t["bytes"] for t in ar) == 2 * n * size * (n - 1) // n
    assert all(t.get("after") for t in ar if t["id"].startswith("ag"))


def test_fake_run_publishes_folder_with_scenarios(tmp_path: Path) -> None:
    out = run_validate(tmp_path / "v", "quick", FakeDevice(2), verbose=False)
    assert out == tmp_path / "v"
    m = load_measurements(out)
    assert m.preset == "h200-2" and m.machine["gpus"] == 2
    scen_files = sorted((out / "scenarios").glob("*.json"))
    assert len(scen_files) == sum(1 for c in m.cases if c.group != "ipc")
    res = load_scenario(scen_files[0]).run()
    assert res.makespan_s > 0
    # concurrent cases carry per-transfer finish times; lone ones their own-stream time
    ring = m.measured["ring"]
    assert set(ring["finish_s"]) == {"t0", "t1"}
    assert ring["makespan_s"] >= max(ring["finish_s"].values()) * 0.99
    assert (out / "topo_m.txt").read_text().startswith("\tGPU0")


def test_fake_run_without_sm_copies_lists_the_skip(tmp_path: Path) -> None:
    run_validate(tmp_path / "v", "quick", FakeDevice(1, "NVIDIA H100 80GB HBM3", sm_copies=False), verbose=False)
    m = load_measurements(tmp_path / "v")
    assert m.preset == "h100-1"
    assert not any(c.pattern.startswith("sm") for c in m.cases)
    reasons = " ".join(s["reason"] for s in m.doc["skipped"])
    assert "SM-driven copies skipped" in reasons and "two or more GPUs" in reasons


def test_interrupted_validate_leaves_no_partial_results(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_validate(tmp_path / "v", "quick", FakeDevice(2, fail_after=5), verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_validate_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x").write_text("keep me")
    with pytest.raises(ValidateRunError, match="not empty"):
        run_validate(tmp_path / "v", "quick", FakeDevice(2), verbose=False)
    assert (tmp_path / "v" / "x").read_text() == "keep me"


def test_cli_without_gpu_says_nothing_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("fabricsim.validate.gpu.measure.open_device", lambda: None)
    assert cli.main(["validate", "--out", str(tmp_path / "v")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "v").exists()


@pytest.fixture(scope="module")
def fake_measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fake") / "v"
    run_validate(out, "quick", FakeDevice(2), verbose=False)
    return out


def test_truncated_measurement_file_is_a_clear_error(tmp_path: Path, fake_measured: Path) -> None:
    text = (fake_measured / "measured.json").read_text()
    bad = tmp_path / "measured.json"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(MeasurementError, match="truncated JSON"):
        load_measurements(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=99), "unknown measurement format_version 99"),
    (lambda d: d.update(format="something-else"), "not a fabricsim measurement file"),
    (lambda d: d["machine"].pop("gpu_model"), "missing field 'gpu_model'"),
    (lambda d: d["cases"][0]["measured"].update(makespan_s=-1.0), "expected a positive number"),
    (lambda d: d["cases"][0].update(split="train"), "split must be"),
    (lambda d: d["cases"].append(dict(d["cases"][0])), "duplicate id"),
])
def test_malformed_measurement_file_names_the_problem(tmp_path: Path, fake_measured: Path, edit, message) -> None:
    doc = json.loads((fake_measured / "measured.json").read_text())
    edit(doc)
    bad = tmp_path / "measured.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(MeasurementError, match=message):
        load_measurements(bad)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "m.json").write_text("{")
    assert cli.main(["calibrate", str(tmp_path / "m.json"), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated JSON" in err
    assert not (tmp_path / "p.json").exists()


# ---- calibration round trip ------------------------------------------------------------------------------

def _truth(d2h_discipline: str, host_cap: float) -> CalibrationProfile:
    eff = ((1 * MiB, 0.7), (16 * MiB, 0.93), (GiB, 1.0))
    return CalibrationProfile(
        id="truth", machine="synthetic", gpu_model="H200", gpus=2,
        paths={"h2d": PathParams(8e-6, 50e9, eff, "fair"), "d2h": PathParams(7e-6, 45e9, eff, d2h_discipline),
               "d2d": PathParams(5e-6, 1.9e12, (), "fair"),
               "p2p-nvlink": PathParams(9e-6, 350e9, eff, "fifo")},
        caps=(CapSpec("host-h2d", host_cap, ("h2d",)),
              *(CapSpec(f"gpu{g}.pcie-duplex", 70e9, ("d2h", "h2d"), (f"gpu{g}",)) for g in (0, 1))),
        collectives={"broadcast": CollectiveParams(300e9, 12e-6),
                     "all_gather": CollectiveParams(280e9, 20e-6, ((2 * MiB, 1.0), (32 * MiB, 0.8), (GiB, 1.0))),
                     "all_reduce": CollectiveParams(300e9, 12e-6)},
    )


@pytest.mark.parametrize("d2h_discipline, host_cap", [("fifo", 80e9), ("fair", 65e9)])
def test_calibration_recovers_known_parameters(d2h_discipline: str, host_cap: float) -> None:
    truth = _truth(d2h_discipline, host_cap)
    m = Measurements(synthetic_document("h200-2", truth), "synthetic.json")
    got = calibrate(m)
    for cls, pp in truth.paths.items():
        fit = got.paths[cls]
        assert fit.discipline == pp.discipline, cls
        assert fit.bandwidth_Bps == pytest.approx(pp.bandwidth_Bps, rel=0.01), cls
        assert fit.latency_s == pytest.approx(pp.latency_s, rel=0.02), cls
        for size in (MiB, 4 * MiB, 16 * MiB, 256 * MiB):  # where latency does not mask it
            assert fit.efficiency(size) == pytest.approx(pp.efficiency(size), abs=0.03), (cls, size)
    caps = {c.name: c for c in got.caps}
    assert caps["host-h2d"].Bps == pytest.approx(host_cap, rel=0.01)
    assert caps["gpu1.pcie-duplex"].Bps == pytest.approx(70e9, rel=0.01)
    assert set(caps["gpu0.pcie-duplex"].classes) == {"h2d", "d2h"}
    for op, want in truth.collectives.items():
        fit = got.collective(op)
        assert fit.fixed_s == pytest.approx(want.fixed_s, rel=0.05), op
        assert fit.bus_Bps == pytest.approx(want.bus_Bps, rel=0.01), op
        assert fit.fitted_on and all(cid.startswith(f"nccl-{op}-") for cid in fit.fitted_on), op
        for ring_bytes, _ in fit.size_efficiency:  # at every calibration size: all-gather's mid-size dip too
            assert fit.rate_cap(ring_bytes) == pytest.approx(want.rate_cap(ring_bytes), rel=0.01), (op, ring_bytes)
    assert got.software_costs["cuda_ipc"]["open"].fixed_s == pytest.approx(40e-6, rel=1e-3)
    assert got.software_costs["cuda_ipc"]["open"].per_byte_s == pytest.approx(1e-14, rel=1e-3)
    assert not got.links  # the truth's rates are under the preset's links: nothing to raise
    assert got.provenance["held_out_cases"] > 0
    assert all(cid in {c.id for c in m.split(CALIBRATION)} for cid in got.provenance["calibration_cases"])
    # and the fitted profile predicts the held-out cases as well as the truth does
    df, _ = compare(m, got)
    assert summarise(df)[HELD_OUT]["modelled"]["p90"] < 0.01


def test_calibration_raises_links_that_one_copy_outruns() -> None:
    """Synthetic data from links wider than the preset's (one copy faster than the datasheet link): the fitted
    profile's `links` recovers those capacities, and re-simulating with it reproduces the measurements."""
    base = __import__("fabricsim.hwmodels.presets", fromlist=["get"]).get("h200-2", calibration=None).resources()
    pcie, nvlink = base["cpu0->gpu0"] * 1.03, base["gpu0->gpu1"] * 1.02
    truth = CalibrationProfile(
        id="truth", machine="synthetic", gpu_model="H200", gpus=2, links={"pcie": pcie, "nvlink": nvlink},
        paths={"h2d": PathParams(6e-6, None, (), "fifo"), "d2h": PathParams(6e-6, 0.99 * pcie, (), "fifo"),
               "d2d": PathParams(5e-6, 1.9e12, (), "fifo"), "p2p-nvlink": PathParams(6e-6, None, (), "fifo")},
        collectives={"broadcast": CollectiveParams(0.95 * nvlink, 15e-6)})
    doc = synthetic_document("h200-2", truth, "quick")
    for c in doc["cases"]:
        if c["op"] == "all_gather":
            c["split"] = HELD_OUT
    m = Measurements(doc, "synthetic.json")
    got = calibrate(m, split="file")
    assert got.links["pcie"] == pytest.approx(pcie, rel=1e-3)
    assert got.links["nvlink"] == pytest.approx(nvlink, rel=1e-3)
    assert got.paths["d2h"].bandwidth_Bps == pytest.approx(0.99 * pcie, rel=1e-3)
    assert any(n.startswith("links.pcie:") for n in got.provenance["notes"])
    df, _ = compare(m, got)
    big = df[(df["group"] == "copies") & (df["bytes"] >= 64 * MiB)]
    assert big["error"].abs().max() < 0.005
    # all-gather has no calibration sizes of its own here: it borrows broadcast's fit, and fitted_on says so
    assert got.collective("all_gather") == got.collective("broadcast")
    assert all(cid.startswith("nccl-broadcast-") for cid in got.collective("all_gather").fitted_on)
    assert got.collective("broadcast").bus_Bps == pytest.approx(0.95 * nvlink, rel=1e-3)


def test_current_split_replaces_the_file_split_and_says_which(fake_measured: Path) -> None:
    m = load_measurements(fake_measured)
    doc = json.loads((fake_measured / "measured.json").read_text())
    moved = [c for c in doc["cases"] if c["group"] == "nccl" and c["split"] == CALIBRATION]
    for c in moved:
        c["split"] = HELD_OUT  # as files measured before every collective calibrated at alternate sizes
    old = Measurements(doc, "old.json")
    now, changed = with_split(old, "current")
    assert sorted(changed) == sorted(c["id"] for c in moved) and changed
    assert [c.split for c in now.cases] == [c.split for c in m.cases]
    assert with_split(old, "file") == (old, [])
    assert all(c.split == HELD_OUT for c in old.cases if c.id in changed)  # the original is untouched
    got = calibrate(old)  # default: today's split
    assert got.provenance["split"] == "current" and sorted(got.provenance["split_changed_from_file"]) == sorted(
        changed)
    assert set(changed) <= set(got.provenance["calibration_cases"])
    assert not set(changed) & set(calibrate(old, split="file").provenance["calibration_cases"])
    with pytest.raises(MeasurementError, match="unknown split"):
        with_split(old, "random")


def test_calibration_never_reads_held_out_cases() -> None:
    truth = _truth("fifo", 80e9)
    doc = synthetic_document("h200-2", truth)
    for c in doc["cases"]:
        if c["split"] == HELD_OUT and c["group"] != "ipc":
            c["measured"]["makespan_s"] *= 7.0
            c["measured"]["finish_s"] = {k: v * 7.0 for k, v in c["measured"]["finish_s"].items()}
    got = calibrate(Measurements(doc, "poisoned.json"))
    assert got.paths["h2d"].bandwidth_Bps == pytest.approx(50e9, rel=0.01)


def test_fit_path_closed_form() -> None:
    lat, bw = 10e-6, 40e9
    pp = fit_path([(s, lat + s / bw) for s in (4096, 1 << 20, 1 << 30)])
    assert pp.latency_s == pytest.approx(lat, rel=1e-6) and pp.bandwidth_Bps == pytest.approx(bw, rel=1e-6)
    assert all(e == pytest.approx(1.0) for _, e in pp.size_efficiency)


# ---- report -------------------------------------------------------------------------------------------------

def test_profile_for_another_machine_is_refused(tmp_path: Path, fake_measured: Path) -> None:
    m = load_measurements(fake_measured)
    other = replace(calibrate(m), gpu_model="H100", gpus=1, machine="nvidia-h100-x1")
    other.save(tmp_path / "h100.json")
    with pytest.raises(CalibrationError, match="fitted on 1x H100"):
        cli_report = __import__("fabricsim.validate.fit.report", fromlist=["report_file"]).report_file
        cli_report(fake_measured, profile=tmp_path / "h100.json", out=tmp_path / "r", store=None)
    assert not (tmp_path / "r").exists()


def test_profile_of_unknown_version_is_refused(tmp_path: Path, fake_measured: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    m = load_measurements(fake_measured)
    d = calibrate(m).to_dict()
    d["format_version"] = 7
    (tmp_path / "p.json").write_text(json.dumps(d))
    rc = cli.main(["report", str(fake_measured), "--profile", str(tmp_path / "p.json"), "--no-store",
                   "--out", str(tmp_path / "r")])
    assert rc == 2 and "unknown profile format_version 7" in capsys.readouterr().err


def test_calibrate_and_report_end_to_end(tmp_path: Path, fake_measured: Path) -> None:
    assert cli.main(["calibrate", str(fake_measured), str(tmp_path / "p.json"), "--id", "fake-1"]) == 0
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["id"] == "fake-1" and prof["provenance"]["calibration_cases"]
    assert prof["provenance"]["measurements_sha256"]
    assert cli.main(["report", str(fake_measured), "--profile", str(tmp_path / "p.json"),
                     "--out", str(tmp_path / "r"), "--store", str(tmp_path / "store")]) == 0
    for f in ("report.md", "errors.csv", "finish_errors.csv", "pred_vs_meas.png", "summary.json"):
        assert (tmp_path / "r" / f).exists(), f
    md = (tmp_path / "r" / "report.md").read_text()
    assert "held-out" in md and "Per pattern" in md
    from fabricsim.harness.store import ResultsStore

    rows = ResultsStore(tmp_path / "store").load("validate-h200-2")
    assert set(rows["source"]) == {"hw", "sim"}
    hw = rows[(rows["source"] == "hw") & (rows["metric"] == "makespan_s")]
    sim = rows[(rows["source"] == "sim") & (rows["metric"] == "makespan_s")]
    assert len(hw) == len(sim) > 0 and set(sim["calibration_id"]) == {"fake-1"}


def test_report_republishes_atomically(tmp_path: Path, fake_measured: Path) -> None:
    m = load_measurements(fake_measured)
    p = calibrate(m)
    report(m, p, tmp_path / "r", store=None)
    first = (tmp_path / "r" / "summary.json").read_text()
    report(m, p, tmp_path / "r", store=None)
    assert (tmp_path / "r" / "summary.json").read_text() == first
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r"]


def test_measuring_code_runs_without_the_simulator(tmp_path: Path) -> None:
    """The GPU image has torch but not simpy: `python -m fabricsim.validate validate` never imports the simulator."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['simpy'] = None\n"
        "import fabricsim.validate.gpu.measure_torch, fabricsim.validate.cli\n"
        "from fabricsim.validate.gpu.measure import run_validate\n"
        "from fabricsim.validate.gpu.device_fake import FakeDevice\n"
        f"run_validate({str(tmp_path / 'v')!r}, 'quick', FakeDevice(2), verbose=False)\n"
        "sim = ('fabricsim.simcore', 'fabricsim.workloads', 'fabricsim.harness')\n"
        "assert not any(m.startswith(sim) for m in sys.modules), 'simulator imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "v" / "measured.json").exists()


# Rates stay under the preset's links (PCIe 54.8 GB/s, NVLink 391 GB/s): above them calibrate raises the links
# instead (test_calibration_raises_links_that_one_copy_outruns). No shrinking: each example simulates a whole
# case list.
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(h2d_GBps=st.floats(20, 50), lat_us=st.floats(2, 15), p2p_GBps=st.floats(150, 380),
       disc=st.tuples(*[st.sampled_from(["fair", "fifo"])] * 4), host_share=st.floats(0.55, 1.2))
def test_calibration_round_trip_property(h2d_GBps: float, lat_us: float, p2p_GBps: float,
                                         disc: tuple[str, ...], host_share: float) -> None:
    """Any profile of this shape, simulated and re-fitted, comes back: rates, latencies, disciplines, caps."""
    classes = ("h2d", "d2h", "d2d", "p2p-nvlink")
    rates = {"h2d": h2d_GBps * 1e9, "d2h": 0.95 * h2d_GBps * 1e9, "d2d": 1.8e12, "p2p-nvlink": p2p_GBps * 1e9}
    host_cap = host_share * 2 * rates["h2d"]
    caps = (CapSpec("host-h2d", host_cap, ("h2d",)),) if host_share < 0.95 else ()
    truth = CalibrationProfile(
        id="truth", machine="synthetic", gpu_model="H200", gpus=2,
        paths={c: PathParams(lat_us * 1e-6 * (1 + 0.1 * i), rates[c], (), d)
               for i, (c, d) in enumerate(zip(classes, disc, strict=True))},
        caps=caps)
    got = calibrate(Measurements(synthetic_document("h200-2", truth, "quick"), "synthetic.json"))
    assert not got.links  # every rate is under the preset's links: per-flow caps, not wider links
    for c in classes:
        assert got.paths[c].discipline == truth.paths[c].discipline, c
        assert got.paths[c].bandwidth_Bps == pytest.approx(rates[c], rel=0.01), c
        assert got.paths[c].latency_s == pytest.approx(truth.paths[c].latency_s, rel=0.03), c
    fitted = {c.name: c.Bps for c in got.caps}
    if caps:
        assert fitted["host-h2d"] == pytest.approx(host_cap, rel=0.01)
    else:
        assert "host-h2d" not in fitted
