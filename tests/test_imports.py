"""What users already measure: nccl-tests, nvbandwidth and the concurrent-copies JSON, read as measurements
(samples in tests/data/external, sources in its SOURCES.md), and the 8-GPU profile fitted from the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabricsim.cli import main
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import bundled_profile_path, load_profile
from fabricsim.hwmodels.nvsmi import topology_from_topo_m
from fabricsim.simcore import Simulation
from fabricsim.validate.cases import CALIBRATION, HELD_OUT
from fabricsim.validate.errors import MeasurementError
from fabricsim.validate.fit.imports import from_concurrent_copies, load_any

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "tests" / "data" / "external"
PROBE = ROOT / "validate" / "data" / "h200x8-probe" / "calibration.json"
MiB = 1 << 20


def test_nccl_tests_all_reduce() -> None:
    m = load_any(EXT / "all_reduce_perf_a100x8.txt")
    assert (m.machine["gpu_model"], m.machine["gpus"], m.preset) == ("A100", 8, None)
    got = {c.bytes: m.measured[c.id]["makespan_s"] for c in m.cases}
    assert got == {1 << 20: pytest.approx(74.78e-6), 16 << 20: pytest.approx(226.0e-6),
                   256 << 20: pytest.approx(2112.2e-6), 4 << 30: pytest.approx(32070e-6),
                   8 << 30: pytest.approx(63896e-6)}  # out-of-place times; 512 KiB and 0 B rows left out
    assert {c.op for c in m.cases} == {"all_reduce"}
    assert [c.split for c in sorted(m.cases, key=lambda c: c.bytes)] == [CALIBRATION, HELD_OUT, CALIBRATION,
                                                                          HELD_OUT, CALIBRATION]


def test_nccl_tests_on_a_machine_without_preset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", str(EXT / "all_reduce_perf_a100x8.txt"), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8x A100" in err[0]


def test_nvbandwidth_peer_matrix_calibrates_the_nvlink_rate(tmp_path: Path) -> None:
    m = load_any(EXT / "nvbandwidth_h100x8_d2d_read.txt")
    assert (m.machine["gpu_model"], m.machine["gpus"], m.preset) == ("H100", 8, "hgx-h100-8")
    assert len(m.cases) == 56  # 8 x 7 pairs, the N/A diagonal skipped
    assert main(["calibrate", str(EXT / "nvbandwidth_h100x8_d2d_read.txt"), str(tmp_path / "p.json")]) == 0
    p = load_profile(tmp_path / "p.json")
    assert p.paths["p2p-nvlink"].bandwidth_Bps == pytest.approx(370.90e9)  # the median of the matrix
    assert "nvbandwidth" in p.provenance["imported_from"]


def _one_gpu_gh200(tmp_path: Path) -> Path:
    """The GH200 sample with its d2h matrix cut to the one device the file lists."""
    text = (EXT / "nvbandwidth_gh200_v06.txt").read_text()
    text = text.replace("           0         1\n 0    295.15    312.11\n", "           0\n 0    295.15\n")
    f = tmp_path / "gh200.txt"
    f.write_text(text)
    return f


def test_nvbandwidth_lists_what_it_does_not_import(tmp_path: Path) -> None:
    m = load_any(_one_gpu_gh200(tmp_path))
    assert [c.xfers[0].dst for c in m.cases] == ["host"]
    assert {s["id"] for s in m.doc["skipped"]} == {"host_to_device_bidirectional_memcpy_ce", "host_device_latency_sm"}


def test_nvbandwidth_columns_must_be_listed_devices(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The upstream GH200 sample lists one device but its d2h matrix has a column for GPU 1: refused, naming
    the file, the testcase and the column, not by the simulator later with 'unknown endpoint gpu1'."""
    src = EXT / "nvbandwidth_gh200_v06.txt"
    with pytest.raises(MeasurementError, match=r"nvbandwidth_gh200_v06.txt: device_to_host_memcpy_ce has a column "
                                               r"for GPU 1, but the file lists 1 device"):
        load_any(src)
    assert main(["calibrate", str(src), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nvbandwidth_gh200_v06.txt" in err[0] and "GPU 1" in err[0]
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(("name", "model"), [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100-PCIE"), ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200"), ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA GH200 480GB", "NVIDIA GH200 480GB"),
    ("NVIDIA GB200", "NVIDIA GB200"), ("NVIDIA GH100", "NVIDIA GH100")])
def test_gpu_models_match_whole_tokens(name: str, model: str) -> None:
    from fabricsim.validate.gpu.measure import gpu_model_of

    assert gpu_model_of(name) == model


def test_a_gpu_model_without_preset_is_refused_naming_the_file(capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    """GH200 is no H200 (its name only contains one): calibrate says no preset matches, in one line that
    names the file, instead of fitting an H200 preset or failing inside the simulator."""
    f = _one_gpu_gh200(tmp_path)
    assert load_any(f).machine["gpu_model"] == "NVIDIA GH200 480GB" and load_any(f).preset is None
    assert main(["calibrate", str(f), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gh200.txt" in err[0] and "no preset" in err[0] and "GH200" in err[0]
    assert not (tmp_path / "p.json").exists()


def test_unknown_text_is_a_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("hello\n")
    with pytest.raises(MeasurementError, match="x.txt: not a format calibrate reads"):
        load_any(f)


def test_concurrent_copies_json_split_and_hop() -> None:
    doc = json.loads(PROBE.read_text())
    m = from_concurrent_copies(doc, str(PROBE))
    assert (m.machine["gpu_model"], m.machine["gpus"], m.preset) == ("H200", 8, "hgx-h200-8")
    assert len(m.cases) == 17
    held = sorted(c.id for c in m.cases if c.split == HELD_OUT)
    assert held == ["fan-out-0-to-all", "h2d-0-16777216B", "h2d-0-65536B", "p2p-0-to-1-16777216B",
                    "p2p-0-to-1-65536B"]
    # a lone copy timed only on the common clock loses the median gate hop of its class (finish - own)
    c = doc["cases"]
    hops = sorted(c[k]["finish_s"][0] - c[k]["own_s"][0] for k in c if k.startswith("p2p") and "own_s" in c[k])
    assert m.measured["p2p-0-to-1-16777216B"]["makespan_s"] == pytest.approx(c["p2p 0->1 16777216B"]["finish_s"][0]
                                                                            - hops[1])


def test_h200x8_profile_is_the_presets_and_says_what_it_was_fitted_on() -> None:
    p = load_profile(bundled_profile_path("h200x8"))
    assert presets.get("hgx-h200-8").calibration_id == p.id
    assert "17 cases" in p.provenance["imported_from"] and p.provenance["base_profile"].startswith("h200x2")
    assert {c.name for c in p.caps} >= {"host-h2d", "host-d2h", "host-duplex", "gpu7.pcie-duplex"}


def test_nvswitch_all_to_all_from_per_port_limits() -> None:
    # Every GPU sends S to each of the 7 others and receives 7 x S: each port carries 7 flows each way, so
    # with fair sharing all finish at latency + 7 x S / port rate (nothing fitted: the ports' limits).
    topo = presets.get("hgx-h200-8", calibration=None)
    sim = Simulation(topo, record_load=False)
    gpus = [f"gpu{i}" for i in range(8)]
    S = 64 * MiB
    for a in gpus:
        for b in gpus:
            if a != b:
                sim.transfer(f"{a}-{b}", a, b, S)
    res = sim.run()
    port = topo.graph.edges["gpu0", "nvswitch"]["bw"][("gpu0", "nvswitch")]
    lat = topo.path("gpu0", "gpu1").latency_s
    assert res.makespan_s == pytest.approx(lat + 7 * S / port, rel=1e-9)


def test_fan_out_is_bound_by_the_source_port() -> None:
    topo = presets.get("hgx-h200-8")
    sim = Simulation(topo, record_load=False)
    for g in range(1, 8):
        sim.transfer(f"t{g}", "gpu0", f"gpu{g}", 512 * MiB)
    port = topo.graph.edges["gpu0", "nvswitch"]["bw"][("gpu0", "nvswitch")]
    assert sim.run().makespan_s == pytest.approx(7 * 512 * MiB / port, rel=0.01)  # + 7 latencies (FIFO engine)


def test_topo_import_without_pcie_switches_has_host_ceilings() -> None:
    text = json.loads(PROBE.read_text())["nvidia_smi_topo_m"]
    topo = topology_from_topo_m(text, gpu="H200")
    assert not [n for n, k in topo.graph.nodes(data="kind") if k == "pcie-switch"]
    assert all(set(topo.graph.neighbors(g)) == {"cpu0", "nvswitch"} for g in topo.gpus())
    p = load_profile(bundled_profile_path("h200x8"))
    want = {c.name: c.Bps for c in p.caps if not c.endpoints}
    assert {n: topo.caps[n].Bps for n in want} == want
    # a profile applied later replaces the imported ceilings instead of clashing with them
    assert topo.with_calibration(p).caps["host-h2d"].Bps == want["host-h2d"]
