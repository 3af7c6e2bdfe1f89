"""Sweep runner: backends agree, failures are data, resume after a real kill, bad input, CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fabricsim.cli import main
from fabricsim.harness.store import ResultsStore
from fabricsim.harness.study import Grid, Study, load_study
from fabricsim.harness.sweep import SweepError, check_ray_address, run_sweep, trace_point

TOY = '''
import json, time
from fabricsim.harness.study import Figure, Grid, Study

def run(p, ctx=None):
    if p.get("sleep"):
        time.sleep(p["sleep"])
    if p["x"] == 3 and p["k"] == "a":
        raise ValueError("three is\\nbad")
    if ctx is not None and ctx.trace_path is not None:
        ctx.trace_path.write_text(json.dumps({"traceEvents": []}))
    return {"y": (p["x"] * 2.0, "s"), "z": p["x"] ** 2}

STUDY = Study(
    name="toy",
    grid=Grid.product(x=list(range(__N__)), k=["a", "b"], sleep=[__SLEEP__]).when(
        lambda p: p["k"] == "b", extra=[1, 2]
    ),
    run=run,
    figures=[Figure("y", x="x", y="y", hue="k")],
)
'''


def toy_study(folder: Path, n: int = 12, sleep: float = 0.0) -> Path:
    path = folder / "toy.py"
    path.write_text(TOY.replace("__N__", str(n)).replace("__SLEEP__", repr(sleep)))
    return path


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows minus what legitimately differs between runs (run id, wall-clock time)."""
    out = df.drop(columns=["run_id", "created_at"]).sort_values(["point_id", "metric"])
    return out.reset_index(drop=True)


def test_local_pool_and_in_process_give_identical_rows(tmp_path: Path) -> None:
    study = toy_study(tmp_path)
    a, b = ResultsStore(tmp_path / "a"), ResultsStore(tmp_path / "b")
    ra = run_sweep(study, store=a, workers=1, progress=False)
    rb = run_sweep(study, store=b, workers=2, progress=False, chunk_size=2)
    assert ra.total == rb.total == 36 and ra.ran == rb.ran == 36
    pd.testing.assert_frame_equal(comparable(a.load("toy")), comparable(b.load("toy")))
    assert len(a.load("toy", include_failed=False)) == 2 * 35
    assert [p.name for p in rb.files] == [f"{rb.run_id}.parquet"]


def test_a_failing_point_is_recorded_and_the_others_run(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s")
    report = run_sweep(toy_study(tmp_path), store=store, workers=2, progress=False)
    assert report.failed == 1 and report.ran == 36
    df = store.load("toy")
    bad = df[df["error"].notna()]
    assert len(bad) == 1 and bad["metric"].iloc[0] == "error"
    assert bad["error"].iloc[0] == "ValueError: three is bad"  # one line
    assert df["point_id"].nunique() == 36


def test_resume_limit_and_retry_failed(tmp_path: Path) -> None:
    study, store = toy_study(tmp_path), ResultsStore(tmp_path / "s")
    first = run_sweep(study, store=store, workers=1, limit=10, progress=False)
    assert first.ran == 10 and first.skipped == 0
    second = run_sweep(study, store=store, workers=2, resume=True, progress=False)
    assert second.skipped == 10 and second.ran == 26
    third = run_sweep(study, store=store, workers=1, resume=True, progress=False)
    assert third.ran == 0 and third.files == []
    retry = run_sweep(study, store=store, workers=1, resume=True, retry_failed=True, progress=False)
    assert retry.ran == 1 and retry.failed == 1
    df = store.load("toy", include_failed=False)
    assert df["point_id"].nunique() == 35 and not df.duplicated(["point_id", "metric"]).any()


def test_rows_carry_the_schema(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s")
    run_sweep(toy_study(tmp_path), store=store, workers=1, progress=False)
    df = store.load("toy", include_failed=False)
    assert set(df["source"]) == {"sim"} and set(df["calibration_id"]) == {"uncalibrated"}
    assert set(df["unit"]) == {"s", ""} and {"x", "k", "sleep", "extra"} <= set(df.columns)
    assert json.loads(df["versions"].iloc[0])["python"]
    assert df[df["k"] == "a"]["extra"].isna().all()  # conditional axis absent


def _store_points(store_dir: Path) -> int:
    if not store_dir.exists():
        return 0
    return ResultsStore(store_dir.parent).load("toy", columns=["point_id"])["point_id"].nunique()


def test_killed_sweep_resumes_to_exactly_the_uninterrupted_rows(tmp_path: Path) -> None:
    study = toy_study(tmp_path, n=150, sleep=0.02)  # 450 points, ~5 s on 2 workers
    killed = tmp_path / "killed"
    env = {**os.environ, "FABRICSIM_STORE": str(killed)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabricsim.cli", "sweep", str(study), "--workers", "2", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((killed / "toy").glob("*.part-*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, no chance to clean up
        proc.wait()
    saved = _store_points(killed / "toy")
    assert 0 < saved < 450, "the sweep was not interrupted mid-run"

    resumed = run_sweep(study, store=killed, workers=2, resume=True, progress=False)
    assert resumed.skipped == saved and resumed.ran == 450 - saved
    clean = tmp_path / "clean"
    run_sweep(study, store=clean, workers=2, progress=False)
    pd.testing.assert_frame_equal(comparable(ResultsStore(killed).load("toy")),
                                  comparable(ResultsStore(clean).load("toy")))


def test_trace_point_writes_a_trace_and_stores_nothing(tmp_path: Path) -> None:
    study = load_study(toy_study(tmp_path))
    pid = study.points()[5][0]
    path, outcome = trace_point(study, pid[:6], tmp_path / "traces")
    assert path == tmp_path / "traces" / f"toy-{pid}.json" and json.loads(path.read_text()) == {"traceEvents": []}
    assert outcome.metrics is not None and "y" in outcome.metrics
    with pytest.raises(SweepError, match="no point with id"):
        trace_point(study, "zzzz", tmp_path)
    with pytest.raises(SweepError, match="ambiguous"):
        trace_point(study, "", tmp_path)


def test_example_fanout_runs_and_traces(tmp_path: Path) -> None:
    study = load_study("example_fanout")
    store = ResultsStore(tmp_path)
    report = run_sweep(study, store=store, workers=1, limit=12, progress=False)
    assert report.ran == 12 and report.failed == 0
    df = store.load("example_fanout")
    bw = df[df["metric"] == "per_gpu_GBps"]
    assert (bw["value"] > 0).all() and set(bw["unit"]) == {"GB/s"}
    assert df["calibration_id"].iloc[0].startswith("default-")
    path, _ = trace_point(study, df["point_id"].iloc[0], tmp_path / "traces")
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" and e.get("cat") == "transfer" for e in events)  # Perfetto slices


# ---------------------------------------------------------------------------------------------- bad input


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "body, match",
    [
        ("from fabricsim.harness.study import Study\n"
         "def f(p):\n    return {'a': 1}\nSTUDY = Study(name='s', run=f)\n", "grid"),
        ("from fabricsim.harness.study import Study, Grid\nSTUDY = Study(name='s', grid=Grid.product(a=[1]))\n", "run"),
        ("from fabricsim.harness.study import Study, Grid\n"
         "STUDY = Study(name='s', grid=Grid.product(a=[]), run=print)\n",
         "grid is empty"),
        ("pass\n", "defines no STUDY"),
    ],
)
def test_bad_study_files_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, body: str,
                                              match: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(body)
    code, out, err = _cli(capsys, "sweep", str(path), "--store", str(tmp_path / "s"))
    assert code == 2 and out == ""
    assert err.startswith("fabricsim: error:") and match in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_unknown_backend_and_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = str(toy_study(tmp_path))
    for args, match in ((["--backend", "dask"], "unknown backend 'dask'"), (["--workers", "0"], "--workers"),
                        (["--limit", "-1"], "--limit"), (["--address", "h:1"], "add --backend ray")):
        code, _, err = _cli(capsys, "sweep", study, "--store", str(tmp_path / "s"), *args)
        assert code == 2 and match in err and err.count("\n") == 1


def test_unreachable_ray_address_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, _, err = _cli(capsys, "sweep", str(toy_study(tmp_path)), "--backend", "ray", "--address",
                        f"127.0.0.1:{port}", "--store", str(tmp_path / "s"))
    assert code == 2 and "unreachable" in err and err.count("\n") == 1
    assert time.monotonic() - t0 < 60  # generous: the point is "not Ray's minutes of retries"
    with pytest.raises(SweepError, match="HOST:PORT"):
        check_ray_address("nonsense")


def test_unknown_trace_point_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _cli(capsys, "sweep", str(toy_study(tmp_path)), "--perfetto-point", "ffff0000")
    assert code == 2 and "no point with id" in err


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_sweep_results_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = str(toy_study(tmp_path))
    code, out, _ = _cli(capsys, "sweep", study, "--workers", "2")
    assert code == 1  # one point failed: the exit status says so
    assert "ran 36 points (1 failed)" in out and "results/toy" in out
    code, out, _ = _cli(capsys, "sweep", study, "--resume")
    assert code == 0 and "ran 0 points (36 already in the store)" in out

    code, out, _ = _cli(capsys, "results", "ls")
    assert code == 0 and "toy" in out and "36" in out
    code, out, err = _cli(capsys, "results", "show", "toy", "--metric", "y")
    assert code == 0 and "y [s]" in out and "1 failed point" in err
    assert len(out.strip().splitlines()) == 1 + 35 + 1  # the header, the 35 good points, "all rows: ..."
    code, out, _ = _cli(capsys, "results", "show", "toy", "--failed")
    assert "ValueError: three is bad" in out
    code, out, _ = _cli(capsys, "results", "show", "toy", "--csv")
    assert out.splitlines()[0].startswith("point_id,")
    code, _, err = _cli(capsys, "results", "show", "nope")
    assert code == 2 and "unknown study 'nope'" in err

    code, out, _ = _cli(capsys, "plot", study)
    assert code == 0
    assert (tmp_path / "plots" / "toy" / "y.png").stat().st_size > 0
    assert (tmp_path / "plots" / "toy" / "y.svg").read_text().lstrip().startswith("<?xml")
    (tmp_path / "plots" / "toy" / "y.png").write_bytes(b"kept")  # a second plot: refused, then --force replaces
    code, out, err = _cli(capsys, "plot", study)
    assert code == 2 and err.strip().endswith("y.png: the figure file exists; add --force to replace it")
    assert (tmp_path / "plots" / "toy" / "y.png").read_bytes() == b"kept"
    code, out, _ = _cli(capsys, "plot", study, "--force")
    assert code == 0 and (tmp_path / "plots" / "toy" / "y.png").read_bytes()[:4] == b"\x89PNG"

    pid = load_study(study).points()[0][0]
    code, out, _ = _cli(capsys, "sweep", study, "--perfetto-point", pid)
    assert code == 0 and (tmp_path / "traces" / f"toy-{pid}.json").exists() and "y = 0 s" in out


def test_concurrent_sweeps_into_one_store_keep_every_row(tmp_path: Path) -> None:
    study = toy_study(tmp_path, n=40, sleep=0.002)  # 120 points each
    env = {**os.environ, "FABRICSIM_STORE": str(tmp_path / "s")}
    procs = [subprocess.Popen([sys.executable, "-m", "fabricsim.cli", "sweep", str(study), "--workers", "1",
                               "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(3)]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode == 1, p.stderr.read().decode() if p.stderr else ""  # 1: the toy's failing point
    df = ResultsStore(tmp_path / "s").load("toy", strict=True)
    assert df["run_id"].nunique() == 3
    per_run = df.groupby("run_id")["point_id"].nunique()
    assert (per_run == 120).all() and len(df) == 3 * (119 * 2 + 1)


def test_inline_study_runs_on_the_pool(tmp_path: Path) -> None:
    # A study built in a notebook (lambdas, no file) still runs in parallel: workers are forked.
    from fabricsim.harness.study import Grid, Study

    study = Study(name="inline", grid=Grid.product(x=list(range(20))), run=lambda p: {"y": p["x"] + 0.5})
    report = run_sweep(study, store=tmp_path, workers=2, progress=False, chunk_size=3)
    assert report.ran == 20 and report.failed == 0
    df = ResultsStore(tmp_path).load("inline")
    assert sorted(df["value"]) == [x + 0.5 for x in range(20)]
    with pytest.raises(SweepError, match="needs a study file"):
        run_sweep(study, store=tmp_path / "r", backend="ray", progress=False)


def test_results_show_compare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fabricsim.harness.store import make_row

    store = ResultsStore(tmp_path)
    run_sweep(toy_study(tmp_path), store=store, workers=1, progress=False)
    hw = [make_row(study="toy", run_id="hw1", point_id="m", params={"x": 2, "k": "a", "sleep": 0.0},
                   metric="y", value=5.0, unit="s", source="hw", device="GPU")]
    store.write(hw, study="toy", run_id="hw1")
    code, out, _ = _cli(capsys, "results", "show", "toy", "--compare", "--csv", "--store", str(tmp_path))
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "predicted" in lines[0] and "rel_error" in lines[0]
    row = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert float(row["predicted"]) == 4.0 and float(row["measured"]) == 5.0
    assert float(row["rel_error"]) == pytest.approx(-0.2)


def test_sigterm_saves_finished_points_and_exits_130(tmp_path: Path) -> None:
    study = toy_study(tmp_path, n=150, sleep=0.02)
    store_dir = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabricsim.cli", "sweep", str(study), "--workers", "2", "--store", str(store_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not list((store_dir / "toy").glob("*.part-*.parquet")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.terminate()  # SIGTERM to the sweep only, as `kill PID` would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "finished points are saved" in err
    assert "--resume" in err  # says how to go on
    assert "pt/s" in err and "ETA" in err  # the progress line (plain text when not a terminal)
    files = list((store_dir / "toy").iterdir())
    assert len(files) == 1 and ".part-" not in files[0].name  # flushed and compacted
    assert 0 < ResultsStore(store_dir).load("toy")["point_id"].nunique() < 450


@pytest.mark.parametrize("delay_s", [0.3, 0.9, 1.5])
def test_ctrl_c_at_any_moment_exits_promptly_and_leaves_no_worker_behind(tmp_path: Path, delay_s: float) -> None:
    """SIGINT to the driver alone (as `timeout -s INT` sends it), early: while the models are imported and
    workers are being forked too. The delay counts from when the interpreter can have reached `fabricsim.cli`
    (timed here, so a loaded machine's slower start-up does not move the signal into Python's own start-up,
    where no program can turn it into a clean exit)."""
    study = toy_study(tmp_path, n=150, sleep=0.02)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import fabricsim.cli"], check=True, timeout=120)
    startup_s = time.monotonic() - t0
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabricsim.cli", "sweep", str(study), "--workers", "2", "--quiet", "--store",
         str(tmp_path / "s")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # SIGINT as a terminal gives it: a test run started in the background by a non-interactive shell has it
        # ignored, and the sweep would inherit that and just finish (the test would then check nothing)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(startup_s + delay_s)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        leftover = True
        for _ in range(100):  # the session's processes: the driver and any worker
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                leftover = False
                break
            time.sleep(0.05)
        if leftover:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not leftover, "worker processes outlived the sweep"
    if "results:" in out:  # it finished before the signal landed (a slow first start-up): 1, the toy's failed point
        assert proc.returncode == 1 and "interrupted" not in err, err
        return
    # -SIGINT: the interrupt was handled (the one line below is printed) but the process then ended by SIGINT, the
    # shell's usual status for Ctrl-C, instead of exit(130): 1 in 40 interrupted sweeps until 2026-12-07, a lost
    # interrupt delivered again after `main` had returned; 0 in 60 since `main` stops re-deliveries under a lock
    # (/tmp repro, not kept). Still accepted here: the race is closed by reasoning, not proven gone.
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, out, err)
    if proc.returncode != 0:
        assert "Traceback" not in err and "interrupted" in err


def test_progress_line_shows_rate_eta_and_failures(tmp_path: Path) -> None:
    import io

    buf = io.StringIO()
    run_sweep(toy_study(tmp_path), store=tmp_path / "s", workers=1, stream=buf)
    last = buf.getvalue().strip().replace("\r", "\n").splitlines()[-1]
    assert last.startswith("toy [" + "#" * 24 + "] 36/36") and "pt/s" in last and "failed 1" in last
    assert "ETA" in last


def test_chunk_sizer_follows_point_cost() -> None:
    from fabricsim.harness.sweep import PointOutcome, _ChunkSizer

    def outcomes(seconds: float, n: int = 20) -> list[PointOutcome]:
        return [PointOutcome("p", {}, {"m": (1.0, "")}, None, seconds)] * n

    sizer = _ChunkSizer(None)
    assert sizer.next_size() == 1  # cost unknown yet
    sizer.observe(outcomes(0.001))
    assert sizer.next_size() == 16  # cheap points travel in batches (capped)
    sizer.observe(outcomes(0.2, 40))
    assert sizer.next_size() == 1  # expensive points one by one
    sizer.observe(outcomes(0.01, 40))  # the running mean forgets old costs
    assert sizer.mean_s == pytest.approx(0.01, rel=1e-2) and sizer.next_size() in (4, 5)
    assert _ChunkSizer(3).next_size() == 3


def test_resume_says_how_many_skipped_points_are_stored_failures(tmp_path: Path, capsys) -> None:
    study = toy_study(tmp_path)
    store = str(tmp_path / "s")
    assert _cli(capsys, "sweep", str(study), "--workers", "1", "--quiet", "--store", store)[0] == 1  # one fails
    code, out, _ = _cli(capsys, "sweep", str(study), "--workers", "1", "--quiet", "--store", store, "--resume")
    assert code == 0
    assert "ran 0 points (36 already in the store); 1 of the stored points failed: --retry-failed reruns them" in out
    code, out, _ = _cli(capsys, "sweep", str(study), "--workers", "1", "--quiet", "--store", store, "--resume",
                        "--retry-failed")
    assert code == 1 and "ran 1 point (1 failed, 35 already in the store) " in out


def _children(pid: int) -> set[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_sweep_takes_its_workers_with_it(tmp_path: Path) -> None:
    """`kill -9` runs no cleanup in the driver: the workers must notice by themselves, and release the pipes
    they share with the terminal so that `fabricsim sweep ... | cat` ends."""
    study = toy_study(tmp_path, n=400, sleep=0.05)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabricsim.cli", "sweep", str(study), "--workers", "2", "--store", str(tmp_path / "s")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the sweep never started its workers"
        time.sleep(0.5)  # let them take work
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
        assert not survivors, f"workers {survivors} outlived a SIGKILLed sweep"
        proc.stdout.read()  # end of file: no process holds the pipe any more (would hang otherwise)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_interrupt_hint_keeps_the_options(tmp_path: Path) -> None:
    from fabricsim.harness.cli import _resume_command
    from fabricsim.harness.cli import argparse as _argparse

    args = _argparse.Namespace(study="weight_sync", store="my store", backend="local", address=None, workers=3,
                               retry_failed=False, quiet=True)
    assert _resume_command(args) == "fabricsim sweep weight_sync --store 'my store' --workers 3 --resume --quiet"


def test_retry_failed_without_resume_and_limit_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = str(toy_study(tmp_path))
    store = tmp_path / "s"
    code, out, err = _cli(capsys, "sweep", study, "--store", str(store), "--retry-failed")
    assert code == 2 and "--retry-failed" in err and "--resume" in err and not store.exists()
    code, out, err = _cli(capsys, "sweep", study, "--store", str(store), "--limit", "0")
    assert code == 0 and "ran 0 points" in out and "results:" not in out and not (store / "toy").exists()


def test_points_run_without_the_engines_own_progress_line(tmp_path: Path, monkeypatch) -> None:
    """A long point would otherwise draw simcore's progress line under the sweep's bar, from every worker."""
    seen = []
    study = Study(name="env", grid=Grid.product(x=[1]),
                  run=lambda p: seen.append(os.environ.get("FABRICSIM_PROGRESS")) or {"y": 1.0})
    monkeypatch.delenv("FABRICSIM_PROGRESS", raising=False)
    run_sweep(study, store=tmp_path, workers=1, progress=False)
    assert seen == ["0"] and "FABRICSIM_PROGRESS" not in os.environ  # and the caller's environment is restored


def test_sweep_lists_the_studies(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """`sweep --list`: one line per study name with its description, a user's ./studies ones marked with their file
    (one that does not load is listed with the reason, not an error)."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.py").write_text('"""Mine: one point."""\n' + TOY.replace("__N__", "1")
                                                  .replace("__SLEEP__", "0"))
    (tmp_path / "studies" / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "sweep", "--list")
    assert code == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert {"weight_sync", "cluster_scale", "kv_offload", "example_fanout", "mine", "broken"} <= set(lines)
    assert "what it costs generation" in lines["weight_sync"]  # the whole first sentence, though it takes two lines
    assert "Mine: one point.  [studies/mine.py]" in lines["mine"]  # no description: the docstring's first line
    assert "[" not in lines["kv_offload"]
    assert "does not load" in lines["broken"] and "boom" in lines["broken"]
    code, out, err = _cli(capsys, "sweep", "weight_sync", "--list")  # it listed and ran nothing, silently
    assert code == 2 and out == "" and "not both" in err and len(err.strip().splitlines()) == 1


def test_workers_inherit_the_compiled_event_loop(tmp_path: Path) -> None:
    """The driver loads the event loop, not only the fluid core, before forking: on a first run both workers
    compiled it and each announced it across the progress bar. A fresh process (this session preloaded it)."""
    code = f'''
from fabricsim.harness.study import Grid, Study
from fabricsim.harness.sweep import run_sweep
from fabricsim.harness.store import ResultsStore
from fabricsim.simcore import lowering

def run(p):
    return {{"loop_loaded": float(lowering._loop is not None)}}

study = Study(name="inherit", grid=Grid.product(x=[1, 2, 3, 4]), run=run)
run_sweep(study, store={str(tmp_path)!r}, workers=2, progress=False)
print(sorted(set(ResultsStore({str(tmp_path)!r}).load("inherit")["value"])))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0]"


def test_the_summary_says_the_compile_time_apart(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run's compilation is said beside the sweep's time, not left out of the summary."""
    from fabricsim.harness import sweep

    study = str(toy_study(tmp_path, n=2))
    sweep.load_engine()  # loaded in this process (compiled first, where this test runs before any other)
    code, out, _ = _cli(capsys, "sweep", study, "--store", str(tmp_path / "a"), "--workers", "1")
    assert "loading the engine" not in out  # loaded already: nothing to say
    monkeypatch.setattr(sweep, "load_engine", lambda: 47.25)
    code, out, _ = _cli(capsys, "sweep", study, "--store", str(tmp_path / "b"), "--workers", "1")
    report_line = out.splitlines()[0]
    assert report_line.startswith("toy: ran 6 points in ")
    assert "(after 47.2s loading the engine: a machine's first run compiles it)" in out
