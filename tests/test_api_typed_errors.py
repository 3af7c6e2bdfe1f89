"""A new user's first calls to the Python API: every mistake raises a typed error (a `FabricsimError`) in one line
that names the problem and where, as the CLI and scenario files do, instead of running something else silently
('dma' as the copy engine, `after="ab"` as 'a' and 'b') or a TypeError / AttributeError / KeyError from deep
inside; and a bundled profile's name works wherever a calibration is named, not only in `calibrate --base`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fabricsim import FabricsimError
from fabricsim.cli import main
from fabricsim.errors import CalibrationError, TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import bundled_names, load_profile
from fabricsim.hwmodels.intervals import corner_interval, predict_interval
from fabricsim.simcore import ScenarioError, Simulation
from fabricsim.simcore.records import UnknownIdError
from fabricsim.workloads import models
from fabricsim.workloads.errors import WorkloadError
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync

TOPO = presets.get("h200-2")


def one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    """The error is typed, one line, and says each of `parts`."""
    text = str(err.value)
    assert isinstance(err.value, FabricsimError) and "\n" not in text, text
    for p in parts:
        assert p in text, (p, text)


# ------------------------------------------------------------------------------------------------ mechanism
@pytest.mark.parametrize("mechanism", ["dma", "SM", "", None])
def test_an_unknown_mechanism_is_refused_as_a_scenario_file_refuses_it(mechanism: Any) -> None:
    for bulk in (False, True):
        sim = Simulation(TOPO)
        with pytest.raises(ScenarioError) as err:
            if bulk:
                sim.transfers([("a", "host", "gpu1", 1 << 30), ("b", "host", "gpu1", 1 << 30)], mechanism=mechanism)
            else:
                sim.transfer("a", "host", "gpu1", 1 << 30, mechanism=mechanism)
        one_line(err, "transfer 'a': mechanism:", f"{mechanism!r} is not one of ce, pageable, sm")
        assert not sim._deferred


# ------------------------------------------------------------------------------------------------ after
def test_a_lone_id_is_a_list_of_one_as_in_a_scenario_file() -> None:
    """`after="ab"` waited for 'a' and 'b' (one character each); a scenario file's `after: ab` waits for 'ab'."""
    sim = Simulation(TOPO)
    sim.transfer("a", "host", "gpu0", 1 << 20)
    sim.transfer("b", "host", "gpu0", 1 << 20)
    sim.transfer("ab", "host", "gpu0", 1 << 30)
    c = sim.transfer("c", "host", "gpu1", 1 << 20, after="ab")
    sim.run()
    assert c.value.start_s == sim.done("ab").value.finish_s
    with pytest.raises(ScenarioError) as err:
        Simulation(TOPO).transfer("c", "host", "gpu1", 1, after="ab")
    one_line(err, "'c' waits for unknown id 'ab'")


def test_after_names_a_self_dependency_and_an_id_not_declared_yet() -> None:
    sim = Simulation(TOPO)
    with pytest.raises(ScenarioError) as err:
        sim.transfer("self", "host", "gpu1", 1 << 20, after=["self"])
    one_line(err, "'self' waits for itself")
    with pytest.raises(ScenarioError) as err:
        sim.delay("d", 1e-3, after=["later"])
    one_line(err, "'d' waits for unknown id 'later'", "not declared (yet)")
    with pytest.raises(ScenarioError) as err:
        sim.transfer("x", "host", "gpu1", 1 << 20, after=None)  # type: ignore[arg-type]
    one_line(err, "'x' after: expected a list of ids or events, got None")
    with pytest.raises(ScenarioError) as err:
        sim.transfer("x", "host", "gpu1", 1 << 20, after=[["a"]])  # type: ignore[list-item]
    one_line(err, "'x' after: expected ids and events, got ['a']")


def test_ids_are_converted_with_str_and_found_either_way() -> None:
    sim = Simulation(TOPO)
    five = sim.transfer(5, "host", "gpu0", 1 << 20)  # type: ignore[arg-type]
    a = sim.transfer("a", "host", "gpu1", 1 << 20, after=[5])  # type: ignore[list-item]
    b = sim.transfer("b", "host", "gpu1", 1 << 20, after="5")
    assert sim.done(5) is five and sim.done("5") is five  # type: ignore[arg-type]
    res = sim.run()
    assert a.value.start_s == b.value.start_s == five.value.finish_s and res["5"].id == "5"


# ------------------------------------------------------------------------------------------------ typed errors
@pytest.mark.parametrize("call, error, parts", [
    (lambda: Simulation(None), ScenarioError, ("Simulation: expected a Topology (presets.get(name))", "None")),
    (lambda: Simulation(8), ScenarioError, ("a preset name or a topology file's path, got 8",)),
    (lambda: Simulation("nope-8"), TopologyError, ("unknown topology preset 'nope-8'",)),
    (lambda: presets.get(None), TopologyError, ("preset name: expected a string", "got None", "h200-2")),
    (lambda: presets.get(8), TopologyError, ("preset name: expected a string", "got 8")),
    (lambda: presets.load(None), TopologyError, ("topology: expected a preset name or a topology file's path",)),
    (lambda: presets.hgx_h200("8"), TopologyError, ("hgx gpus: expected a whole number, got '8'",)),
    (lambda: presets.hgx_h100(8.0), TopologyError, ("hgx gpus: expected a whole number, got 8.0",)),
    (lambda: Simulation(TOPO).transfer("a", None, "gpu1", 1 << 30), ScenarioError,
     ("transfer 'a': src: expected an endpoint name", "got None")),
    (lambda: Simulation(TOPO).transfer("a", "host", ["gpu1"], 1 << 30), ScenarioError,
     ("transfer 'a': dst: expected an endpoint name", "got ['gpu1']")),
    (lambda: Simulation(TOPO).transfers([("a", "host", "gpu0", 1), ("b", ["host"], "gpu1", 1)]), ScenarioError,
     ("transfer 'b': src: expected an endpoint name", "got ['host']")),
], ids=["sim-none", "sim-int", "sim-unknown-name", "get-none", "get-int", "load-none", "hgx-h200-str", "hgx-h100-float",
        "src-none", "dst-list", "bulk-src-list"])
def test_bad_arguments_raise_typed_one_line_errors(call: Callable[[], Any], error: type, parts: tuple) -> None:
    with pytest.raises(error) as err:
        call()
    one_line(err, *parts)


def test_a_simulation_takes_a_preset_name_as_presets_load_reads_it() -> None:
    by_name, by_topology = Simulation("h200-2"), Simulation(TOPO)
    assert by_name.topology.name == TOPO.name and by_name.topology.calibration_id == TOPO.calibration_id
    for sim in (by_name, by_topology):
        sim.transfer("a", "host", "gpu1", 1 << 30)
    assert by_name.run().makespan_s == by_topology.run().makespan_s


def test_simulate_sync_refuses_what_is_not_a_strategy_in_one_line() -> None:
    """A name (as the CLI takes one) was an AttributeError on `label`; it says how to make the strategy (the
    registry imports every strategy module, which import simulate_sync's, so it does not look names up itself)."""
    hgx = presets.get("hgx-h200-8")
    gpus = [f"gpu{i}" for i in range(8)]
    setup = SyncSetup(hgx, models.get("Llama-3-8B"), FSDPLayout(gpus[:4]), RolloutLayout(gpus[4:], tp=1))
    with pytest.raises(WorkloadError) as err:
        simulate_sync(setup, "rdma-p2p")  # type: ignore[arg-type]
    one_line(err, "simulate_sync: expected a Strategy, got 'rdma-p2p': weightsync.get('rdma-p2p') makes it")
    with pytest.raises(WorkloadError) as err:
        simulate_sync(setup, None)  # type: ignore[arg-type]
    one_line(err, "simulate_sync: expected a Strategy, got None")
    with pytest.raises(WorkloadError) as err:
        simulate_sync(None, get("rdma-p2p"))  # type: ignore[arg-type]
    one_line(err, "simulate_sync: expected a SyncSetup, got NoneType")


@pytest.mark.parametrize("level", [1.5, 0, 0.0, 1, -0.1, math.nan, "0.9", True])
def test_an_interval_level_outside_0_1_is_refused_before_any_run(level: Any) -> None:
    runs = []
    for interval in (predict_interval, corner_interval):
        with pytest.raises(CalibrationError) as err:
            interval(lambda t: runs.append(t) or 1.0, TOPO, level=level)
        one_line(err, "interval level must lie in (0, 1)", repr(level))
    assert not runs


@pytest.mark.parametrize("value", [math.nan, math.inf, "1.0", None])
def test_a_run_that_returns_no_finite_number_is_named(value: Any) -> None:
    with pytest.raises(CalibrationError) as err:
        predict_interval(lambda t: value, TOPO, samples=2)
    one_line(err, f"the run returned {value!r} for the point", "finite number", "h200-2")
    with pytest.raises(CalibrationError) as err:
        predict_interval(lambda t: 1.0 if t is TOPO else value, TOPO, samples=2)
    one_line(err, f"the run returned {value!r} for perturbed sample 0")
    with pytest.raises(CalibrationError) as err:
        corner_interval(lambda t: value, TOPO)
    one_line(err, f"the run returned {value!r}")


def test_a_result_names_an_unknown_id_and_the_ids_it_has() -> None:
    sim = Simulation(TOPO)
    sim.transfers([(f"t{i}", "host", "gpu0", 1 << 20) for i in range(8)])
    res = sim.run()
    with pytest.raises(UnknownIdError) as err:
        res["nope"]
    one_line(err, "no record 'nope' in this result", "ids: t0, t1, t2, t3, t4, ... (8 in all)")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ScenarioError)  # `except KeyError` still works
    empty = Simulation(TOPO).run()
    with pytest.raises(KeyError, match=r"no record 'x' in this result \(ids: none\)"):
        empty["x"]
    sim = Simulation(TOPO, record_rates=True)
    sim.delay("d", 1e-3)
    with pytest.raises(KeyError) as err:
        sim.rate_segments("d")
    one_line(err, "rate segments: 'd' is no flow of this simulation", "ids: d")


# ------------------------------------------------------------------------------------------------ profiles
def test_a_bundled_profile_name_works_wherever_a_calibration_is_named() -> None:
    """`h200x2: cannot read calibration profile (No such file or directory)` everywhere but `calibrate --base`."""
    assert {"h200x2", "h200x8"} <= set(bundled_names())
    assert load_profile("h200x2") == load_profile(Path(presets.__file__).with_name("profiles") / "h200x2.json")
    topo = presets.get("h200-2", calibration="h200x2")
    assert topo.calibration_id == load_profile("h200x2").id == TOPO.calibration_id
    for bad in ("h200x9", "h200x2.yaml"):
        with pytest.raises(CalibrationError) as err:
            presets.get("h200-2", calibration=bad)
        one_line(err, f"{bad}: cannot read calibration profile: not a file or a bundled profile name",
                 "(bundled: h100x1, h200x1, h200x2, h200x8")
    with pytest.raises(CalibrationError) as err:
        presets.get("h200-2", calibration=5)  # type: ignore[arg-type]
    one_line(err, "calibration: expected a profile file's path or a bundled profile's name", "got 5")


def test_a_file_of_a_bundled_profiles_name_still_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("h200x2").write_text("{not a profile")
    with pytest.raises(CalibrationError, match="h200x2: malformed"):
        load_profile("h200x2")


def test_the_cli_resolves_bundled_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text("topology: hgx-h200-8\ntransfers:\n  - {id: a, src: host, dst: gpu0, bytes: 1GiB}\n")
    assert main(["simulate", "s.yaml", "--calibration", "h200x8", "--json"]) == 0
    assert main(["simulate", "s.yaml", "--calibration", "h200x9"]) == 2
    assert "not a file or a bundled profile name" in capsys.readouterr().err
