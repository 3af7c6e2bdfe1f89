"""Results a user can use: the topology column filled, whole numbers shown whole, points without the asked
metric counted (not silently dropped), tables that fit the terminal, outputs never overwritten silently."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from fabricsim.cli import main
from fabricsim.harness.store import ResultsStore, make_row
from fabricsim.harness.study import Grid, Study, load_study
from fabricsim.harness.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent


def _wide(point: dict) -> dict:
    if point["n"] % 3 == 0:
        return {"feasible": (0.0, "")}  # what an infeasible weight-sync point reports: no times
    return {"feasible": (1.0, ""), "sync_s": (point["n"] / 10, "s"),
            **{f"metric_with_a_long_name_{k}": (k * 1.5, "GB/s") for k in range(12)}}


WIDE = Study(name="wide", grid=Grid.product(n=list(range(9)), steps=[None, 10]), run=_wide, topology="h100-1")


def test_study_rows_carry_their_topology(tmp_path: Path) -> None:
    study = load_study("weight_sync")
    run_sweep(study, store=tmp_path, workers=1, limit=2, progress=False)
    rows = ResultsStore(tmp_path).load("weight_sync")
    assert set(rows["topology"]) == {"hgx-h200-8"}
    assert study.topology_of({"layout": "nodes-2+2"}) == "cluster-4x8"
    for name in ("pd_disaggregation", "weight_sync_evidence", "example_fanout", "kv_offload", "prefix_sharing"):
        s = load_study(name)
        assert all(s.topology_of(p) for _, p in s.points()), f"{name}: a point has no topology"


def test_whole_number_parameters_stay_whole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    df = ResultsStore(tmp_path).load("wide")
    assert str(df["steps"].dtype) == "Int64" and set(df["steps"].dropna()) == {10}
    assert main(["results", "show", "wide", "--store", str(tmp_path), "--metric", "sync_s", "--csv"]) == 0
    out = capsys.readouterr().out
    assert ",10," in out and ",10.0," not in out


def test_points_without_the_metric_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    assert main(["results", "show", "wide", "--store", str(tmp_path), "--metric", "sync_s"]) == 0
    err = capsys.readouterr().err
    assert "6 of 18 points have no sync_s: 6 infeasible (feasible = 0" in err


def test_an_unknown_metric_or_study_says_what_there_is(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A metric the study lacks is named with the ones it has (it said 'no successful rows of metric nope'); a study
    with no rows says where it looked and how to run it."""
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    assert main(["results", "show", "wide", "--store", str(tmp_path), "--metric", "nope", "--metric", "sync_s"]) == 2
    err = capsys.readouterr().err
    assert "no metric 'nope'" in err and "sync_s" in err and len(err.strip().splitlines()) == 1
    assert main(["results", "show", "kv_offload", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path.resolve()) in err and f"fabricsim sweep kv_offload --store {tmp_path}" in err


def test_an_unknown_study_is_named_with_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A name that is neither in the store nor a study is said to be unknown, with the studies `sweep` runs (it
    suggested `fabricsim sweep nosuch`, which fails too) and the other studies the store holds."""
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    assert main(["results", "show", "nosuch", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'nosuch'" in err and "fabricsim sweep nosuch" not in err and len(err.splitlines()) == 1
    assert "weight_sync, weight_sync_evidence" in err and "sweep --list" in err and "stored results: wide" in err
    # a stored study (here from a study object, no studies/wide.py) asked for a source it lacks is not 'unknown'
    assert main(["results", "show", "wide", "--source", "hw", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no hw results for study 'wide'" in err and "other sources" in err and "unknown study" not in err


def test_tables_fit_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["results", "show", "wide", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "all rows: topology = h100-1, source = sim" in out  # constant columns said once
    assert "metric_with_a_long_name_11 [GB/s]" in out  # nothing dropped, only wrapped


def _sync_like_rows(store: Path) -> None:
    """A weight-sync-like study's rows: two text parameters and a numeric one, metrics reported in the study's order
    (not by name), the time metrics with intervals; the first point is infeasible and reports `feasible` only."""
    rows = []
    for i, (strategy, model, gpus) in enumerate([("rdma-p2p", "Llama-3-8B", 16), ("nccl-broadcast", "Llama-3-70B", 8),
                                                 ("host-staged", "Llama-3-8B", 8)]):
        params = {"gpus": gpus, "strategy": strategy, "model": model}
        metrics = [("feasible", 0.0, "", None)] if i == 0 else [
            ("feasible", 1.0, "", None), ("peak_GiB", 2.0, "GiB", None), ("sync_s", 1.0 + i, "s", (0.9, 1.5, 0.9)),
            ("stall_s", 0.5, "s", (0.4, 0.6, 0.9)), ("GB_d2d", 3.0, "GB", None)]
        rows += [make_row(study="syn", run_id="r1", point_id=f"p{i}", params=params, metric=m, value=v, unit=u,
                          topology="cluster-2x8", interval=iv) for m, v, u, iv in metrics]
    ResultsStore(store).write(rows, study="syn", run_id="r1")


def test_results_show_puts_identifying_columns_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Which point a row is comes first (the named choices, the machine, the numeric axes, sim or hw), then the
    metrics in the study's order with the interval-carrying headline ones first; not alphabetical (`GB_d2d` first)."""
    _sync_like_rows(tmp_path)
    assert main(["results", "show", "syn", "--store", str(tmp_path), "--csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == ("point_id,strategy,model,topology,gpus,source,sync_s [s],sync_s lo [s],sync_s hi [s],"
                      "stall_s [s],stall_s lo [s],stall_s hi [s],feasible,peak_GiB [GiB],GB_d2d [GB],level")


def test_wrapped_blocks_repeat_the_identifying_columns(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of a wrapped table repeats the columns that say which point a row is, where they take at most
    half the width (metrics beside bare point ids cannot be read); in a narrower terminal the point id alone."""
    _sync_like_rows(tmp_path)
    for columns, repeated in (("110", True), ("60", False)):
        monkeypatch.setenv("COLUMNS", columns)
        assert main(["results", "show", "syn", "--store", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        blocks = out.split("\n\n")
        assert len(blocks) > 1 and max(len(line) for line in out.splitlines()) <= int(columns)
        heads = [block.splitlines()[-4].split() for block in blocks]  # each block: header and three points
        assert all(h[:4] == ["point_id", "strategy", "model", "gpus"] for h in heads) == repeated
        assert all(h[0] == "point_id" for h in heads)


def test_a_value_and_its_interval_wrap_together(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """At any width a metric's `lo` and `hi` are in the block of its value (a trial's `results show weight_sync
    --metric sync_s` showed the values, and their bounds only in a block far below)."""
    _sync_like_rows(tmp_path)
    for columns in range(40, 161, 4):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["results", "show", "syn", "--store", str(tmp_path)]) == 0
        heads = [block.splitlines()[-4] for block in capsys.readouterr().out.split("\n\n")]
        for metric in ("sync_s", "stall_s"):
            with_value = [h for h in heads if f"{metric} [s]" in h]
            assert len(with_value) == 1 and f"{metric} lo [s]" in with_value[0] and f"{metric} hi [s]" in with_value[0]


def test_results_show_fits_the_terminal_stderr_shows_when_stdout_is_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`results show | less -S` is read on the terminal stderr still writes to: its width, not a fixed guess."""
    import os

    from fabricsim.harness import cli as harness_cli

    def size(fd: int) -> os.terminal_size:
        if fd == 2:
            return os.terminal_size((211, 50))
        raise OSError("not a terminal")

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", size)
    assert harness_cli._terminal_width() == 211
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: (_ for _ in ()).throw(OSError("no terminal")))
    assert harness_cli._terminal_width() == 120


@pytest.mark.parametrize("argv, what", [
    (["topo", "import", "{txt}", "--out", "{existing}"], "topology file exists"),
    (["calibrate", "{measured}", "{existing}"], "profile file exists"),
    (["report", "{measured}", "--out", "{existing_dir}", "--no-store"], "report folder exists"),
])
def test_outputs_are_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                                   what: str) -> None:
    existing = tmp_path / "keep.txt"
    existing.write_text("precious")
    existing_dir = tmp_path / "report"
    existing_dir.mkdir()
    (existing_dir / "report.md").write_text("precious")
    subs = {"{txt}": str(ROOT / "validate/data/h100x1/topo_m.txt"), "{existing}": str(existing),
            "{measured}": str(ROOT / "validate/data/h100x1"), "{existing_dir}": str(existing_dir)}
    code = main([subs.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and what in err and "--force" in err and err.count("\n") == 1
    assert existing.read_text() == "precious" and (existing_dir / "report.md").read_text() == "precious"


def test_force_replaces_a_topology_file(tmp_path: Path) -> None:
    out = tmp_path / "box.yaml"
    out.write_text("old")
    txt = str(ROOT / "validate/data/h100x1/topo_m.txt")
    assert main(["topo", "import", txt, "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("name:")


def test_report_names_the_users_path_when_it_cannot_write(capsys: pytest.CaptureFixture) -> None:
    out = "/proc/fabricsim-report"  # no one may create a folder there, root included
    code = main(["report", str(ROOT / "validate/data/h100x1"), "--out", out, "--no-store"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"fabricsim: error: {out}:") and ".tmp" not in err and err.count("\n") == 1


def test_small_values_keep_their_digits(capsys: pytest.CaptureFixture) -> None:
    """Six significant digits a number, not one column-wide count of decimals (a 3 us makespan beside seconds
    showed as 0.000003, 1e-9 s as 0.000000)."""
    from fabricsim.harness.cli import _print

    _print(pd.DataFrame({"point_id": ["a", "b", "c"], "makespan_s [s]": [3.14159e-6, 1e-9, 12.5]}), csv=False)
    out = capsys.readouterr().out
    assert "3.14159e-06" in out and "1e-09" in out and "12.5" in out and "0.000000" not in out


def _reasoned(point: dict) -> dict:
    if point["n"] % 3 == 0:  # an infeasible configuration: a metric, and why it has no times
        return {"feasible": (0.0, ""), "peak_GiB": (200.0 + point["n"], "GiB"),
                "reason": f"needs {point['n']} GiB\nmore"}
    return {"feasible": (1.0, ""), "sync_s": (point["n"] / 10, "s"), "reason": ""}  # empty: none


REASONED = Study(name="reasoned", grid=Grid.product(n=list(range(6))), run=_reasoned, topology="h100-1")


def test_infeasible_points_keep_their_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Why an infeasible point has no times is stored on its rows (`reason`) and `results show --infeasible` lists
    it; a trial found `feasible = 0` rows with no reason anywhere and `--failed` saying only 'no failed points'."""
    assert run_sweep(REASONED, store=tmp_path, workers=1, progress=False).infeasible == 2
    df = ResultsStore(tmp_path).load("reasoned")
    by_n = df.groupby("n")["reason"].agg(lambda r: set(r.fillna("")))
    assert by_n[0] == {"needs 0 GiB more"} and by_n[3] == {"needs 3 GiB more"}  # every row of the point, one line
    assert by_n[1] == {""} and (df["metric"] != "reason").all()
    store = ["--store", str(tmp_path)]
    assert main(["results", "show", "reasoned", "--infeasible", *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "all rows: topology = h100-1, source = sim"  # once, as above the main table
    assert lines[1].split() == ["point_id", "n", "reason"] and len(lines) == 4
    assert lines[2].split()[1:] == ["0", "needs", "0", "GiB", "more"]
    assert main(["results", "show", "reasoned", "--failed", *store]) == 0
    assert "no failed points in study 'reasoned' (2 ran and are infeasible" in capsys.readouterr().out
    assert main(["results", "show", "reasoned", *store]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == lines[0] and out.count("all rows:") == 1 and "2 infeasible point(s)" in err
    assert main(["results", "show", "reasoned", "--metric", "sync_s", *store]) == 0
    assert "2 infeasible (feasible = 0; fabricsim results show reasoned --infeasible" in capsys.readouterr().err
    assert main(["results", "show", "reasoned", "--infeasible", "--csv", *store]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(",0,sim,needs 0 GiB more")
    assert main(["results", "show", "reasoned", "--infeasible", "--metric", "sync_s", *store]) == 2  # not ignored
    assert "--metric does not apply to --infeasible" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one view at a time
        main(["results", "show", "reasoned", "--infeasible", "--compare", *store])


def test_infeasible_rows_stored_before_reasons_are_listed_without_one(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A store written before the `reason` column reads as before; its `feasible = 0` points are listed with '-'."""
    run_sweep(WIDE, store=tmp_path, workers=1, progress=False)
    assert "reason" not in ResultsStore(tmp_path).load("wide").columns
    assert main(["results", "show", "wide", "--infeasible", "--store", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + 1 + 6 and all(line.endswith("  -") for line in out.splitlines()[2:])
    assert "6 of them carry no reason" in err


def test_a_reason_is_text_beside_a_metric() -> None:
    from fabricsim.harness.study import StudyError, normalise_metrics, point_reason

    with pytest.raises(StudyError, match="'reason' alone"):
        normalise_metrics({"reason": "too big"})  # no row would carry it
    with pytest.raises(StudyError, match="as text"):
        point_reason({"feasible": 0.0, "reason": 3})


def test_weight_sync_stores_the_strategys_reason() -> None:
    """The message `fabricsim sync` prints for an infeasible configuration is the point's reason."""
    study = load_study("weight_sync")
    result = study.result({"layout": "nodes-2+2", "model": "Llama-3-8B", "strategy": "cuda-ipc-buckets"})
    assert result.metrics["feasible"][0] == 0.0 and "shares no node with a trainer GPU" in result.reason
    assert study.result({"layout": "split-4+4", "model": "Llama-3-8B", "strategy": "rdma-p2p"}).reason is None


def test_weight_sync_bars_mark_the_infeasible_configurations() -> None:
    """A configuration that ran and is infeasible is a cross where its bar would be (a missing bar also means a
    configuration not run), and the legend says where to read why."""
    from matplotlib.lines import Line2D

    study = load_study("weight_sync")
    bars = next(f for f in study.figures if getattr(f, "__name__", "") == "sync_time_bars")
    rows = [{"metric": "feasible", "source": "sim", "layout": "nodes-2+2", "model": "Llama-3-8B", "strategy": s,
             "value": float(s != "cuda-ipc-buckets")} for s in ("nccl-broadcast", "cuda-ipc-buckets", "host-staged")]
    rows += [{**rows[0], "metric": "sync_s", "value": 0.5}]  # host-staged: not run to the end, no time either
    fig = bars(pd.DataFrame(rows))
    crosses = [line for line in fig.axes[0].lines if line.get_marker() == "x" and len(line.get_xdata())]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [pytest.approx(0.8 / 7)]  # strategy 1 of model 0
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("--infeasible" in t for t in labels) and isinstance(fig.legends[0].legend_handles[-1], Line2D)


def test_results_show_gives_a_point_run_twice_its_newest_value(tmp_path: Path, capsys) -> None:
    """A point run again (without --resume) is stored again, not overwritten: `results show` shows the newest run's
    value, by the rule `compare` counts measurements by (`store.newest_runs`)."""
    store = ResultsStore(tmp_path)
    for run_id, value in (("r1", 1.0), ("r2", 2.0)):
        store.write([make_row(study="twice", run_id=run_id, point_id="p0", params={"n": 1}, metric="t", value=value,
                              unit="s", topology="h100-1")], study="twice", run_id=run_id)
    assert main(["results", "show", "twice", "--store", str(tmp_path), "--csv"]) == 0
    out = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert out["t [s]"].tolist() == [2.0]


@pytest.mark.parametrize("name", ["weight_sync_evidence", "example_fanout", "prefix_sharing"])
def test_small_bundled_studies_run_every_point(tmp_path: Path, name: str) -> None:
    """Each point of the bundled studies that run in seconds, run whole: a study is what a user runs first, and a
    change elsewhere can break its points (the evidence study's bucket sizes, 1.42 GiB and 2.69 GiB, were fractional
    bytes, which host-staged's typed knobs refused: two of its four points failed and no test ran them)."""
    run_sweep(load_study(name), store=tmp_path, workers=1, progress=False)
    rows = ResultsStore(tmp_path).load(name)
    assert not rows["error"].notna().any(), rows[rows["error"].notna()]["error"].tolist()
    assert rows["point_id"].nunique() == len(list(load_study(name).points()))


def test_results_ls_of_a_store_that_is_not_there_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`results ls --store /nonexistent` said 'no results' and exit 0 (a new-user trial): a store named on purpose
    that does not exist is a typo. The default store not made yet still says there are no results."""
    assert main(["results", "ls", "--store", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: no results store there" in err and len(err.splitlines()) == 1
