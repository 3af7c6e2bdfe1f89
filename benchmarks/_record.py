"""What every CPU benchmark here records beside its numbers, and how it writes them (atomically, as JSON)."""

from __future__ import annotations

import gc
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fabricsim.hwmodels.fileio import atomic_write_text


def stamp(benchmark: str) -> dict:
    """The fields every result file starts with: which benchmark, when (UTC), on which machine, and how busy it was
    (the 2-core dev VM is shared; made when the results are, at the end of the run)."""
    return {"benchmark": benchmark, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_facts(), "load_average_1m_at_end": os.getloadavg()[0]}


def best_wall(repeat: int, prepare: Callable[[], Callable[[], object]]) -> float:
    """The least wall time of `repeat` tries, each made by `prepare()` (untimed), which returns the work to time;
    the collector is off while timing (its pauses would land in whichever try they fall on)."""
    best = float("inf")
    for _ in range(repeat):
        work = prepare()
        gc.disable()
        try:
            t0 = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


def machine_facts() -> dict:
    """Host, CPU model, cores, Python and platform: enough to tell which machine a number came from."""
    return {"host": socket.gethostname(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "python": sys.version.split()[0], "platform": platform.platform()}


def solver_counts(sim) -> dict:
    """What a simulation's solves did (counters in the core's ctr array): incremental attempts, their rounds,
    fallbacks, and route classes re-rated by the attempts that held; the solves of a whole component and the
    classes they re-rated (every solve in FULL mode; before 2026-12-07 also each fallback or skipped attempt);
    the solves above the floor (each fallback or skipped attempt since then; see `simcore._fluidcore`) and the
    classes they re-rated; and the classes the solves changed (a new rate, or members joined), the work no exact
    solver avoids (recorded since 2026-12-07 02:00)."""
    from fabricsim.simcore import _fluidlayout as L

    ctr = sim.net._ctr
    return {"incremental_solves": int(ctr[L.N_SOLVES]), "rounds": int(ctr[L.N_ROUNDS]),
            "fallbacks": int(ctr[L.N_FALLBACKS]), "classes_rerated": int(ctr[L.N_REGION]),
            "whole_solves": int(ctr[L.N_WHOLE]), "whole_classes": int(ctr[L.N_WHOLE_CLS]),
            "floor_solves": int(ctr[L.N_FLOOR]), "floor_classes": int(ctr[L.N_FLOOR_CLS]),
            "classes_changed": int(ctr[L.N_CHANGED])}


def write_result(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
