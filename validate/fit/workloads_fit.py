"""Fit the software costs of the real code paths from the workload suite's calibration cases.

Each group of costs is fitted on the calibration cases of the mechanisms that pay it, in order, with the
costs of earlier groups held: the process round trip first (the median of the `noop` cases), then per
tensor copies (steady-state IPC), first-time IPC (export, rebuild, handle open: its end-to-end time and the
rollout's part of it), buckets (fixed and per tensor), the fp8 cast's extra per bucket, host staging, and
the `WeightPool` calls. A fit minimises the squared log ratio of the twin's prediction to the measured
median over the group's observables (`scipy.optimize.least_squares`, costs >= 0). Held-out cases (the 256 MiB
buckets, the third model, every KV case) are never read here; a test poisons them to check.

The result goes into the calibration profile's `software_costs` as {mechanism: {operation: {fixed_s}}}
(`PROFILE_KEYS`), with what it was fitted on in `provenance.workload_fit`, so strategies that know these code
paths (`cuda-ipc-buckets`, `host-staged`, `shared-pool`) use them instead of hand-set defaults.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import numpy as np

from fabricsim.errors import CalibrationError
from fabricsim.hwmodels.calibration import CalibrationProfile, SoftwareCost
from fabricsim.hwmodels.topology import Topology
from fabricsim.validate.workload_cases import CALIBRATION
from fabricsim.validate.workloads_file import WorkloadMeasurements

from .workloads_sim import WorkloadCosts, measured_observables, simulate_workload

# (mechanisms whose calibration cases fit the group, costs fitted, initial guesses in seconds)
GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]], ...] = (
    (("ipc-tensor-steady",), ("copy_per_tensor_s",), (10e-6,)),
    (("ipc-tensor-first",), ("export_per_tensor_s", "rebuild_per_tensor_s", "open_per_handle_s"),
     (20e-6, 20e-6, 100e-6)),
    (("ipc-bucket",), ("bucket_fixed_s", "bucket_per_tensor_s"), (1e-3, 10e-6)),
    (("fp8-bucket",), ("fp8_bucket_fixed_s",), (100e-6,)),
    (("host-staged",), ("host_per_tensor_s", "host_bucket_fixed_s"), (10e-6, 100e-6)),
    (("pool-pull", "pool-zero-copy"), ("publish_fixed_s", "publish_per_tensor_s", "read_per_tensor_s",
                                       "views_per_tensor_s"), (60e-6, 10e-6, 20e-6, 10e-6)),
)

# Where each fitted cost lives in the profile's software_costs.
PROFILE_KEYS: dict[str, tuple[str, str]] = {
    "message_s": ("process", "message"),
    "copy_per_tensor_s": ("torch", "copy_per_tensor"),
    "export_per_tensor_s": ("cuda_ipc", "export_per_tensor"),
    "rebuild_per_tensor_s": ("cuda_ipc", "rebuild_per_tensor"),
    "open_per_handle_s": ("cuda_ipc", "open_per_segment"),
    "bucket_fixed_s": ("ipc_bucket", "per_bucket"),
    "bucket_per_tensor_s": ("ipc_bucket", "per_tensor"),
    "fp8_bucket_fixed_s": ("fp8_cast", "per_bucket"),
    "host_per_tensor_s": ("host_staged", "per_tensor"),
    "host_bucket_fixed_s": ("host_staged", "per_bucket"),
    "publish_fixed_s": ("weightpool", "publish"),
    "publish_per_tensor_s": ("weightpool", "publish_per_tensor"),
    "read_per_tensor_s": ("weightpool", "read_per_tensor"),
    "views_per_tensor_s": ("weightpool", "views_per_tensor"),
}


@dataclasses.dataclass
class FitResult:
    costs: WorkloadCosts
    fitted_on: dict[str, list[str]]  # cost name -> case ids
    residuals: dict[str, float]  # calibration case/observable -> log ratio after the fit


def _calibration(m: WorkloadMeasurements, mechs: tuple[str, ...]) -> list:
    return [c for c in m.cases if c.split == CALIBRATION and c.mech in mechs and c.gpus == 1]


def fit_costs(m: WorkloadMeasurements, topo: Topology) -> FitResult:
    """Fit every group in order on the calibration split; returns the costs and what each came from."""
    from scipy.optimize import least_squares

    noop = _calibration(m, ("noop",))
    if not noop:
        raise CalibrationError(f"{m.source}: no calibration 'noop' case: the process round trip cannot be fitted")
    costs = WorkloadCosts({"message_s": statistics.median(float(m.measured[c.id]["time_s"]) for c in noop)})
    fitted_on: dict[str, list[str]] = {"message_s": [c.id for c in noop]}
    residuals: dict[str, float] = {}
    for mechs, names, guess in GROUPS:
        cases = _calibration(m, mechs)
        if not cases:
            continue
        obs = [(c, k, v) for c in cases for k, v in measured_observables(c, m.measured[c.id]).items()
               if k in ("time_s", "rollout_s", "publish_s")]
        scale = np.array(guess)

        def resid(x: np.ndarray, names: tuple[str, ...] = names, obs: list = obs, scale: np.ndarray = scale,
                  base: WorkloadCosts = costs) -> np.ndarray:
            trial = base.with_values(**{n: float(v) for n, v in zip(names, x * scale, strict=True)})
            preds: dict[str, dict[str, float]] = {}
            out = []
            for c, k, v in obs:
                if c.id not in preds:
                    preds[c.id] = simulate_workload(c, m.measured[c.id], topo, trial)
                p = preds[c.id].get(k, math.nan)
                out.append(math.log(max(p, 1e-12) / v))
            return np.array(out)

        sol = least_squares(resid, np.ones(len(names)), bounds=(0.0, np.inf), diff_step=1e-3, x_scale=1.0)
        costs = costs.with_values(**{n: float(v) for n, v in zip(names, sol.x * scale, strict=True)})
        ids = sorted({c.id for c, _, _ in obs})
        for n in names:
            fitted_on[n] = ids
        for (c, k, _), r in zip(obs, _residuals(m, obs, topo, costs), strict=True):
            residuals[f"{c.id}:{k}"] = r
    return FitResult(costs, fitted_on, residuals)


def _residuals(m: WorkloadMeasurements, obs: list, topo: Topology, costs: WorkloadCosts) -> list[float]:
    preds: dict[str, dict[str, float]] = {}
    out = []
    for c, k, v in obs:
        if c.id not in preds:
            preds[c.id] = simulate_workload(c, m.measured[c.id], topo, costs)
        out.append(round(math.log(preds[c.id][k] / v), 5))
    return out


def costs_from_profile(profile: CalibrationProfile | None) -> WorkloadCosts:
    """The workload costs a profile holds (none fitted: an empty set, every cost zero)."""
    values: dict[str, float] = {}
    if profile is not None:
        for name, (mech, op) in PROFILE_KEYS.items():
            sc = profile.software_costs.get(mech, {}).get(op)
            if sc is not None:
                values[name] = float(sc.fixed_s)
    return WorkloadCosts(values)


def profile_with_costs(profile: CalibrationProfile, fit: FitResult, source: str) -> CalibrationProfile:
    """A copy of `profile` whose software_costs hold the fitted workload costs (handle open/close kept)."""
    sw = {k: dict(v) for k, v in profile.software_costs.items()}
    for name, value in fit.costs.values.items():
        mech, op = PROFILE_KEYS[name]
        sw.setdefault(mech, {})[op] = SoftwareCost(fixed_s=float(value))
    prov = dict(profile.provenance)
    prov["workload_fit"] = {"source": source, "split": "calibration cases of validate/workload_cases.py",
                            "fitted_on": fit.fitted_on, "log_residuals": fit.residuals}
    return dataclasses.replace(profile, software_costs=sw, provenance=prov)


def write_profile(profile: CalibrationProfile, path: str | Path) -> None:
    profile.save(path)
