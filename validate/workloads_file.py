"""The workload measurement file (`workloads.json`): one end-to-end time per case, with the machine.

    {"format": "fabricsim-workload-measurements", "format_version": 1, "created_at", "suite": "workloads",
     "machine": {"kind", "gpu_model", "gpus", ...facts}, "settings": {...},
     "cases": [{"id", "kind", "mech", "split", "model", "params", "gpus",
                "measured": {"time_s", "reps", "times_s", ...mechanism facts}}],
     "skipped": [{"id", "reason"}]}

Reading checks what the fit and the report rely on and names the first thing that is wrong (one line).
Imports neither torch nor simpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fabricsim.hwmodels.fileio import read_text

from .errors import MeasurementError
from .measurements import check_header, checked_cases
from .workload_cases import WorkloadCase

FORMAT = "fabricsim-workload-measurements"
FORMAT_VERSION = 1
FILE_NAME = "workloads.json"


class WorkloadMeasurements:
    """A loaded, checked workload document."""

    def __init__(self, doc: dict[str, Any], source: str) -> None:
        self.doc = doc
        self.source = source
        self.cases = [WorkloadCase.from_dict(c) for c in doc["cases"]]
        self.measured = {c["id"]: c["measured"] for c in doc["cases"]}

    @property
    def machine(self) -> dict[str, Any]:
        return self.doc["machine"]


def _fail(where: str, what: str) -> MeasurementError:
    return MeasurementError(f"{where}: {what}")


def check_workload_document(doc: Any, source: str) -> WorkloadMeasurements:
    check_header(doc, source, FORMAT, FORMAT_VERSION, "workload measurement")
    for where, c in checked_cases(doc, source, ("id", "kind", "mech", "split", "measured")):
        m = c["measured"]
        t = m.get("time_s") if isinstance(m, dict) else None
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise _fail(f"{where}.measured.time_s", f"expected a positive number, got {t!r}")
    return WorkloadMeasurements(doc, source)


def is_workload_file(path: str | Path) -> bool:
    """True for a workloads.json, or a folder holding one (what `report` dispatches on)."""
    p = Path(path)
    return (p / FILE_NAME).is_file() if p.is_dir() else p.name == FILE_NAME


def load_workloads(path: str | Path) -> WorkloadMeasurements:
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    text = read_text(path, MeasurementError, "workload measurements")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeasurementError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    return check_workload_document(doc, str(path))
