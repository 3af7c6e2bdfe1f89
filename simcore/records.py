"""What a simulation leaves behind: one record per transfer/task, resource load over time, and views of it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

from .errors import ScenarioError

if TYPE_CHECKING:  # pandas (and pyarrow under it) take ~0.2 s to import; a sync run from the CLI needs neither
    import pandas as pd


class UnknownIdError(ScenarioError, KeyError):
    """An id that names no item (`Result[id]`, `Simulation.rate_segments`): a `ScenarioError`, so one line that
    names the id and what exists (exit 2 in the CLI), and a `KeyError`, as a lookup by key raised before, so
    `except KeyError` still catches it. Shown as its message, not as a KeyError's quoted repr."""

    __str__ = ScenarioError.__str__


def unknown_id(problem: str, ids: Sequence[str]) -> UnknownIdError:
    """The error for an id that is not among `ids`: `problem` (which names it), then what exists, compactly (the
    first few and how many in all: a large run has 10^6)."""
    shown = ", ".join(ids[:5]) + (f", ... ({len(ids):,} in all)" if len(ids) > 5 else "")
    return UnknownIdError(f"{problem} (ids: {shown or 'none'})")


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

    @property
    def moving_from_s(self) -> float:
        """When its first byte moved (after any engine-queue wait, its latency and fixed cost): where a trace draws
        it on its links from, and where its rate while moving is measured from (a 1 GB copy behind a 0.25 s fixed
        cost moved at 52.8 GB/s, not the 3.7 that counting the fixed cost shows). Tasks and delays: begin_s."""
        return min(self.begin_s + self.latency_s, self.finish_s)

    @property
    def moving_GBps(self) -> float:
        """Its bytes over its time moving (`moving_from_s` to finish_s), in GB/s; 0 for nothing moved."""
        busy = self.finish_s - self.moving_from_s
        return self.bytes / busy / 1e9 if busy > 0 and self.bytes else 0.0


class RecordSource(Protocol):
    """What `LazyRecords` makes its records from (`lowering.RecordMaker`)."""

    def upto(self, n: int) -> list[Record]: ...  # the first n records, made in order (a shared list)
    def finish_times(self, n: int) -> list[float]: ...
    def bytes_by_class(self, n: int) -> dict[str, float]: ...  # transfers' bytes per path class, in item order


class LazyRecords(Sequence[Record]):
    """The records of a run on the compiled loop, a read-only sequence made when first looked at.

    Why: making a `Record` costs ~0.8 us, as much as the compiled loop spends on a flow event, and a large run
    (a 1,024-GPU host-staged sync: 10^6 items) is often asked only for its makespan, its flow events and its
    bytes per path class, which come from the run's arrays without records (`makespan_s`,
    `bytes_by_link_class`). Anything else (iterating, indexing, `len`) makes them all once, in order, as the
    same objects the items' events carry."""

    def __init__(self, source: RecordSource, n: int) -> None:
        self._source = source
        self._n = n
        self._list: list[Record] | None = None

    def _all(self) -> list[Record]:
        if self._list is None:
            self._list = self._source.upto(self._n)[:self._n]
        return self._list

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...
    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        return self._all()[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyRecords):
            other = other._all()
        return self._all() == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a list's equality, so unhashable as a list is

    def __repr__(self) -> str:
        return repr(self._all())

    def finish_times(self) -> list[float]:
        return self._source.finish_times(self._n)

    def bytes_by_class(self) -> dict[str, float]:
        return self._source.bytes_by_class(self._n)


@dataclass
class Result:
    """The outcome of `Simulation.run()`."""

    topology: str
    calibration_id: str | None
    records: Sequence[Record]  # a list, or `LazyRecords` after a compiled run
    capacity: dict[str, float]
    load: dict[str, list[tuple[float, float]]]  # resource -> [(time, bytes/s drawn)] piecewise constant
    memory_peaks: dict[str, int] = field(default_factory=dict)
    events: int = 0

    @property
    def makespan_s(self) -> float:
        """When the last item finished (0 for none): the run's length, from t = 0. A compiled run's comes from its
        finish times without making the records."""
        if isinstance(self.records, LazyRecords):
            return max(self.records.finish_times(), default=0.0)
        return max((r.finish_s for r in self.records), default=0.0)

    @property
    def transfers(self) -> list[Record]:
        """The transfers' records, in declaration order (what `to_dict` lists)."""
        return [r for r in self.records if r.kind == "transfer"]

    @property
    def tasks(self) -> list[Record]:
        """The records of everything that is not a transfer (compute tasks and software delays), in declaration
        order."""
        return [r for r in self.records if r.kind != "transfer"]

    def __getitem__(self, record_id: str) -> Record:
        """The record of item `record_id` (a linear search: for many lookups build a dict from `records`). An id it
        lacks raises `UnknownIdError` (a `KeyError`) naming the id and the ids there are."""
        for r in self.records:
            if r.id == record_id:
                return r
        raise unknown_id(f"no record '{record_id}' in this result", [r.id for r in self.records])

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
        """`to_dict` as indented JSON: the text `fabricsim simulate --json` prints."""
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
        import pandas as pd

        return pd.DataFrame(rows)

    def utilisation(self) -> pd.DataFrame:
        """Per-resource load over time: columns resource, t_s, load_Bps, capacity_Bps, utilisation."""
        rows = [(res, t, v, self.capacity[res], v / self.capacity[res])
                for res, series in self.load.items() for t, v in series]
        import pandas as pd

        return pd.DataFrame(rows, columns=["resource", "t_s", "load_Bps", "capacity_Bps", "utilisation"])

    def bytes_by_link_class(self) -> dict[str, float]:
        """Total bytes per path class (h2d, p2p-nvlink, rdma, ...) over all transfers."""
        if isinstance(self.records, LazyRecords):
            return self.records.bytes_by_class()
        out: dict[str, float] = {}
        for r in self.transfers:  # (summed in item order, as `bytes_by_class` sums them)
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
        """Write a Perfetto / chrome://tracing JSON trace of the run to `path` (`simcore.trace`), to see which copy
        waited on which link."""
        from .trace import write_perfetto

        write_perfetto(self, path)
