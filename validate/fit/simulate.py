"""Simulate a measured case on a topology: the one place calibrate and report turn cases into predictions.

A case is simulated from its scenario (the DESIGN.md file validate wrote beside the measurement), on a
topology object rather than a preset name, so calibration can try candidate profiles in memory. NCCL cases
are scenario `collectives:` calls, simulated by the engine's one collective model (`simcore.collectives`)
with the fitted `collectives[OP]` of the topology or of the candidate parameters passed in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import CalibrationProfile, CollectiveParams
from fabricsim.hwmodels.topology import Topology
from fabricsim.simcore.scenario import parse_scenario
from fabricsim.validate.cases import Case, to_scenario
from fabricsim.validate.measurements import Measurements


@dataclass(frozen=True)
class Prediction:
    makespan_s: float
    finish_s: dict[str, float]
    begin_s: dict[str, float]  # when each copy got its engine (FIFO queues make it later than the start)


def base_topology(m: Measurements) -> Topology:
    """The uncalibrated preset of the measured machine."""
    if not m.preset:
        raise CalibrationError(f"{m.source}: no preset matches this machine ({m.machine.get('gpus')}x "
                               f"{m.machine.get('gpu_model')}); add one to hwmodels.presets first")
    return presets.get(m.preset, calibration=None)


def check_profile_fits(profile: CalibrationProfile, m: Measurements) -> str:
    """A profile for another GPU model, or for fewer GPUs than measured (it lacks what many GPUs share), must
    not be applied to these measurements. One for more GPUs of the model applies: returns the note saying so."""
    model, gpus = m.machine.get("gpu_model"), m.machine.get("gpus")
    if profile.gpu_model != model or profile.gpus < int(gpus or 0):
        raise CalibrationError(
            f"profile '{profile.id}' was fitted on {profile.gpus}x {profile.gpu_model} ({profile.machine}), "
            f"but {m.source} was measured on {gpus}x {model}")
    if profile.gpus != gpus:
        return (f"profile '{profile.id}' was fitted on {profile.gpus}x {profile.gpu_model} ({profile.machine}); "
                f"applied to this {gpus}-GPU machine of that model")
    return ""


Collectives = dict[str, CollectiveParams]


def collective_params(profile: CalibrationProfile | None) -> Collectives:
    """The profile's fitted collectives by name (none without a profile: plain ring transfers)."""
    return dict(profile.collectives) if profile is not None else {}


def simulate_case(case: Case, topo: Topology, collectives: Collectives | None = None) -> Prediction:
    """Predicted makespan and per-transfer finish times of `case` on `topo` (start at 0, like the gate)."""
    scen = to_scenario(case, topo.name, len(topo.gpus()))
    if scen is None:
        raise CalibrationError(f"case '{case.id}' moves no bytes; it cannot be simulated")
    return simulate_scenario(scen, topo, collectives)


def simulate_scenario(scen: dict[str, Any], topo: Topology, collectives: Collectives | None = None) -> Prediction:
    """`collectives` replaces the topology's fitted collectives (calibrate tries candidates this way)."""
    if collectives is not None:
        topo = copy.copy(topo)
        topo.collectives = dict(collectives)
    sim = parse_scenario(scen, source=str(scen.get("name", "case"))).build(topology=topo, record_load=False)
    res = sim.run()
    copies = [r for r in res.records if r.kind != "delay"]  # a collective's end marker is no copy
    return Prediction(res.makespan_s, {r.id: r.finish_s for r in copies}, {r.id: r.begin_s for r in copies})


def distinct_engines(case: Case) -> bool:
    """True when no two copies of the case queue on one engine (different issuing GPU, class or mechanism)."""
    keys = [(x.issuer, "h2d" if x.src == "host" else "d2h" if x.dst == "host" else
             "d2d" if x.src == x.dst else "p2p", x.mech) for x in case.xfers]
    return len(keys) == len(set(keys))


def measured_order(case: Case, meas: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(finish times, service times) of a measured copy case, each sorted: k-th earliest first.

    Where every copy has an engine of its own, each starts at the gate and its own-stream duration is its
    finish time without the few-µs clock hop (MEASURING.md 4), so those are used. Where copies queue on one
    engine, only the common clock shows the queueing; equal copies are then served in an order that changes
    between repetitions, so they are compared by rank. Files measured before order statistics were recorded
    fall back to the per-copy medians, sorted.
    """
    own = list(meas.get("own_sorted_s") or sorted((meas.get("own_s") or meas["finish_s"]).values()))
    if distinct_engines(case):
        return own, own
    fin = meas.get("finish_sorted_s") or sorted(meas["finish_s"].values())
    return list(fin), own


def measured_makespan(case: Case, meas: dict[str, Any]) -> float:
    """The measured makespan compared with predictions (see `measured_order` for which clock)."""
    if case.group == "copies" and len(meas.get("finish_s") or {}) > 1 and distinct_engines(case):
        raw = meas.get("raw_own_s")
        if raw:
            n = len(next(iter(raw.values())))
            spans = sorted(max(v[r] for v in raw.values()) for r in range(n))
            return float(spans[n // 2] if n % 2 else (spans[n // 2 - 1] + spans[n // 2]) / 2)
        return max((meas.get("own_s") or meas["finish_s"]).values())
    return meas["makespan_s"]


def predicted_order(pred: Prediction) -> tuple[list[float], list[float]]:
    """The simulated counterpart of `measured_order`: sorted finish times and sorted service times."""
    ids = list(pred.finish_s)
    return sorted(pred.finish_s[i] for i in ids), sorted(pred.finish_s[i] - pred.begin_s[i] for i in ids)
