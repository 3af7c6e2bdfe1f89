"""The sweep runner: every point of a study, in parallel, into the results store, surviving interruption.

Backends:

- ``local`` (default): a process pool on this machine (``workers`` processes; ``workers=1`` runs in this
  process, which is also how a notebook runs a study defined inline);
- ``ray``: Ray tasks on the cluster at ``address``, or on a local Ray started (and stopped) for the sweep.

Both send the same chunks of points to the same function and turn outcomes into rows in this process, so
the rows are identical for the same points (only ``run_id`` and ``created_at`` differ).

Guarantees, and how:

- *resume*: points whose rows are already in the store (same study, same calibration) are skipped;
- *interruption loses at most the points in flight*: finished points are flushed to a new part file at
  least every ``flush_interval_s`` seconds or ``flush_points`` points, each written atomically;
- *a failing point does not stop the others*: its exception becomes an error row;
- *no duplicates*: a point is written once per run, and resume never re-runs a written point.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import math
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.fileio import make_output_folder, refuse_overwrite
from fabricsim.simcore.fluid import COMPILE_NOTICE_S
from fabricsim.simcore.lowering import load_loop

from .store import ERROR_METRIC, ResultsStore, make_row, new_run_id, versions_json
from .study import Point, PointContext, Study, load_study, load_study_source

BACKENDS = ("local", "ray")
_ENGINE_PROGRESS = "FABRICSIM_PROGRESS"  # simcore.progress reads it per run
RAY_CONNECT_TIMEOUT_S = 3.0


class SweepError(FabricsimError):
    """A sweep cannot run as asked: unknown backend, unreachable Ray cluster, bad point id, ..."""


@dataclass
class PointOutcome:
    """What one point produced: metrics or an error, and the time spent inside the point function."""

    point_id: str
    params: Point
    metrics: dict[str, tuple[float, str]] | None
    error: str | None
    elapsed_s: float
    cpu_s: float = 0.0  # CPU time of the worker inside the point function
    intervals: dict[str, tuple[float, float, float]] | None = None  # (lo, hi, level) of metrics that have one
    reason: str | None = None  # why the point has no result for some metrics (an infeasible configuration)


@dataclass
class SweepReport:
    """Counts and timings of one sweep (what the CLI prints and the benchmark records)."""

    study: str
    run_id: str
    backend: str
    workers: int
    total: int  # points in the grid
    skipped: int  # already in the store (resume)
    skipped_failed: int = 0  # of those, points whose stored result is a failure (rerun by retry_failed)
    ran: int = 0
    failed: int = 0
    infeasible: int = 0  # ran, with a reason for having no result (an infeasible configuration)
    wall_s: float = 0.0
    point_s: float = 0.0  # summed time inside point functions
    point_cpu_s: float = 0.0  # summed CPU time inside point functions
    compile_s: float = 0.0  # compiling the engine before the first point (a machine's first run), not in wall_s
    files: list[Path] = field(default_factory=list)

    @property
    def points_per_s(self) -> float:
        return self.ran / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def overhead_per_point_s(self) -> float:
        """Runner cost per point, simulation excluded: (wall × workers − Σ point time) / points."""
        if not self.ran:
            return math.nan
        return max(0.0, self.wall_s * self.workers - self.point_s) / self.ran


# ------------------------------------------------------------------------------------ evaluating points


def evaluate_point(study: Study, pid: str, params: Point, trace_path: Path | None = None, *,
                   engine_progress: bool = False) -> PointOutcome:
    """Run one point; any exception becomes the outcome's error (one line).

    The engine's own progress line for long simulations is off inside a sweep (`engine_progress`): the sweep
    draws one bar, and lines from several workers would scramble it."""
    ctx = PointContext(study=study.name, point_id=pid, calibration=study.calibration, trace_path=trace_path)
    t0, c0 = time.perf_counter(), time.process_time()
    before = os.environ.get(_ENGINE_PROGRESS)
    if not engine_progress:
        os.environ[_ENGINE_PROGRESS] = "0"
    try:
        metrics, intervals, reason = study.result(params, ctx)
        error = None
    except Exception as exc:  # noqa: BLE001 - a point's failure is data, not a crash of the sweep
        metrics, intervals, reason = None, None, None
        text = " ".join(str(exc).split()) or "(no message)"
        error = f"{type(exc).__name__}: {text}"[:1000]
    finally:
        if before is None:
            os.environ.pop(_ENGINE_PROGRESS, None)
        else:
            os.environ[_ENGINE_PROGRESS] = before
    return PointOutcome(pid, params, metrics, error, time.perf_counter() - t0, time.process_time() - c0, intervals,
                        reason)


# Worker-side state: the study each worker process runs (set once per process by the pool initializer).
_WORKER_STUDY: Study | None = None
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent_pid: int, lifeline: tuple[int, int] | None) -> None:
    """Make this worker end when the sweep's driver ends, whatever ends it (even SIGKILL, which runs no
    cleanup): an orphaned worker would otherwise wait on its task queue forever, holding memory and the
    terminal's pipes (`fabricsim sweep ... | cat` would never return).

    Two independent means, so that either suffices: on Linux the kernel sends SIGKILL when the parent dies
    (PR_SET_PDEATHSIG); everywhere, a thread blocks reading a pipe whose only write end the driver holds,
    and exits the process at end-of-file, which the kernel delivers when the driver's last copy closes."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the pipe below still holds
    if lifeline is not None:
        read_fd, write_fd = lifeline
        os.close(write_fd)  # this worker's inherited copy of the write end would keep the pipe open forever

        def watch() -> None:
            while os.read(read_fd, 1):
                pass
            os._exit(1)

        threading.Thread(target=watch, name="fabricsim-lifeline", daemon=True).start()
    if os.getppid() != parent_pid:  # the driver died before the means above were in place
        os._exit(1)


def _init_worker(study_or_source: Study | tuple[str, str], parent_pid: int | None = None,
                 lifeline: tuple[int, int] | None = None) -> None:
    global _WORKER_STUDY
    if parent_pid is not None:
        _die_with_parent(parent_pid, lifeline)
    # Ctrl-C goes to the whole process group; the driver decides what to do, workers just finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The CLI turns SIGTERM into KeyboardInterrupt in the driver; forked workers must not inherit that.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if isinstance(study_or_source, Study):
        _WORKER_STUDY = study_or_source
    else:
        path, source = study_or_source
        _WORKER_STUDY = load_study_source(source, path)


def _run_chunk_in_worker(chunk: Sequence[tuple[str, Point]]) -> list[PointOutcome]:
    assert _WORKER_STUDY is not None, "worker not initialised"
    return [evaluate_point(_WORKER_STUDY, pid, params) for pid, params in chunk]


def _run_chunk_from_source(path: str, source: str, chunk: Sequence[tuple[str, Point]]) -> list[PointOutcome]:
    """Ray task body: the study travels as source text, so remote workers need only fabricsim installed."""
    study = load_study_source(source, path)
    return [evaluate_point(study, pid, params) for pid, params in chunk]


# ------------------------------------------------------------------------------------ progress


def progress_bar(total: int, label: str, stream: TextIO | None = None, enabled: bool = True) -> tqdm:
    """The sweep's progress on stderr (tqdm): done/total, rate, elapsed, ETA and, once any point failed,
    `failed N`. Redrawn in place on a terminal; on a log file (CI) one update every few seconds."""
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(total=total, desc=label, unit="pt", file=stream, disable=not (enabled and total > 0),
                mininterval=0.1 if tty else 5.0, ascii=" #", dynamic_ncols=tty,
                bar_format="{desc} [{bar:24}] {n_fmt}/{total_fmt} {rate_fmt} elapsed {elapsed} ETA {remaining}"
                           "{postfix}")


# ------------------------------------------------------------------------------------ writing rows


class _Flusher:
    """Buffers finished points and publishes them as part files in small batches."""

    def __init__(self, study: Study, store: ResultsStore, run_id: str, flush_points: int,
                 flush_interval_s: float) -> None:
        self.study = study
        self.store = store
        self.run_id = run_id
        self.flush_points = flush_points
        self.flush_interval_s = flush_interval_s
        self.versions = versions_json()
        self.calibration_id = study.calibration_id
        self.pending: list[dict[str, Any]] = []
        self.pending_points = 0
        self.part = 0
        self.last_flush = time.monotonic()
        self.files: list[Path] = []

    def add(self, outcome: PointOutcome) -> None:
        now = datetime.now(UTC)
        common = dict(study=self.study.name, run_id=self.run_id, point_id=outcome.point_id,
                      params=outcome.params, source="sim", calibration_id=self.calibration_id,
                      topology=self.study.topology_of(outcome.params),
                      versions=self.versions, created_at=now)
        if outcome.error is not None:
            self.pending.append(make_row(**common, metric=ERROR_METRIC, value=math.nan, error=outcome.error))
        else:
            assert outcome.metrics is not None
            bands = outcome.intervals or {}
            for metric, (value, unit) in outcome.metrics.items():
                self.pending.append(make_row(**common, metric=metric, value=value, unit=unit,
                                             interval=bands.get(metric), reason=outcome.reason))
        self.pending_points += 1

    def maybe_flush(self) -> None:
        if self.pending_points >= self.flush_points or (
            self.pending and time.monotonic() - self.last_flush >= self.flush_interval_s
        ):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.part += 1
            path = self.store.write(self.pending, study=self.study.name, run_id=self.run_id, part=self.part)
            self.files.append(path)
            self.pending = []
            self.pending_points = 0
        self.last_flush = time.monotonic()

    def finish(self) -> None:
        self.flush()
        if self.part:
            final = self.store.compact_run(self.study.name, self.run_id)
            self.files = [final] if final is not None else []


# ------------------------------------------------------------------------------------ backends


def _chunks(points: Sequence[tuple[str, Point]], size: int) -> Iterator[list[tuple[str, Point]]]:
    for i in range(0, len(points), size):
        yield list(points[i : i + size])


def _auto_chunk(n_points: int, workers: int) -> int:
    # Big enough to amortise inter-process messaging, small enough that a kill loses little and
    # the pool stays balanced at the tail.
    return max(1, min(16, n_points // (workers * 8)))


Batches = Generator[list[PointOutcome], None, None]


def _iter_serial(study: Study, chunks: list[list[tuple[str, Point]]]) -> Batches:
    for chunk in chunks:
        yield [evaluate_point(study, pid, params) for pid, params in chunk]


class _ChunkSizer:
    """Sizes the next chunk of points so that one chunk takes about `target_s` of worker time.

    Cheap points (ms) travel 16 at a time, amortising inter-process messaging; expensive ones (100s of ms)
    one at a time, so workers finish together and a kill loses little. The first chunks are single points
    while the point cost is still unknown.
    """

    def __init__(self, fixed: int | None, target_s: float = 0.05, max_size: int = 16) -> None:
        self.fixed = fixed
        self.target_s = target_s
        self.max_size = max_size
        self.mean_s: float | None = None

    def observe(self, outcomes: Sequence[PointOutcome]) -> None:
        for o in outcomes:
            self.mean_s = o.elapsed_s if self.mean_s is None else 0.8 * self.mean_s + 0.2 * o.elapsed_s

    def next_size(self) -> int:
        if self.fixed:
            return self.fixed
        if self.mean_s is None:
            return 1
        return max(1, min(self.max_size, int(self.target_s / max(self.mean_s, 1e-6))))


def _iter_local(study: Study, points: Sequence[tuple[str, Point]], workers: int,
                chunk_size: int | None) -> Batches:
    methods = mp.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux"):
        # Fork: workers inherit the loaded study (even one defined in a notebook) and the compiled engine
        # (run_sweep loads it first: `load_engine`), so workers neither compile nor load it each, and start in ms.
        ctx = mp.get_context("fork")
        initarg: Study | tuple[str, str] = study
    else:
        if study.path is None:
            raise SweepError("this platform starts workers by spawning; save the study to a file first")
        ctx = mp.get_context("spawn")
        initarg = (str(study.path), Path(study.path).read_text())
    others = set(mp.active_children())  # the caller's own child processes, left alone below
    # The lifeline pipe's fds travel to forked workers by inheritance; spawned ones rely on the parent-death
    # signal alone (Linux spawns only when asked to).
    lifeline = os.pipe() if ctx.get_start_method() == "fork" else None
    try:
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(initarg, os.getpid(), lifeline))
    except BaseException:
        _close_lifeline(lifeline)
        raise
    sizer = _ChunkSizer(chunk_size)
    # A bounded window of chunks in flight (two per worker keeps every worker busy) rather than the whole
    # grid queued up front: chunk sizes can follow the measured point cost, and a kill loses little.
    pending: set[cf.Future] = set()
    nxt = 0
    finished = False
    try:
        while pending or nxt < len(points):
            while nxt < len(points) and len(pending) < 2 * workers:
                size = sizer.next_size()
                pending.add(pool.submit(_run_chunk_in_worker, list(points[nxt : nxt + size])))
                nxt += size
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                try:
                    outcomes = fut.result()
                except cf.process.BrokenProcessPool:
                    raise SweepError(
                        "a worker process died (crash or out of memory); finished points are saved — "
                        "rerun with --resume"
                    ) from None
                sizer.observe(outcomes)
                yield outcomes
        finished = True
    finally:
        if not finished:
            # Stopped early (Ctrl-C, kill, a dead worker): the points already yielded are with the driver, the
            # running chunks are dropped. Stop every worker now, including one forked by a submit that the
            # interrupt cut short: the pool never registered it, and the interpreter would wait for it at exit.
            for proc in set(mp.active_children()) - others:
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        _close_lifeline(lifeline)


def _close_lifeline(lifeline: tuple[int, int] | None) -> None:
    if lifeline is not None:
        for fd in lifeline:
            os.close(fd)


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail fast (seconds, not minutes) when a Ray address does not answer."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} must look like HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        msg = f"Ray cluster at {address} is unreachable ({reason}, waited {timeout_s:g}s)"
        raise SweepError(msg) from None


def _iter_ray(study: Study, chunks: list[list[tuple[str, Point]]], workers: int,
              address: str | None) -> Batches:
    if study.path is None:
        raise SweepError("the Ray backend needs a study file (studies/NAME.py), not an inline Study")
    if address:
        check_ray_address(address)
    try:
        import ray
    except ModuleNotFoundError:
        raise SweepError("the Ray backend needs ray: pip install 'fabricsim[ray]'") from None
    source = Path(study.path).read_text()
    started_here = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
            hint = ""
            if address and "RAY_AUTH_MODE" not in os.environ:
                hint = "; if the cluster uses token authentication, set RAY_AUTH_MODE=token"
            text = " ".join(str(exc).split())
            raise SweepError(f"could not start or join Ray ({type(exc).__name__}: {text}){hint}") from None
        started_here = True
    try:
        task = ray.remote(num_cpus=1)(_run_chunk_from_source)
        pending = [task.remote(str(study.path), source, c) for c in chunks]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        finally:
            for ref in pending:
                ray.cancel(ref)
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------ the runner


def load_engine() -> float:
    """Load the compiled engine in this process, the fluid core and the event loop alike (on a machine's first run
    it compiles them), and return the seconds it took. Called before the clock, the progress bar and the workers
    start: forked workers inherit it instead of each compiling the event loop (and each announcing it, across the
    progress bar), and the one-off cost is not charged to the first points or the ETA."""
    t0 = time.perf_counter()
    load_loop()  # its first run builds a FluidNetwork, which loads the fluid core first
    return time.perf_counter() - t0


def run_sweep(
    study: Study | str | Path,
    *,
    store: ResultsStore | str | Path | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    progress: bool = True,
    flush_points: int = 64,
    flush_interval_s: float = 1.0,
    chunk_size: int | None = None,
    stream: TextIO | None = None,
) -> SweepReport:
    """Run a study's points into the store and return what happened.

    `resume` skips points already stored (failed ones too, unless `retry_failed`); `limit` runs at most
    that many of the remaining points, in grid order.
    """
    if backend not in BACKENDS:
        raise SweepError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise SweepError("--address is for the Ray backend; add --backend ray")
    if isinstance(study, str | Path):
        study = load_study(study)
    if not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    store.check_writable()
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise SweepError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 0:
        raise SweepError(f"--limit must be >= 0, got {limit}")

    points = study.points()
    total = len(points)
    skipped = skipped_failed = 0
    if resume:
        done = store.done_points(study.name, study.calibration_id, include_failed=not retry_failed)
        points = [(pid, p) for pid, p in points if pid not in done]
        skipped = total - len(points)
        if not retry_failed and skipped:
            skipped_failed = len(done - store.done_points(study.name, study.calibration_id, include_failed=False))
    if limit is not None:
        points = points[:limit]

    compile_s = load_engine() if points and backend != "ray" else 0.0
    run_id = new_run_id()
    report = SweepReport(study=study.name, run_id=run_id, backend=backend, workers=workers, total=total,
                         skipped=skipped, skipped_failed=skipped_failed,
                         compile_s=compile_s if compile_s > COMPILE_NOTICE_S else 0.0)
    bar: tqdm | None = None  # drawn from the first finished batch on: a sweep that cannot start draws nothing
    flusher = _Flusher(study, store, run_id, flush_points, flush_interval_s)
    t0 = time.perf_counter()
    if points:
        size = chunk_size or _auto_chunk(len(points), workers)
        batches: Batches
        if backend == "ray":
            batches = _iter_ray(study, list(_chunks(points, size)), workers, address)
        elif workers == 1:
            batches = _iter_serial(study, list(_chunks(points, size)))
        else:
            batches = _iter_local(study, points, min(workers, len(points)), chunk_size)
        try:
            for outcomes in batches:
                for outcome in outcomes:
                    flusher.add(outcome)
                    report.ran += 1
                    report.failed += outcome.error is not None
                    report.infeasible += outcome.reason is not None
                    report.point_s += outcome.elapsed_s
                    report.point_cpu_s += outcome.cpu_s
                flusher.maybe_flush()
                if bar is None:
                    bar = progress_bar(len(points), study.name, stream=stream, enabled=progress)
                    if not bar.disable:  # rate and ETA count from the sweep's start, not from this batch
                        bar.start_t = bar.last_print_t = time.time() - (time.perf_counter() - t0)
                if report.failed:
                    bar.set_postfix_str(f"failed {report.failed}", refresh=False)
                bar.update(len(outcomes))
        except KeyboardInterrupt:
            raise SweepInterrupted(report) from None  # after the finally below has saved what finished
        finally:
            # Whatever stops the loop (Ctrl-C, a dead worker), finished points are kept.
            batches.close()
            flusher.finish()
            report.files = flusher.files
            report.wall_s = time.perf_counter() - t0
            if bar is not None:
                bar.close()
    report.wall_s = time.perf_counter() - t0
    return report


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, through the CLI) stopped a sweep; `report` counts the points that were saved."""

    def __init__(self, report: SweepReport) -> None:
        super().__init__()
        self.report = report


def find_point(study: Study, prefix: str) -> tuple[str, Point]:
    """The point whose id starts with `prefix` (ids are printed by `fabricsim results show`)."""
    matches = [(pid, p) for pid, p in study.points() if pid.startswith(prefix)]
    if not matches:
        raise SweepError(f"study {study.name!r} has no point with id {prefix!r} to simulate (ids come from "
                         "`fabricsim results show`, rows whose source is sim; measured rows have no point to trace)")
    if len(matches) > 1:
        raise SweepError(f"point id {prefix!r} is ambiguous in study {study.name!r} ({len(matches)} match)")
    return matches[0]


def trace_point(
    study: Study | str | Path, point: str, trace_dir: str | Path = "traces", *, force: bool = False
) -> tuple[Path, PointOutcome]:
    """Re-run one point in this process, asking its function to write a Perfetto trace; nothing is stored.

    An existing trace of the point is replaced only with `force` (`sweep --force`): a trace kept from an earlier
    calibration would otherwise be lost to a re-run. `trace_dir` is made if missing (`traces/` by default), but
    not the folders above it (`fileio.make_output_folder`)."""
    if isinstance(study, str | Path):
        study = load_study(study)
    pid, params = find_point(study, point)
    trace_dir = Path(trace_dir)
    path = trace_dir / f"{study.name}-{pid}.json"
    if trace_dir.is_dir():  # (else there is no trace to keep)
        refuse_overwrite(path, force, "trace", file=True)
    if not study.takes_context:
        raise SweepError(
            f"study {study.name!r}: its point function takes no context, so it cannot write traces"
        )
    make_output_folder(trace_dir, "traces")
    outcome = evaluate_point(study, pid, params, trace_path=path, engine_progress=True)
    if outcome.error is not None:
        raise SweepError(f"point {pid} failed: {outcome.error}")
    if not path.is_file():
        if outcome.reason:  # an infeasible configuration runs nothing to trace
            raise SweepError(f"point {pid} has no trace: {outcome.reason}")
        raise SweepError(f"study {study.name!r}: the point function did not write ctx.trace_path ({path})")
    return path, outcome

