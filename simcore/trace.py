"""Chrome / Perfetto trace export (the JSON trace-event format that ui.perfetto.dev opens).

Layout: one process per link direction, shared cap or engine queue, holding the transfers that used it as
slices; transfers that overlap in time go to separate lanes (threads) of that process, because trace-event
slices on one thread must nest. Compute tasks and delays get a process per GPU. Each resource also carries a
counter track of its load in GB/s, so contention is visible at a glance.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from fabricsim.hwmodels.fileio import atomic_write_text


class Traced(Protocol):
    """What a trace is drawn from: `records.Result` has these. Typed here as a Protocol so the trace writer
    needs nothing of the records module, which calls it (`Result.write_trace`)."""

    records: list[Any]  # records.Record: id, kind, src, dst, bytes, route, engine, tag, start/begin/finish_s, latency_s
    load: dict[str, list[tuple[float, float]]]
    topology: str
    calibration_id: str | None
    makespan_s: float


_US = 1e6


def _lanes(records: list[Any]) -> list[tuple[Any, int]]:
    """Greedy interval partitioning: the first lane whose last slice has ended."""
    ends: list[float] = []
    out = []
    for r in sorted(records, key=lambda r: (r.moving_from_s, r.id)):
        for lane, end in enumerate(ends):
            if end <= r.moving_from_s:
                ends[lane] = r.finish_s
                break
        else:
            lane = len(ends)
            ends.append(r.finish_s)
        out.append((r, lane))
    return out


def trace_events(result: Traced) -> list[dict[str, Any]]:
    tracks: dict[str, list[Any]] = {}
    for r in result.records:
        if r.kind == "transfer":
            hops = [f"{a}->{b}" for a, b in zip(r.route, r.route[1:], strict=False)] or [f"{r.src} (local copy)"]
            if r.engine:
                hops.append(f"engine {r.engine}")
            for h in hops:
                tracks.setdefault(h, []).append(r)
        else:
            tracks.setdefault(f"{r.kind}s on {r.src or 'host'}", []).append(r)
    events: list[dict[str, Any]] = []
    pids = {name: i + 1 for i, name in enumerate(sorted(tracks))}
    for name, recs in sorted(tracks.items()):
        pid = pids[name]
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
        for r, lane in _lanes(recs):
            shown = r.moving_from_s
            events.append({
                "ph": "X", "name": r.id, "cat": r.kind, "pid": pid, "tid": lane,
                "ts": shown * _US, "dur": max(0.0, r.finish_s - shown) * _US,
                "args": {"src": r.src, "dst": r.dst, "bytes": r.bytes, "class": r.path_class,
                         "released_us": r.start_s * _US, "began_us": r.begin_s * _US, "tag": r.tag},
            })
    cpid = len(pids) + 1
    events.append({"ph": "M", "name": "process_name", "pid": cpid, "args": {"name": "load (GB/s)"}})
    for res, series in sorted(result.load.items()):
        for t, v in series:
            events.append({"ph": "C", "name": res, "pid": cpid, "ts": t * _US, "args": {"GBps": v / 1e9}})
    return events


def write_perfetto(result: Traced, path: str | os.PathLike) -> None:
    """Write the trace atomically (temp file + rename)."""
    doc = {"traceEvents": trace_events(result), "displayTimeUnit": "ns",
           "otherData": {"topology": result.topology, "calibration": result.calibration_id or "none",
                         "makespan_s": result.makespan_s}}
    atomic_write_text(path, json.dumps(doc))
