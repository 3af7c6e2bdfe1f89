"""Study figures: predicted lines with measured points beside them, PNG + SVG, skipped empty figures."""

from __future__ import annotations

import warnings
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


def test_existing_figures_are_replaced_only_with_force(tmp_path: Path) -> None:
    """A second plot into the same folder replaced the figures without a word; now it is refused, before any file
    is written, unless `force` (`plot --force`), as every other named output; the refusal is all it says (the
    figures it would have skipped are said only when it writes)."""
    from fabricsim.errors import OutputExistsError

    store, out = _store(tmp_path / "store", measured=False), tmp_path / "plots"
    out.mkdir()
    (out / "t_vs_size.svg").write_text("kept")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning before the refusal: the CLI's stderr is its one line
        with pytest.raises(OutputExistsError, match=r"t_vs_size\.svg: the figure file exists; add --force to replace"):
            plot_study(STUDY, store, out)
    assert sorted(p.name for p in out.iterdir()) == ["t_vs_size.svg"] and (out / "t_vs_size.svg").read_text() == "kept"
    with pytest.warns(FigureSkipped):
        written = plot_study(STUDY, store, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["t_vs_size.png", "t_vs_size.svg"] == [p.name for p in written]
    assert (out / "t_vs_size.svg").read_text().lstrip().startswith("<?xml")


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


def _frame(rows: list[tuple[dict, float]]):
    import pandas as pd

    return pd.DataFrame([make_row(study="s", run_id="r", point_id=point_id(p, "c"), params=p, metric="y", value=v,
                                  unit="s") for p, v in rows]).assign(error=None)


def test_equal_values_on_a_categorical_axis_sit_side_by_side() -> None:
    """stall.png's case: two strategies whose values are a few percent apart must not share one spot."""
    df = _frame([({"model": m, "strategy": s}, 1.0 + 0.02 * k) for m in ("a", "b")
                 for k, s in enumerate(("nccl", "ipc", "pool"))])
    fig = draw_figure(Figure("y", x="model", y="y", hue="strategy"), df)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().endswith("sim")]
    xs = {ln.get_label(): tuple(ln.get_xdata()) for ln in lines}
    assert len(set(xs.values())) == 3, f"hues drawn at the same x: {xs}"
    assert len({ln.get_marker() for ln in lines}) == 3  # and each with its own marker shape
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]


def test_coinciding_lines_get_distinct_styles_and_a_direct_label() -> None:
    """example_fanout's case: three fan-outs give identical curves; the one visible line must say it is three."""
    df = _frame([({"size": s, "fanout": f}, (2.0 if f == 1 else 1.0) * s) for s in (1, 10, 100) for f in (1, 2, 4, 8)])
    fig = draw_figure(Figure("y", x="size", y="y", hue="fanout", logx=True), df)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label().endswith("sim")]
    assert len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 4
    assert len({ln.get_markersize() for ln in lines}) == 4  # earlier series drawn bigger, outlines stay visible
    assert [t.get_text() for t in ax.texts] == ["fanout = 2, 4, 8"]


def test_log_axis_labels_do_not_collide() -> None:
    """kv_offload's case: three contexts within two decades; matplotlib labels minor ticks there and they overlap."""
    from matplotlib.ticker import NullFormatter

    df = _frame([({"context": c, "policy": p}, c * k) for c in (4096, 16384, 65536) for k, p in enumerate("ab", 1)])
    fig = draw_figure(Figure("y", x="context", y="y", hue="policy", logx=True), df)
    ax = fig.axes[0]
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
    assert list(ax.get_xticks()) == [4096, 16384, 65536]


def test_an_out_folder_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    """`plot --out plf` where plf is a file said only 'plf: File exists'; the error names the path and says the
    figures need a folder, and the file is left as it was."""
    out = tmp_path / "plf"
    out.write_text("mine")
    with pytest.warns(FigureSkipped), pytest.raises(NotADirectoryError, match="is a file, not a folder") as info:
        plot_study(STUDY, _store(tmp_path / "st"), out)
    assert info.value.filename == str(out) and out.read_text() == "mine"


def test_a_figure_over_a_parameter_no_stored_point_sets_is_skipped(tmp_path: Path) -> None:
    """`sweep weight_sync --limit 5` ran no point that sets `decode_steps`, and `plot` (as sweep suggests) refused
    the whole study over the one figure that uses it: that figure is skipped, the others drawn; a parameter the
    study does not have is still a mistake in the figure."""
    study = Study(name="figs", grid=Grid.product(n=[1, 2], size=[1, 10, 100]) + Grid.points([{"n": 3, "k": 1}]),
                  run=_run, figures=[Figure("t_vs_size", x="size", y="t", hue="n"),
                                     Figure("by_k", x="k", y="t")])
    store = _store(tmp_path / "st", measured=False)
    with pytest.warns(FigureSkipped, match="no stored point sets its parameter 'k' yet"):
        written = plot_study(study, store, tmp_path / "out")
    assert [p.name for p in written] == ["t_vs_size.png", "t_vs_size.svg"]
    with pytest.raises(StudyError, match="the results have no parameter 'kk'"):
        draw_figure(Figure("by_kk", x="kk", y="t"), store.load("figs"), "figs", params={"n", "size", "k"})


def test_when_no_figure_can_be_drawn_the_error_says_why_for_each(tmp_path: Path) -> None:
    """The reasons were warnings before the error; now they are held until figures are written (a refusal is one
    line), so the error of a study none of whose figures can be drawn carries them (a review)."""
    study = Study(name="figs", grid=STUDY.grid, run=_run, figures=[Figure("never", x="size", y="not_a_metric")])
    with pytest.raises(StoreError, match=r"none of its figures has rows to draw \(figure 'never': no rows of metric "
                                         r"'not_a_metric' to draw\)"):
        plot_study(study, _store(tmp_path / "st", measured=False), tmp_path / "out")
