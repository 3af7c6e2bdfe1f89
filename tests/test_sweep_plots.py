"""Study figures: predicted lines with measured points beside them, PNG + SVG, skipped empty figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabricsim.harness.plots import FigureSkipped, draw_figure, plot_study
from fabricsim.harness.store import ResultsStore, StoreError, make_row
from fabricsim.harness.study import Figure, Grid, Study, StudyError, point_id


def _run(p: dict) -> dict:
    return {"t": (p["size"] / (1 + p["n"]), "s")}


STUDY = Study(
    name="figs",
    grid=Grid.product(n=[1, 2], size=[1, 10, 100]),
    run=_run,
    figures=[Figure("t_vs_size", x="size", y="t", hue="n", logx=True),
             Figure("never", x="size", y="not_a_metric")],
)


def _store(tmp_path: Path, measured: bool = True) -> ResultsStore:
    store = ResultsStore(tmp_path)
    rows = [make_row(study="figs", run_id="r", point_id=pid, params=p, metric="t", value=_run(p)["t"][0], unit="s")
            for pid, p in STUDY.points()]
    store.write(rows, study="figs")
    if measured:
        hw = [make_row(study="figs", run_id="h", point_id=point_id(p, "hw"), params=p, metric="t",
                       value=_run(p)["t"][0] * f, unit="s", source="hw", device="GPU")
              for _, p in STUDY.points() if p["n"] == 1 for f in (1.1, 1.3)]
        store.write(hw, study="figs")
    return store


def test_measured_points_are_drawn_beside_predicted_lines(tmp_path: Path) -> None:
    fig = draw_figure(STUDY.figures[0], _store(tmp_path).load("figs"), "figs")
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["n=1 measured", "n=1 sim", "n=2 sim"]
    measured = [c for c in ax.containers if c.get_label() == "n=1 measured"][0]
    ys = sorted(measured.lines[0].get_ydata())
    assert ys == pytest.approx(sorted(s / 2 * 1.2 for s in (1, 10, 100)))  # mean of the two repeats
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "t [s]"


def test_plot_study_writes_png_and_svg_and_skips_empty_figures(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", measured=False)
    with pytest.warns(FigureSkipped, match="not_a_metric"):
        written = plot_study(STUDY, store, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["t_vs_size.png", "t_vs_size.svg"]
    assert (tmp_path / "plots" / "t_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "plots").glob(".tmp-*"))


def test_plot_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results for study 'figs'"):
        plot_study(STUDY, ResultsStore(tmp_path / "empty"), tmp_path / "p")
    bare = Study(name="figs", grid=STUDY.grid, run=_run)
    with pytest.raises(StudyError, match="declares no figures"):
        plot_study(bare, _store(tmp_path / "s"), tmp_path / "p")
    bad = Study(name="figs", grid=STUDY.grid, run=_run, figures=[Figure("x", x="nope", y="t")])
    with pytest.raises(StudyError, match="no parameter 'nope'"):
        plot_study(bad, _store(tmp_path / "s2"), tmp_path / "p")


def test_figure_functions_are_called_with_the_rows(tmp_path: Path) -> None:
    from matplotlib.figure import Figure as MplFigure

    def count(df):  # noqa: ANN001, ANN202
        fig = MplFigure()
        fig.add_subplot().bar(["rows"], [len(df)])
        return fig

    custom = Study(name="figs", grid=STUDY.grid, run=_run, figures=[count])
    written = plot_study(custom, _store(tmp_path / "s"), tmp_path / "p")
    assert [p.name for p in written] == ["count.png", "count.svg"]
