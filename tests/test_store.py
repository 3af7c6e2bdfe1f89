"""Results store: round trips, atomic no-clobber files, concurrent writers, crashes, corruption, joins."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabricsim.cli import main
from fabricsim.harness.store import (
    CORE_COLUMNS,
    CorruptResultsFile,
    CorruptResultsWarning,
    ResultsStore,
    StoreError,
    compare,
    default_store_root,
    make_row,
)


def _rows(study: str, run: str, n: int, source: str = "sim", start: int = 0, **extra: object) -> list[dict]:
    return [
        make_row(study=study, run_id=run, point_id=f"p{i}", params={"size": i, "topology": "h100-1", **extra},
                 metric="t", value=float(i) / 10, unit="s", source=source)
        for i in range(start, start + n)
    ]


def test_round_trip_keeps_schema_and_values(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    path = store.write(_rows("a", "r1", 5, strategy="ipc"), study="a", run_id="r1")
    assert path == tmp_path / "a" / "r1.parquet"
    df = store.load("a")
    assert list(df.columns[:3]) == ["study", "run_id", "point_id"]
    assert set(CORE_COLUMNS) <= set(df.columns) and {"size", "strategy"} <= set(df.columns)
    assert sorted(df["value"]) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert (df["topology"] == "h100-1").all() and (df["source"] == "sim").all()
    assert df["error"].isna().all()
    assert str(df["created_at"].dt.tz) == "UTC"


def test_store_never_overwrites(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 2), study="a", run_id="r1")
    with pytest.raises(StoreError, match="already exists"):
        store.write(_rows("a", "r1", 3), study="a", run_id="r1")
    assert len(store.load("a")) == 2
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]


def test_load_filters_by_study_and_source(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a")
    store.write(_rows("a", "r2", 2, source="hw"), study="a")
    store.write(_rows("b", "r3", 4), study="b")
    assert len(store.load()) == 9
    assert len(store.load("a")) == 5 and len(store.load("a", "hw")) == 2 and len(store.load(source="sim")) == 7
    assert store.studies() == ["a", "b"]
    with pytest.raises(StoreError, match="source must be"):
        store.load("a", "measured")
    assert store.load("nothing").empty


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with pytest.raises(StoreError, match="source must be"):
        make_row(study="a", run_id="r", point_id="p", params={}, metric="t", value=1, source="guess")
    with pytest.raises(StoreError, match="collides"):
        make_row(study="a", run_id="r", point_id="p", params={"value": 3}, metric="t", value=1)
    with pytest.raises(StoreError, match="empty"):
        store.write([], study="a")
    with pytest.raises(StoreError, match="not only"):
        store.write(_rows("b", "r", 1), study="a")
    with pytest.raises(StoreError, match="study name"):
        store.write(_rows("../x", "r", 1), study="../x")


def test_mixed_param_types_are_stored(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rows = _rows("a", "r", 1, bucket=64) + _rows("a", "r", 1, start=1, bucket=None)
    rows += _rows("a", "r", 1, start=2, bucket="all")
    store.write(rows, study="a", run_id="r")
    assert sorted(store.load("a")["bucket"].dropna()) == ["64", "all"]


def test_parts_are_hidden_once_the_run_is_compacted(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a", run_id="r1", part=1)
    store.write(_rows("a", "r1", 2, start=3), study="a", run_id="r1", part=2)
    assert len(store.files("a")) == 2 and len(store.load("a")) == 5
    final = store.compact_run("a", "r1")
    assert store.files("a") == [final] and len(store.load("a")) == 5
    # A crash between publishing the run file and deleting its parts must not double-count rows.
    store.write(_rows("a", "r1", 3), study="a", run_id="r1", part=1)
    assert len(store.load("a")) == 5
    assert store.compact_run("a", "r1") == final and store.files("a") == [final]


def _writer(root: str, worker: int, files: int) -> None:
    store = ResultsStore(root)
    for k in range(files):
        rows = _rows("shared", f"w{worker}-{k}", 10, start=1000 * worker + 10 * k)
        store.write(rows, study="shared", run_id=f"w{worker}-{k}", part=k % 2 or None)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")  # real independent interpreters, like separate sweeps
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = ResultsStore(tmp_path).load("shared", strict=True)
    assert len(df) == 4 * 15 * 10
    assert df[["run_id", "point_id"]].drop_duplicates().shape[0] == 600
    assert not list((tmp_path / "shared").glob(".tmp-*"))


def test_a_crash_while_writing_leaves_no_visible_file(tmp_path: Path) -> None:
    # The writer dies (os._exit, no cleanup) after the temp file is written but before it is published.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import _rows
        from fabricsim.harness.store import ResultsStore
        os.fsync = lambda fd: os._exit(9)
        ResultsStore({str(tmp_path)!r}).write(_rows("a", "r1", 50), study="a", run_id="r1")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    leftovers = list((tmp_path / "a").iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    store = ResultsStore(tmp_path)
    assert store.files("a") == [] and store.load("a").empty
    store.write(_rows("a", "r1", 2), study="a", run_id="r1")  # the name is still free
    assert len(store.load("a")) == 2


def test_corrupted_file_is_named_and_the_rest_stays_readable(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a", run_id="r1")
    store.write(_rows("b", "r2", 2), study="b", run_id="r2")
    bad = tmp_path / "a" / "r0.parquet"
    bad.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(CorruptResultsFile, match=r"results file .*r0\.parquet is unreadable") as info:
        store.load("a", strict=True)
    assert info.value.path == bad and "\n" not in str(info.value)
    with pytest.warns(CorruptResultsWarning, match="r0.parquet"):
        df = store.load("a")
    assert len(df) == 3
    assert len(store.load("b", strict=True)) == 2


def test_parquet_without_the_schema_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "a" / "alien.parquet")
    with pytest.raises(CorruptResultsFile, match="missing columns"):
        ResultsStore(tmp_path).load("a", strict=True)


def test_cli_reports_corrupt_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a", run_id="r1")
    (tmp_path / "a" / "zz.parquet").write_text("junk")
    assert main(["results", "ls", "--store", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "a" in out and "sim" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "zz.parquet" in lines[0] and lines[0].startswith("fabricsim: warning:")


def test_summary_counts_runs_points_and_failures(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a")
    failed = make_row(study="a", run_id="r2", point_id="p9", params={"size": 9}, metric="error",
                      value=math.nan, error="ValueError: no")
    store.write([failed], study="a")
    s = store.summary().set_index(["study", "source"])
    assert s.loc[("a", "sim"), "runs"] == 2 and s.loc[("a", "sim"), "points"] == 4
    assert s.loc[("a", "sim"), "failed"] == 1 and s.loc[("a", "sim"), "rows"] == 4
    assert store.done_points("a", "uncalibrated") == {"p0", "p1", "p2", "p9"}
    assert store.done_points("a", "uncalibrated", include_failed=False) == {"p0", "p1", "p2"}
    assert store.done_points("a", "other-cal") == set()
    assert len(store.load("a", include_failed=False)) == 3


def test_compare_joins_sim_and_hw_on_the_same_scenario(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 4), study="a")  # predicted 0.0 .. 0.3 for size 0..3
    hw = [make_row(study="a", run_id="h", point_id=f"m{i}{k}", params={"size": i, "topology": "h100-1"},
                   metric="t", value=v, unit="s", source="hw", device="NVIDIA H100")
          for i, vals in ((1, (0.2, 0.3)), (3, (0.2,))) for k, v in enumerate(vals)]
    store.write(hw, study="a")
    out = compare(store.load("a")).set_index("size")
    assert list(out.index) == [1, 3]
    assert out.loc[1, "measured"] == pytest.approx(0.25) and out.loc[1, "n_measured"] == 2
    assert out.loc[1, "predicted"] == pytest.approx(0.1)
    assert out.loc[3, "rel_error"] == pytest.approx(0.3 / 0.2 - 1)
    with pytest.raises(StoreError, match="unknown columns"):
        compare(store.load("a"), on=["nope"])


def test_compare_counts_a_point_stored_by_several_runs_once(tmp_path: Path) -> None:
    """Re-storing the same measurement (a report run again, a file imported again under another run id) and
    re-running the sweep leave compare as it was: each point counts by its newest run. Measured points of one
    scenario within a run are still averaged; a newer measurement of a point replaces the older one."""
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 4), study="a")

    def hw(run: str, v: float, when: str) -> list[dict]:
        return [make_row(study="a", run_id=run, point_id=f"m1{k}", params={"size": 1, "topology": "h100-1"},
                         metric="t", value=v + k / 10, unit="s", source="hw", created_at=pd.Timestamp(when))
                for k in range(2)]

    store.write(hw("h1", 0.2, "2026-01-01T00:00Z"), study="a")
    once = compare(store.load("a"))
    assert once["n_measured"].tolist() == [2] and once["measured"].tolist() == [pytest.approx(0.25)]
    store.write(hw("h2", 0.2, "2026-01-02T00:00Z"), study="a")  # the same measurement, stored again
    store.write(_rows("a", "r2", 4), study="a")  # the sweep run again
    pd.testing.assert_frame_equal(compare(store.load("a")), once)
    store.write(hw("h3", 0.4, "2026-01-03T00:00Z"), study="a")  # a newer measurement of the same points
    again = compare(store.load("a"))
    assert again["n_measured"].tolist() == [2] and again["measured"].tolist() == [pytest.approx(0.45)]
    other = [{**r, "calibration_id": "cal-b"} for r in _rows("a", "r3", 4)]
    store.write(other, study="a")  # another profile's predictions stay beside the first's
    assert sorted(compare(store.load("a"))["calibration_id"]) == ["cal-b", "uncalibrated"]


def test_default_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FABRICSIM_STORE", raising=False)
    assert default_store_root() == Path("results")
    monkeypatch.setenv("FABRICSIM_STORE", str(tmp_path))
    assert ResultsStore().root == tmp_path


def test_no_warning_for_clean_store(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 1), study="a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.load()
    assert len(os.listdir(tmp_path / "a")) == 1


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars, max_size=3), min_size=1, max_size=6),
       st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=6, max_size=6))
def test_any_parameter_mix_round_trips_values(tmp_path_factory: pytest.TempPathFactory, params: list[dict],
                                               values: list[float]) -> None:
    """Whatever types a parameter takes across points, every row comes back with its value and its
    parameters equal (as text when the column had to hold mixed kinds)."""
    store = ResultsStore(tmp_path_factory.mktemp("prop"))
    rows = [make_row(study="p", run_id="r", point_id=f"p{i}", params=p, metric="m", value=values[i])
            for i, p in enumerate(params)]
    store.write(rows, study="p", run_id="r")
    df = store.load("p", strict=True).set_index("point_id")
    for i, p in enumerate(params):
        got = df.loc[f"p{i}"]
        assert got["value"] == values[i]
        for k, v in p.items():
            stored = got[k]
            if v is None:
                assert pd.isna(stored)
            elif isinstance(stored, str) and not isinstance(v, str):
                assert stored == str(v)
            else:
                assert stored == v


def test_a_corrupt_part_leaves_the_run_uncompacted_and_readable(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(_rows("a", "r1", 3), study="a", run_id="r1", part=1)
    (tmp_path / "a" / "r1.part-000002.parquet").write_bytes(b"garbage")
    with pytest.warns(CorruptResultsWarning, match="left as parts"):
        assert store.compact_run("a", "r1") is None
    with pytest.warns(CorruptResultsWarning, match="part-000002"):
        assert len(store.load("a")) == 3
