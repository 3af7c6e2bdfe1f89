"""CI guard: the committed measurements, re-simulated with the committed profiles, stay within the bound.

For every machine folder `validate/data/<machine>/` (measured.json, report/summary.json) the bundled profile
`hwmodels/profiles/<machine>.json` is applied to every measured case; the held-out makespan error of the
modelled patterns must stay within the `ci_bound` the report documented (docs/validation.md quotes it), with
the calibration/held-out split the report used (`split` in summary.json: today's case list or the file's). A
change to the engine, the presets or a profile that makes the simulator worse at predicting real hardware
fails here. NCCL broadcast and all-gather at >= 64 MiB must also stay within the 10% aim where it is met.
Beyond the documented bound, the errors may not regress by more than a quarter (plus half a point for the
median, a point for p90 and NCCL) from what the committed report recorded: the bound alone would let today's
1-4% errors quadruple unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fabricsim.hwmodels.calibration import bundled_profile_path, load_profile
from fabricsim.validate.cases import HELD_OUT
from fabricsim.validate.fit.report import AIM_NCCL, compare, load_summary, summarise
from fabricsim.validate.measurements import load_measurements, with_split


def no_regression(recorded: float, slack: float) -> float:
    return recorded * 1.25 + slack
DATA = Path(__file__).resolve().parents[1] / "validate" / "data"
MACHINES = sorted(p.name for p in DATA.glob("*") if (p / "measured.json").exists()) if DATA.exists() else []


def test_some_machine_is_committed() -> None:
    assert MACHINES, "no committed measurements under validate/data/"


@pytest.mark.parametrize("machine", MACHINES)
def test_held_out_error_within_documented_bound(machine: str) -> None:
    summary = load_summary(DATA / machine / "report" / "summary.json")
    m, moved = with_split(load_measurements(DATA / machine / "measured.json"), summary.get("split", "file"))
    assert sorted(moved) == sorted(summary.get("split_changed_from_file", []))
    profile = load_profile(bundled_profile_path(machine))
    assert profile.id == summary["profile"], f"{machine}: the report was made with another profile"
    bound = summary["ci_bound"]
    df, _ = compare(m, profile, samples=0)  # errors only: intervals are the report's, not this guard's
    now = summarise(df)
    held = now[HELD_OUT]["modelled"]
    assert held["n"] == summary[HELD_OUT]["modelled"]["n"] > 0
    assert held["median"] <= bound["median"], f"{machine}: held-out median {held['median']:.3f} > {bound}"
    assert held["p90"] <= bound["p90"], f"{machine}: held-out p90 {held['p90']:.3f} > {bound}"
    recorded = summary[HELD_OUT]["modelled"]
    assert held["median"] <= no_regression(recorded["median"], 0.005), f"{machine}: held-out median regressed"
    assert held["p90"] <= no_regression(recorded["p90"], 0.01), f"{machine}: held-out p90 regressed"
    for pattern, s in summary["nccl_ge_64MiB"].items():
        got = now["nccl_ge_64MiB"][pattern]["max"]
        assert got <= no_regression(s["max"], 0.01), f"{machine}: {pattern} at >= 64 MiB regressed to {got:.3f}"
        if pattern in ("nccl-broadcast", "nccl-all_gather") and s["max"] <= AIM_NCCL:
            assert got <= AIM_NCCL, f"{machine}: {pattern} at >= 64 MiB now off by {got:.3f}"


@pytest.mark.parametrize("machine", MACHINES)
def test_preset_loads_the_committed_profile(machine: str) -> None:
    from fabricsim.hwmodels import presets

    m = load_measurements(DATA / machine / "measured.json")
    topo = presets.get(m.preset)
    assert topo.calibration_id == load_profile(bundled_profile_path(machine)).id
