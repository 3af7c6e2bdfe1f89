"""The Python API refuses what the files refuse: non-finite, absurd or zero sizes, times and rates raise a typed
error naming the transfer and the argument (before: makespan nan for `inf` bytes, 0 bytes accepted)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fabricsim import FabricsimError
from fabricsim.hwmodels import presets
from fabricsim.simcore import ScenarioError, Simulation
from fabricsim.simcore.units import parse_bytes


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
])
def test_transfer_arguments_are_checked(kwargs: dict, match: str) -> None:
    sim = Simulation(presets.get("h100-1"))
    nbytes = kwargs.pop("nbytes")
    with pytest.raises(ScenarioError, match=match) as err:
        sim.transfer("t", "host", "gpu0", nbytes, **kwargs)
    assert isinstance(err.value, FabricsimError) and str(err.value).startswith("transfer 't'")


def test_task_and_delay_arguments_are_checked() -> None:
    sim = Simulation(presets.get("h100-1"))
    for kwargs in ({"flops": math.inf}, {"flops": math.nan}, {"hbm_bytes": math.inf}, {"start": -1.0}):
        with pytest.raises(ScenarioError, match="task 'k'"):
            sim.task("k", "gpu0", **kwargs)
    with pytest.raises(ScenarioError, match="delay 'd': seconds"):
        sim.delay("d", math.inf)


def test_numpy_numbers_are_plain_numbers() -> None:
    sim = Simulation(presets.get("h100-1"))
    sim.transfer("t", "host", "gpu0", np.int64(1 << 20), start=np.float64(0.0))
    assert math.isfinite(sim.run().makespan_s)
    assert parse_bytes("1GiB") == 1 << 30 and isinstance(parse_bytes(1e3), int)
