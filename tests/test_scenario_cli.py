"""Scenario files and the CLI: the DESIGN.md JSON contract, and bad input as one line + exit status 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fabricsim.cli import main
from fabricsim.simcore.scenario import load_scenario

GOOD = """\
topology: hgx-h200-8
transfers:
  - {id: t1, src: host, dst: gpu0, bytes: 1GiB}
  - {id: t2, src: gpu0, dst: gpu1, bytes: 256MiB, start: 0.001, after: [t1]}
"""


pytestmark = pytest.mark.usefixtures("both_loops")  # every case on the compiled loop and on simpy


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_simulate_json_contract(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert main(["simulate", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"makespan_s", "transfers", "makespan_interval_s"}  # the interval: a documented addition
    iv = out["makespan_interval_s"]
    assert iv["lo"] <= out["makespan_s"] <= iv["hi"] and iv["level"] == 0.9
    t1, t2 = out["transfers"]
    assert set(t1) == {"id", "src", "dst", "bytes", "start_s", "finish_s"}
    assert t1["bytes"] == 2**30 and t2["start_s"] == pytest.approx(t1["finish_s"])
    assert out["makespan_s"] == pytest.approx(t2["finish_s"])
    # no interval asked for: no key at all (DESIGN.md's object, as README documents it), never an empty one that
    # could not be told from an interval without spread
    assert main(["simulate", str(p), "--json", "--samples", "0"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"makespan_s", "transfers"}


def test_json_scenarios_and_listing_order_do_not_matter(tmp_path):
    a = write(tmp_path, json.dumps({"topology": "h200-2", "transfers": [
        {"id": "b", "src": "gpu0", "dst": "gpu1", "bytes": "64MiB", "after": ["a"]},
        {"id": "a", "src": "host", "dst": "gpu0", "bytes": 4096}]}), "s.json")
    res = load_scenario(a).run()
    assert res["b"].start_s == pytest.approx(res["a"].finish_s)


@pytest.mark.parametrize("preset", ["h100-1", "h200-2", "hgx-h100-8", "hgx-h200-8", "pcie-4gpu"])
def test_simulate_answers_for_every_preset(tmp_path, capsys, preset):
    p = write(tmp_path, f"topology: {preset}\ntransfers:\n  - {{id: a, src: host, dst: gpu0, bytes: 1GiB}}\n")
    assert main(["simulate", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["makespan_s"] > 0


def test_trace_flag_writes_perfetto(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    trace = tmp_path / "t.json"
    assert main(["simulate", str(p), "--perfetto", str(trace)]) == 0
    assert "traceEvents" in json.loads(trace.read_text())
    assert "makespan" in capsys.readouterr().out


BAD = [
    ("topology: dgx-9000\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1}]\n",
     "unknown topology preset 'dgx-9000'"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu7, bytes: 1}]\n",
     "transfers[0]: unknown endpoint 'gpu7'"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 0}]\n",
     "transfers[0].bytes: size must be > 0"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: -5MiB}]\n", "transfers[0].bytes"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 3 parsecs}]\n", "unknown unit 'parsecs'"),
    ("topology: h100-1\ntransfers:\n - {id: a, src: host, dst: gpu0, bytes: 1, after: [b]}\n"
     " - {id: b, src: host, dst: gpu0, bytes: 1, after: [a]}\n", "cycle in 'after': a -> b -> a"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1, after: [zz]}]\n", "unknown id 'zz'"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1}\n", "malformed YAML/JSON"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1, colour: red}]\n",
     "unknown key 'colour'"),
    ("topology: box.yaml\ntransfers: [{id: a, src: host0, dst: gpu1, bytes: 1}]\n", "no route from"),
    ("topology: neg.yaml\ntransfers: [{id: a, src: host0, dst: gpu0, bytes: 1}]\n", "must be > 0, got -3"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1, rate_cap_GBps: .inf}]\n",
     "rate_cap_GBps: expected a finite number > 0"),
    ("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1, tag: [1]}]\n",
     "tag: expected a short label"),
    ("topology: cluster-2x4\ncollectives: [{id: c, op: all_reduce, gpus: node1-0.gpu0-3, bytes: 1MiB}]\n",
     "collectives[0].gpus: range 'node1-0' in endpoint list item 'node1-0.gpu0-3' runs backwards"),
    ("topology: cluster-2x4\ncollectives: [{id: c, op: all_reduce, gpus: node0.gpu0, bytes: 1MiB}]\n",
     "collectives[0].gpus: expected a list of two or more GPU names"),
    ("topology: cluster-2x4\ncollectives: [{id: c, op: all_reduce, gpus: [node0-1.gpu0-3, node0.gpu1], "
     "bytes: 1MiB}]\n", "collectives[0].gpus: a GPU appears twice in the ring"),
    ("topology: h100-1\ncollectives: [{id: c, op: broadcast, gpus: [gpu0, host], bytes: 1MiB}]\n",
     "collectives[0]: collective 'c': 'host' is a host, not a GPU"),  # ran a GPU-to-host copy as a ring hop
]

# gpu1 hangs off gpu0 by NVLink only: connected, but host memory cannot reach it without transiting gpu0.
ISLAND = """\
components: {host0: {kind: host}, cpu0: {kind: cpu}, gpu0: {kind: gpu}, gpu1: {kind: gpu}}
links:
  - {between: [host0, cpu0], kind: dram, GBps: 200}
  - {between: [gpu0, cpu0], kind: pcie}
  - {between: [gpu1, gpu0], kind: nvlink}
"""
NEG = """\
components: {host0: {kind: host}, cpu0: {kind: cpu}, gpu0: {kind: gpu}}
links:
  - {between: [host0, cpu0], kind: dram, GBps: 200}
  - {between: [gpu0, cpu0], kind: pcie, GBps: -3}
"""


@pytest.mark.parametrize("text,message", BAD)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, text, message):
    write(tmp_path, ISLAND, "box.yaml")
    write(tmp_path, NEG, "neg.yaml")
    p = write(tmp_path, text)
    assert main(["simulate", str(p), "--json", "--perfetto", str(tmp_path / "t.json")]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.strip()
    assert "\n" not in err and message in err and str(p) in err, err
    assert not (tmp_path / "t.json").exists()


def test_disconnected_topology_is_rejected_when_loaded(tmp_path, capsys):
    p = write(tmp_path, ISLAND.replace("  - {between: [gpu1, gpu0], kind: nvlink}\n", ""), "box.yaml")
    assert main(["topo", "show", str(p)]) == 2
    assert "not connected" in capsys.readouterr().err


def test_missing_file_and_real_process_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fabricsim.cli", "simulate", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot read scenario" in proc.stderr and "Traceback" not in proc.stderr


def test_topo_show_and_import(tmp_path, capsys):
    assert main(["topo", "show", "hgx-h200-8"]) == 0
    assert "nvswitch" in capsys.readouterr().out
    from test_topology import HGX_TOPO_M

    txt = write(tmp_path, HGX_TOPO_M, "topo.txt")
    out = tmp_path / "box.yaml"
    assert main(["topo", "import", str(txt), "--gpu", "H200", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["topo", "show", str(out)]) == 0
    assert "H200" in capsys.readouterr().out


def test_simulate_on_a_cluster_preset(tmp_path, capsys):
    p = write(tmp_path, "topology: cluster-2x8-rail\ntransfers:\n"
                        "  - {id: a, src: node0.gpu0, dst: node1.gpu0, bytes: 1GiB}\n"
                        "  - {id: b, src: node1.host, dst: node1.gpu3, bytes: 1GiB}\n")
    assert main(["simulate", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a = out["transfers"][0]
    # One 400 Gb/s NIC (92% efficient) is the bottleneck of a cross-node GPU-to-GPU copy.
    assert a["finish_s"] == pytest.approx(2**30 / (400e9 / 8 * 0.92), rel=1e-3)


def test_collective_rings_take_node_ranges(tmp_path):
    """`gpus: node0-1.gpu0-3` is the ring node0.gpu0, ..., node0.gpu3, node1.gpu0, ... written out."""
    ring = [f"node{n}.gpu{g}" for n in range(2) for g in range(4)]
    explicit = write(tmp_path, "topology: cluster-2x4\ncollectives:\n"
                               f"  - {{id: c, op: all_reduce, gpus: [{', '.join(ring)}], bytes: 64MiB}}\n", "a.yaml")
    ranged = write(tmp_path, "topology: cluster-2x4\ncollectives:\n"
                             "  - {id: c, op: all_reduce, gpus: node0-1.gpu0-3, bytes: 64MiB}\n", "b.yaml")
    a, b = load_scenario(explicit).run(), load_scenario(ranged).run()
    assert [(r.id, r.finish_s) for r in a.records] == [(r.id, r.finish_s) for r in b.records]
    assert len(a.records) > 8


def test_json_numbers_without_decimal_point_are_numbers(tmp_path, capsys):
    # Python's json writes 1e-06 and 2e1 without a decimal point; a YAML 1.1 reader would see strings.
    p = write(tmp_path, '{"topology": "h100-1", "transfers": [{"id": "a", "src": "host", "dst": "gpu0", '
                        '"bytes": 1e9, "start": 1e-06, "rate_cap_GBps": 2e1}]}', "s.json")
    assert main(["simulate", str(p), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["transfers"][0]
    assert t["start_s"] == 1e-6 and t["finish_s"] > 1e9 / 20e9


def test_unwritable_output_path_is_one_line_exit_2(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    blocker = write(tmp_path, "x", "afile")
    assert main(["simulate", str(p), "--perfetto", str(blocker / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fabricsim: error:") and "afile" in err
    assert err == f"fabricsim: error: {blocker / 't.json'}: {blocker} is a file, not a folder"
    assert main(["simulate", str(p), "--perfetto", str(tmp_path)]) == 2  # a folder where a file name belongs
    err = capsys.readouterr().err.strip()
    assert err == f"fabricsim: error: {tmp_path}: is a directory: give a file name"
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]  # no temporary file named or left


def test_json_lists_tasks_when_the_scenario_has_them(tmp_path, capsys):
    p = write(tmp_path, "topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1GiB}]\n"
                        "tasks: [{id: k, gpu: gpu0, flops: 1e12, bytes: 1GiB, after: [a]}]\n")
    assert main(["simulate", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (k,) = out["tasks"]
    assert k["start_s"] == pytest.approx(out["transfers"][0]["finish_s"])
    assert out["makespan_s"] == pytest.approx(k["finish_s"])


def test_json_lists_collective_calls_in_file_order_from_first_ring_copy_to_last_rank(tmp_path, capsys):
    """A call's entry spans its own ring transfers (`ar.rs0`, ...), not a transfer the user named `ar.x`."""
    p = write(tmp_path, "topology: hgx-h200-8\n"
                        "transfers: [{id: t1, src: host, dst: gpu0, bytes: 1GiB}, {id: ar.x, src: gpu0, dst: gpu1, "
                        "bytes: 1MiB}]\n"
                        "collectives: [{id: ar, op: all_reduce, gpus: gpu0-3, bytes: 256MiB, after: [t1]},\n"
                        "  {id: bc, op: broadcast, gpus: [gpu4, gpu5, gpu6], bytes: 64MiB, start: 0.001}]\n")
    assert main(["simulate", str(p), "--json", "--samples", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    ar, bc = out["collectives"]
    assert (ar["id"], ar["op"], ar["gpus"], ar["bytes"]) == ("ar", "all_reduce", ["gpu0", "gpu1", "gpu2", "gpu3"],
                                                             256 << 20)
    rings = {c["id"]: [t for t in out["transfers"] if t["id"].startswith(c["id"] + ".") and t["id"] != "ar.x"]
             for c in (ar, bc)}
    t1 = next(t for t in out["transfers"] if t["id"] == "t1")
    for call in (ar, bc):
        assert len(rings[call["id"]]) >= 2
        assert call["start_s"] == min(t["start_s"] for t in rings[call["id"]])
        assert call["finish_s"] == max(t["finish_s"] for t in rings[call["id"]])
    assert ar["start_s"] == t1["finish_s"] and bc["start_s"] == 0.001
    assert main(["simulate", str(p), "--samples", "0"]) == 0  # the table: one row per call, spanning its ring
    table = capsys.readouterr().out
    assert "all_reduce on gpu0-3     256 MiB collective" in table and "broadcast on gpu4-6" in table
    assert f"{ar['start_s'] * 1e3:>9.4f}ms {ar['finish_s'] * 1e3:>9.4f}ms" in table
    write(tmp_path, "topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 1GiB}]\n", "plain.yaml")
    assert main(["simulate", str(tmp_path / "plain.yaml"), "--json", "--samples", "0"]) == 0
    assert "collectives" not in json.loads(capsys.readouterr().out)


def test_topo_show_yaml_is_the_uncalibrated_structure(tmp_path, capsys):
    assert main(["topo", "show", "h200-2", "--yaml"]) == 0
    f = write(tmp_path, capsys.readouterr().out, "box.yaml")
    from fabricsim.hwmodels import presets
    from fabricsim.hwmodels.topofile import load_topology_file

    loaded, ref = load_topology_file(f), presets.get("h200-2", calibration=None)
    assert loaded.resources() == pytest.approx(ref.resources())


@pytest.mark.parametrize("json_mode", [False, True])
def test_simulate_says_on_stderr_when_its_profile_was_fitted_on_another_gpu_count(tmp_path, capsys, json_mode):
    """Notes go to stderr in every mode, stdout holds the answer (simulate did not show this note at all)."""
    from fabricsim.hwmodels.calibration import bundled_profile_path

    p = write(tmp_path, "topology: h200-1\ntransfers:\n  - {id: a, src: host, dst: gpu0, bytes: 1GiB}\n")
    assert main(["simulate", str(p), "--calibration", str(bundled_profile_path("h200x2")),
                 *(["--json"] if json_mode else [])]) == 0
    cap = capsys.readouterr()
    assert "fitted on 2x H200" in cap.err and "fitted on" not in cap.out
    if json_mode:
        json.loads(cap.out)


def test_the_makespan_is_one_line_with_its_interval_in_a_readable_unit(tmp_path, capsys):
    """One makespan line (it was printed twice, the second with the interval), in ms below a second and in s from
    one on (a trial read 23902.4339 ms), with the interval beside the value it bounds."""
    short = write(tmp_path, GOOD)
    assert main(["simulate", str(short), "--samples", "4"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("makespan")]
    assert len(lines) == 1 and re.fullmatch(r"makespan [\d.]+ ms \[[\d.]+, [\d.]+\] \(90%.*\)", lines[0]), lines
    long = tmp_path / "long.yaml"
    long.write_text("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, bytes: 200GiB}]\n")
    assert main(["simulate", str(long), "--samples", "0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("makespan")]
    assert len(lines) == 1 and re.fullmatch(r"makespan \d+\.\d{4} s", lines[0]), lines


def test_an_unknown_key_in_an_item_lists_the_allowed_ones(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("topology: h100-1\ntransfers: [{id: a, src: host, dst: gpu0, byte: 1GiB}]\n")
    assert main(["simulate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "transfers[0]: unknown key 'byte' (allowed: after, bytes, dst," in err and err.count("\n") == 1


def test_simulate_interval_reruns_only_the_perturbed_topologies(tmp_path, capsys, monkeypatch):
    """`simulate --samples N` builds N perturbed runs besides the answer (the interval once ran the point again)."""
    from fabricsim.simcore.scenario import Scenario

    builds = []
    real = Scenario.build
    monkeypatch.setattr(Scenario, "build", lambda self, *a, **kw: builds.append(kw.get("topology")) or
                        real(self, *a, **kw))
    assert main(["simulate", str(write(tmp_path, GOOD)), "--samples", "3", "--json"]) == 0
    iv = json.loads(capsys.readouterr().out)["makespan_interval_s"]
    assert len(builds) == 4 and iv["lo"] <= iv["value"] <= iv["hi"]


def test_none_asks_for_the_datasheet_figures_everywhere(tmp_path, capsys):
    """`--calibration none` worked in serve only: simulate read it as a file name ('none: cannot read calibration
    profile'), and a scenario had no way to ask for no profile (`null` means the bundled one). 'none' now means the
    datasheet figures in a scenario, on the command line and in `presets.load`, and a calibrated hgx-h200-8 answers
    differently from it."""
    from fabricsim.hwmodels import presets

    assert presets.load("hgx-h200-8", "none").calibration_id is None
    assert presets.load("hgx-h200-8").calibration_id  # the default: its bundled profile
    answers = {}
    for cal, argv in (("scenario-none", []), ("cli-none", ["--calibration", "none"]), ("default", [])):
        text = GOOD.replace("transfers:", "calibration: none\ntransfers:") if cal == "scenario-none" else GOOD
        assert main(["simulate", str(write(tmp_path, text)), "--json", "--samples", "0", *argv]) == 0
        answers[cal] = json.loads(capsys.readouterr().out)["makespan_s"]
    assert answers["scenario-none"] == answers["cli-none"] != answers["default"]


def test_the_rate_while_moving_leaves_out_the_fixed_cost(tmp_path, capsys):
    """The text table's GB/s* ('while moving') ran from the end of the engine wait, so a 1 GB copy behind a 0.25 s
    fixed cost showed 3.7 GB/s; it runs from the first byte: a lone copy's bytes over (finish - start - latency -
    fixed cost), its path's rate, with or without the fixed cost."""
    from fabricsim.hwmodels import presets
    from fabricsim.simcore import Simulation

    rates = []
    for fixed in (0.0, 0.25):
        text = ("topology: h100-1\ncalibration: none\ntransfers:\n"
                f"  - {{id: t1, src: gpu0, dst: host, bytes: 1GB, start: 0.5, fixed_cost_s: {fixed}}}\n")
        assert main(["simulate", str(write(tmp_path, text)), "--samples", "0"]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("t1 "))
        rates.append(float(row.split()[-1]))
    sim = Simulation(presets.get("h100-1", calibration=None))
    sim.transfer("t", "gpu0", "host", 1e9)
    r = sim.run()["t"]
    assert rates == [round(1e9 / (r.finish_s - r.latency_s) / 1e9, 1)] * 2


def test_a_scenario_names_a_bundled_profile_from_any_folder(tmp_path, capsys, monkeypatch):
    """`calibration: h200x2` in a scenario was read as a file beside the scenario, so it worked only when the
    scenario sat in the working folder; a file of that name beside it still wins."""
    sub = tmp_path / "rt"
    sub.mkdir()
    text = GOOD.replace("hgx-h200-8", "h200-2").replace("transfers:", "calibration: h200x2\ntransfers:")
    p = write(sub, text)
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "rt/s.yaml", "--samples", "0", "--json"]) == 0
    assert load_scenario(p).load_topology().calibration_id == presets_profile_id("h200x2")
    (sub / "h200x2").write_text("not a profile")
    assert main(["simulate", "rt/s.yaml", "--samples", "0"]) == 2
    assert "rt/h200x2" in capsys.readouterr().err


def presets_profile_id(name: str) -> str:
    from fabricsim.hwmodels.calibration import load_profile

    return load_profile(name).id


def test_a_folder_named_like_a_bundled_profile_does_not_hide_it(tmp_path, monkeypatch):
    """validate/data holds folders named h100x1, h200x1, h200x2 (measurements): from there the bundled profile of
    that name was refused as 'Is a directory'; only a file of that name takes its place."""
    from fabricsim.hwmodels import presets
    from fabricsim.hwmodels.calibration import load_profile

    (tmp_path / "h200x2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert presets.get("h200-2", calibration="h200x2").calibration_id == load_profile("h200x2").id


def test_a_collective_row_shows_its_ring_in_order_and_hides_its_pipeline_fills(tmp_path, capsys):
    """A ring gpu7, gpu3, gpu5 printed as 'gpu3, gpu5, gpu7' (a trial): the order is the ring's, so the row keeps it
    (a range only where it spells the same order); a broadcast's pipeline fills (delays where copy engines queue)
    belong to its one row, not rows of their own."""
    p = write(tmp_path, "topology: hgx-h200-8\ncollectives:\n"
                        "  - {id: bc, op: broadcast, gpus: [gpu7, gpu3, gpu5, gpu0], bytes: 1MiB}\n"
                        "  - {id: ar, op: all_reduce, gpus: gpu0-7, bytes: 1MiB, after: [bc]}\n")
    assert main(["simulate", str(p), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "broadcast on gpu7, gpu3, gpu5, gpu0" in out and "all_reduce on gpu0-7" in out
    assert ".fill" not in out
