"""The Python API refuses what the files refuse: non-finite, absurd or zero sizes, times and rates raise a typed
error naming the transfer and the argument (before: makespan nan for `inf` bytes, 0 bytes accepted)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fabricsim import FabricsimError
from fabricsim.hwmodels import presets
from fabricsim.simcore import ScenarioError, Simulation
from fabricsim.simcore.units import parse_bytes, parse_seconds


@pytest.mark.parametrize("kwargs, match", [
    ({"nbytes": math.inf}, "bytes: size must be a finite number"),
    ({"nbytes": np.float64("nan")}, "bytes: size must be a finite number"),
    ({"nbytes": 0}, r"bytes: size must be > 0"),
    ({"nbytes": -4}, r"bytes: size must be > 0"),
    ({"nbytes": 2.0**70}, "beyond 1 EiB"),
    ({"nbytes": True}, "expected a size"),
    ({"nbytes": "1e999GiB"}, "finite"),
    ({"nbytes": 1 << 20, "start": math.inf}, "start: time must be a finite number"),
    ({"nbytes": 1 << 20, "fixed_cost_s": math.inf}, "fixed cost: time must be a finite number"),
    ({"nbytes": 1 << 20, "fixed_cost_s": 1e300}, "beyond 10\\^9 s"),
    ({"nbytes": 1 << 20, "rate_cap_Bps": math.inf}, "rate cap: expected a finite number > 0"),
    ({"nbytes": 1 << 20, "weight": math.nan}, "weight: expected a finite number > 0"),
    # absurd but finite: a rate cap of 1e-300 B/s made finish times NaN, a weight of 1e-300 an "unbounded flow"
    ({"nbytes": 1 << 20, "rate_cap_Bps": 1e-300}, "rate cap: expected a rate of at least 1 \\(1 B/s\\)"),
    ({"nbytes": 1 << 20, "rate_cap_Bps": 0.5}, "rate cap: expected a rate of at least 1 \\(1 B/s\\)"),
    ({"nbytes": 1 << 20, "weight": 1e-300}, "weight: expected a weight from 1e-09 to 1e\\+09"),
    ({"nbytes": 1 << 20, "weight": 2e9}, "weight: expected a weight from 1e-09 to 1e\\+09"),
])
def test_transfer_arguments_are_checked(kwargs: dict, match: str) -> None:
    sim = Simulation(presets.get("h100-1"))
    nbytes = kwargs.pop("nbytes")
    with pytest.raises(ScenarioError, match=match) as err:
        sim.transfer("t", "host", "gpu0", nbytes, **kwargs)
    assert isinstance(err.value, FabricsimError) and str(err.value).startswith("transfer 't'")


def test_task_and_delay_arguments_are_checked() -> None:
    sim = Simulation(presets.get("h100-1"))
    for kwargs in ({"flops": math.inf}, {"flops": math.nan}, {"hbm_bytes": math.inf}, {"start": -1.0},
                   {"flops": 1e40}):  # finite, but 10^25 s of compute: a wrong unit
        with pytest.raises(ScenarioError, match="task 'k'"):
            sim.task("k", "gpu0", **kwargs)
    with pytest.raises(ScenarioError, match="delay 'd': seconds"):
        sim.delay("d", math.inf)


def test_numpy_numbers_are_plain_numbers() -> None:
    sim = Simulation(presets.get("h100-1"))
    sim.transfer("t", "host", "gpu0", np.int64(1 << 20), start=np.float64(0.0))
    assert math.isfinite(sim.run().makespan_s)
    assert parse_bytes("1GiB") == 1 << 30 and isinstance(parse_bytes(1e3), int)


def test_a_time_with_a_unit_is_the_number_written_and_an_unknown_unit_is_named() -> None:
    """'20us' was 20 * 1e-6 = 1.9999999999999998e-05, not the 2e-05 of `20e-6`: the same time written two ways
    gave two start times. A unit the parser does not know is named, with the units it does."""
    for text, seconds in [("20us", 2e-5), ("20µs", 2e-5), ("20μs", 2e-5), ("1.5ms", 1.5e-3), ("300ns", 3e-7),
                          ("2s", 2.0), ("0.1us", 1e-7), ("7ns", 7e-9)]:
        assert parse_seconds(text).hex() == seconds.hex(), text
    with pytest.raises(ScenarioError, match=r"^start: cannot read time '5parsec': unknown unit 'parsec' "
                                            r"\(use s, ms, us, µs, ns\)$"):
        parse_seconds("5parsec", "start")


def test_the_limits_of_rate_caps_and_weights_are_accepted_and_transfers_checks_them_too() -> None:
    """1 B/s and weights of 1e-9 and 1e9 are in range; below 1 B/s `transfers` refuses the cap as `transfer` does,
    naming its first copy, and declares nothing."""
    sim = Simulation(presets.get("h100-1"))
    slow = sim.transfer("slow", "host", "gpu0", 4.0, rate_cap_Bps=1.0)
    # engines of their own, so that the two extreme weights share the link instead of queueing on its copy engine
    heavy, light = (sim.transfer(f"w{w:g}", "host", "gpu0", 1 << 30, weight=w, engine=f"e{w:g}") for w in (1e9, 1e-9))
    sim.run()
    assert slow.value.finish_s == pytest.approx(4.0, rel=1e-3)
    # the heavy one takes all but 1e-18 of the link, so it ends when it would alone, well before the light one
    alone = Simulation(presets.get("h100-1"))
    solo = alone.transfer("solo", "host", "gpu0", 1 << 30, engine="e")
    alone.run()
    assert heavy.value.finish_s == pytest.approx(solo.value.finish_s, rel=1e-9)
    assert math.isfinite(light.value.finish_s) and light.value.finish_s > 1.9 * heavy.value.finish_s
    sim = Simulation(presets.get("h100-1"))
    with pytest.raises(ScenarioError, match="transfer 'a': rate cap: expected a rate of at least 1 \\(1 B/s\\)"):
        sim.transfers([("a", "host", "gpu0", 1e6), ("b", "host", "gpu0", 1e6)], rate_cap_Bps=0.5)
    assert not sim._deferred


@pytest.mark.parametrize("kwargs, match", [
    ({"kv_reserve_fraction": 1.0}, r"kv_reserve_fraction: expected a fraction in \[0, 1\), got 1.0"),
    ({"kv_reserve_fraction": math.nan}, "kv_reserve_fraction: expected a fraction"),
    ({"kv_reserve_fraction": True}, "kv_reserve_fraction: expected a fraction"),
    ({"trainer_bytes_per_param": -1}, r"trainer_bytes_per_param: expected bytes per parameter in \[0, 64\]"),
    ({"trainer_bytes_per_param": 65}, r"trainer_bytes_per_param: expected bytes per parameter in \[0, 64\]"),
    ({"trainer_bytes_per_param": "2"}, "trainer_bytes_per_param: expected bytes per parameter"),
    ({"topology": "hgx-h200-8"}, "topology must be a Topology, got 'hgx-h200-8'"),
    ({"model": "Llama-3-8B"}, "model must be a ModelConfig"),
    ({"rollout": ["gpu4"]}, "rollout must be a RolloutLayout"),
])
def test_a_sync_setup_is_checked_where_it_is_made(kwargs: dict, match: str) -> None:
    """SyncSetup refuses what `sync`'s flags refuse, by the same checks (--kv-reserve 1.0 was refused while the API
    took it; a preset's name for the topology was an AttributeError deep in the run)."""
    from fabricsim.workloads import models
    from fabricsim.workloads.errors import WorkloadError
    from fabricsim.workloads.placement import FSDPLayout, RolloutLayout
    from fabricsim.workloads.weightsync import SyncSetup

    gpus = [f"gpu{i}" for i in range(8)]
    args = {"topology": presets.get("hgx-h200-8"), "model": models.get("Llama-3-8B"),
            "trainer": FSDPLayout(gpus[:4]), "rollout": RolloutLayout(gpus[4:]), **kwargs}
    with pytest.raises(WorkloadError, match=match):
        SyncSetup(**args)
