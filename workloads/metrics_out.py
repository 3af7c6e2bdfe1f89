"""A workload result's metrics in the forms people and programs use, and printing them for `sync` and `serve`.

A result class implements `metrics_with_units()` (`{metric: (value, unit)}`, what a study's point function
returns); `ReportsMetrics` derives the rest from it: `metrics()` as plain Python numbers (counts and byte counts
as ints, never numpy scalars), `units()`, and `to_dataframe()` with one row per metric.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ~0.2 s to import (with pyarrow): `fabricsim sync` prints its metrics without it
    import pandas as pd

from fabricsim.hwmodels.intervals import sample_count

# Units whose values are whole things: reported as int, not 3.0
WHOLE_UNITS = frozenset({"B", "count", "sequences", "versions"})


def plain_number(value: Any, unit: str = "") -> float | int:
    """A metric value as a Python float, or an int for whole-unit metrics (numpy scalars become Python's)."""
    if hasattr(value, "item"):
        value = value.item()
    value = float(value)
    if unit in WHOLE_UNITS and math.isfinite(value) and value == int(value):
        return int(value)
    return value


class ReportsMetrics:
    """Mixin: `metrics()`, `units()` and `to_dataframe()` from a class's `metrics_with_units()`."""

    def metrics_with_units(self) -> dict[str, tuple[float, str]]:  # pragma: no cover - implemented by results
        raise NotImplementedError

    def metrics(self) -> dict[str, float | int]:
        """{metric: value} as plain Python numbers (units: `units()`; both: `metrics_with_units()`)."""
        return {k: plain_number(v, u) for k, (v, u) in self.metrics_with_units().items()}

    def units(self) -> dict[str, str]:
        return {k: u for k, (_v, u) in self.metrics_with_units().items()}

    def to_dataframe(self) -> pd.DataFrame:
        """One row per metric: metric, value, unit."""
        rows = [(k, plain_number(v, u), u) for k, (v, u) in self.metrics_with_units().items()]
        import pandas as pd

        return pd.DataFrame(rows, columns=["metric", "value", "unit"])



def metric_values(metrics: Mapping[str, tuple[float, str]]) -> dict[str, float | int]:
    """The JSON form: metric -> value (units are in the docs and the human table)."""
    return {k: plain_number(v, unit) for k, (v, unit) in metrics.items()}


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    print()


def print_metrics(metrics: Mapping[str, tuple[float, str]], intervals: Mapping[str, Any] | None = None) -> None:
    """An aligned `name value unit` table; where `intervals` has the metric, `[lo, hi] (90%)` after it."""
    width = max((len(k) for k in metrics), default=0)
    for k, (v, unit) in metrics.items():
        iv = (intervals or {}).get(k)
        band = ""
        if iv is not None and iv.hi > iv.lo:
            band = f"  [{iv.lo:.6g}, {iv.hi:.6g}] ({iv.level:.0%}{'' if iv.calibrated else ', uncalibrated'})"
        print(f"  {k:<{width}} {v:>14.6g} {unit}{band}")


def interval_values(intervals: Mapping[str, Any]) -> dict[str, dict[str, float | bool]]:
    """The JSON form of metric intervals: metric -> {lo, hi, level, calibrated} (the value is the metric's own;
    `calibrated` false: the spread is the wide a priori one of datasheet parameters, as the text output says).
    Only those with a spread, as the text shows them: `feasible`, bytes and flow events came with [x, x] intervals
    that a reader took for predictions (a new-user trial)."""
    return {k: {"lo": iv.lo, "hi": iv.hi, "level": iv.level, "calibrated": iv.calibrated}
            for k, iv in intervals.items() if iv.hi > iv.lo}


def why_no_intervals(skipped: str) -> str:
    """Why a command's re-runs did not run, for `interval_fields`: the default's skip note (`default_samples`), or
    else `--samples 0` asked for none."""
    return skipped.removeprefix("note: ") if skipped else "--samples 0"


def interval_fields(intervals: Mapping[str, Any] | None, why_not: str) -> dict[str, Any]:
    """The JSON fields that say what became of a command's intervals: `{"intervals": {...}}` (`interval_values`)
    when the re-runs ran, so `{}` there means they ran and no metric moved; `{"intervals_skipped": why_not}` and no
    `intervals` key when they did not (`--samples 0`, the default's skip on a costly setup). A review found
    `"intervals": {}` said both, and a reader could not tell an answer without spread from one never checked."""
    if intervals is not None:
        return {"intervals": interval_values(intervals)}
    return {"intervals_skipped": why_not}


# Intervals by default only where they are cheap: each sample re-runs the whole simulation, so on a large setup
# (nccl-broadcast on 1,024 GPUs: 6.9 s a run) the default would multiply the cost of the answer many times.
AUTO_SAMPLES_MAX_GPUS = 64
AUTO_SAMPLES_MAX_RUN_S = 1.0


def default_samples(requested: int | None, default: int, *, gpus: int, first_run_s: float) -> tuple[int, str]:
    """(re-runs for the intervals, a one-line note for stderr when the default was skipped, else "").

    `requested` is `--samples` as given (None when left out): an explicit count is always honoured."""
    if requested is not None:
        return requested, ""
    if gpus > AUTO_SAMPLES_MAX_GPUS:
        why = f"{gpus} GPUs"
    elif first_run_s > AUTO_SAMPLES_MAX_RUN_S:
        why = f"one run took {first_run_s:.1f} s"
    else:
        return default, ""
    return 0, (f"note: interval skipped ({why}: its {default} re-runs would cost {default}x as long); "
               f"ask for it with --samples {default}")


RERUN_NOTE_AFTER_S = 2.0  # re-runs expected to take longer than this are announced (`rerun_note`)


def rerun_note(samples: int, first_run_s: float) -> str:
    """A note for stderr before the interval's re-runs when they will take a while: with nothing printed, a command
    whose answer took a second sat silent for another fifteen. `first_run_s` is the first run's measured time.

    The note gives an estimate and what it is, `samples` x the first run, not a bound: it said "at least 3 s" and
    the re-runs took 2.0 s. One timing on a shared machine moves by a third from run to run (the same serve run
    took 0.33 s and 0.50 s, its re-runs 0.37 s and 0.43 s each), so it bounds nothing from below, and rounding
    2.7 s up to "3" overshot further. It can fall short too: each re-run also copies and perturbs the topology,
    which a trial found doubled the estimate's 37 s on 512 GPUs; the note says so."""
    expected = samples * first_run_s
    if expected < RERUN_NOTE_AFTER_S:
        return ""
    return (f"note: {samples} perturbed re-runs for the 90% intervals, about {_seconds(expected)} s ({samples} x the "
            f"first run's {first_run_s:.2g} s; more on a large cluster, where each also copies and perturbs the "
            f"topology; --samples 0 skips them)")


def _seconds(t: float) -> str:
    """A duration of at least a second or two as people say it: '2.7', '14'."""
    return f"{t:.1f}" if t < 10 else f"{t:.0f}"


def add_output_args(p: argparse.ArgumentParser, default: int, run: str) -> None:
    """`--samples`, `--perfetto` and `--force`, spelt and explained the same in `sync` and `serve`."""
    p.add_argument("--samples", type=sample_count, metavar="N",
                   help=f"perturbed re-runs for the 90%% intervals, 0 for none (default: {default}, skipped "
                        f"with a note above {AUTO_SAMPLES_MAX_GPUS} GPUs or when one {run} takes over 1 s)")
    p.add_argument("--perfetto", metavar="PATH", help=f"write a Perfetto trace of the {run}")
    p.add_argument("--force", action="store_true", help="replace the --perfetto file if it exists")
