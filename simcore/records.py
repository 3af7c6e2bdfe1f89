"""What a simulation leaves behind: one record per transfer/task, resource load over time, and views of it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Record:
    """One transfer, compute task or software delay.

    start_s: when it was released (start time reached and every `after` dependency finished);
    begin_s: when it got its engine (== start_s unless an engine queue made it wait);
    finish_s: when its last byte landed (or the task ended);
    latency_s: a transfer's time from begin_s to its first byte moving: the path latency plus any fixed cost and
    software setup paid before the copy (0 for tasks and delays). A trace draws a copy on its links from then.
    """

    id: str
    kind: str  # transfer | task | delay
    src: str
    dst: str
    bytes: float
    start_s: float
    begin_s: float = float("nan")
    finish_s: float = float("nan")
    path_class: str = ""
    route: tuple[str, ...] = ()
    engine: str | None = None
    tag: str | None = None
    flops: float = 0.0
    latency_s: float = 0.0


@dataclass
class Result:
    """The outcome of `Simulation.run()`."""

    topology: str
    calibration_id: str | None
    records: list[Record]
    capacity: dict[str, float]
    load: dict[str, list[tuple[float, float]]]  # resource -> [(time, bytes/s drawn)] piecewise constant
    memory_peaks: dict[str, int] = field(default_factory=dict)
    events: int = 0

    @property
    def makespan_s(self) -> float:
        return max((r.finish_s for r in self.records), default=0.0)

    @property
    def transfers(self) -> list[Record]:
        return [r for r in self.records if r.kind == "transfer"]

    @property
    def tasks(self) -> list[Record]:
        return [r for r in self.records if r.kind != "transfer"]

    def __getitem__(self, record_id: str) -> Record:
        for r in self.records:
            if r.id == record_id:
                return r
        raise KeyError(record_id)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON contract of `fabricsim simulate --json` (DESIGN.md), plus, only when the scenario has
        compute tasks, a `tasks` list of {id, gpu, flops, bytes, start_s, finish_s} (a documented addition)."""
        out: dict[str, Any] = {
            "makespan_s": self.makespan_s,
            "transfers": [
                {"id": r.id, "src": r.src, "dst": r.dst, "bytes": int(r.bytes), "start_s": r.start_s,
                 "finish_s": r.finish_s}
                for r in self.transfers
            ],
        }
        tasks = [r for r in self.records if r.kind == "task"]
        if tasks:
            out["tasks"] = [{"id": r.id, "gpu": r.src, "flops": r.flops, "bytes": int(r.bytes), "start_s": r.start_s,
                             "finish_s": r.finish_s} for r in tasks]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per transfer/task with duration and average rate."""
        rows = []
        for r in self.records:
            d = asdict(r)
            d["route"] = " > ".join(r.route)
            d["duration_s"] = r.finish_s - r.start_s
            d["avg_GBps"] = r.bytes / (r.finish_s - r.begin_s) / 1e9 if r.finish_s > r.begin_s and r.bytes else 0.0
            rows.append(d)
        return pd.DataFrame(rows)

    def utilisation(self) -> pd.DataFrame:
        """Per-resource load over time: columns resource, t_s, load_Bps, capacity_Bps, utilisation."""
        rows = [(res, t, v, self.capacity[res], v / self.capacity[res])
                for res, series in self.load.items() for t, v in series]
        return pd.DataFrame(rows, columns=["resource", "t_s", "load_Bps", "capacity_Bps", "utilisation"])

    def bytes_by_link_class(self) -> dict[str, float]:
        """Total bytes per path class (h2d, p2p-nvlink, rdma, ...) over all transfers."""
        out: dict[str, float] = {}
        for r in self.transfers:
            out[r.path_class] = out.get(r.path_class, 0.0) + r.bytes
        return out

    def mean_utilisation(self) -> dict[str, float]:
        """Time-averaged utilisation of each resource over the makespan."""
        end = self.makespan_s
        out: dict[str, float] = {}
        for res, series in self.load.items():
            area = 0.0
            for (t0, v), (t1, _) in zip(series, [*series[1:], (end, 0.0)], strict=True):
                area += v * max(0.0, min(t1, end) - t0)
            out[res] = area / end / self.capacity[res] if end > 0 else 0.0
        return out

    def write_trace(self, path: str) -> None:
        from .trace import write_perfetto

        write_perfetto(self, path)
