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


def print_metrics(metrics: Mapping[str, tuple[float, str]]) -> None:
    """An aligned `name value unit` table."""
    width = max((len(k) for k in metrics), default=0)
    for k, (v, unit) in metrics.items():
        print(f"  {k:<{width}} {v:>14.6g} {unit}")
