"""Printing a workload's `{metric: (value, unit)}` for people or programs: one format for `sync` and `serve`."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any


def metric_values(metrics: Mapping[str, tuple[float, str]]) -> dict[str, float]:
    """The JSON form: metric -> value (units are in the docs and the human table)."""
    return {k: v for k, (v, _unit) in metrics.items()}


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


def interval_values(intervals: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The JSON form of metric intervals: metric -> {lo, hi, level}."""
    return {k: {"lo": iv.lo, "hi": iv.hi, "level": iv.level} for k, iv in intervals.items()}
