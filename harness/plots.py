"""Standard figures of a study: what a person looks at after a sweep.

Each :class:`fabricsim.harness.study.Figure` draws one metric against one parameter, a line per value of `hue`, a
panel per value of `facet`. Predicted (sim) values are lines; measured (hw) values of the same scenario are
drawn beside them as open markers in the same colour (with the spread of repeats as error bars), so the
error is visible at a glance. A study may also list plain functions `fn(df) -> matplotlib Figure` for
anything else. Figures are written as PNG and SVG, each atomically.

Only `matplotlib.figure.Figure` is used (no pyplot), so drawing never changes a notebook's backend.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from fabricsim.hwmodels.fileio import make_output_folder, refuse_overwrite

from .store import ResultsStore, StoreError
from .study import Figure, Study, StudyError


class FigureSkipped(UserWarning):
    """A declared figure had no rows to draw and was left out."""


_SIM_STYLE = {"markersize": 5, "linewidth": 1.5, "markerfacecolor": "none", "markeredgewidth": 1.3}
_HW_STYLE = {"marker": "s", "markersize": 7, "markerfacecolor": "none", "linestyle": "none", "capsize": 3}
# Series that coincide must stay visible: each hue has its own colour *and* marker shape and line style (open
# markers, so one drawn over another still shows its outline), and on a categorical axis the hues sit side by
# side instead of on one spot.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LINESTYLES = ("-", "--", ":", "-.")
_DODGE_WIDTH = 0.7  # of the space between two categories, shared by the hues


def _sorted_values(series: pd.Series) -> list[Any]:
    values = list(series.dropna().unique())
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _band(ax: Any, sim_rows: pd.DataFrame, x: str, colour: str, at: Callable[[Any], float] | None = None) -> None:
    """The prediction interval of simulated values (columns lo/hi), where the rows carry one: a shaded band
    along a numeric x, error bars at categorical x (`at(category)`: where the hue's marker sits, shifted beside
    the other hues', so each whisker is on its own marker)."""
    if "lo" not in sim_rows.columns or sim_rows["lo"].isna().all():
        return
    b = sim_rows.dropna(subset=["lo", "hi"]).groupby(x)[["value", "lo", "hi"]].mean()
    if at is not None:
        below, above = (b["value"] - b["lo"]).clip(lower=0), (b["hi"] - b["value"]).clip(lower=0)
        ax.errorbar([at(c) for c in b.index], b["value"].to_numpy(), yerr=[below.to_numpy(), above.to_numpy()],
                    color=colour, linestyle="none", capsize=3, alpha=0.6)
    else:
        ax.fill_between(b.index, b["lo"].to_numpy(), b["hi"].to_numpy(), color=colour, alpha=0.15, linewidth=0)


def draw_figure(spec: Figure, df: pd.DataFrame, study_name: str = "", params: Collection[str] = ()) -> MplFigure:
    """Draw one declared figure from a results frame (as returned by `ResultsStore.load`). `params`: the study's
    parameters, so a figure over one that no stored point has yet (`sweep --limit 5` ran none of them) is skipped
    as a figure without rows, not refused as a figure naming a parameter that does not exist."""
    rows = df[(df["metric"] == spec.y)]
    if "error" in rows.columns:
        rows = rows[rows["error"].isna()]
    for col in (spec.x, spec.hue, spec.facet, *spec.where):
        if col is not None and col not in df.columns:
            if col in params:
                raise StoreError(f"figure {spec.name!r}: no stored point sets its parameter {col!r} yet")
            raise StudyError(f"figure {spec.name!r}: the results have no parameter {col!r}")
    for col, want in spec.where.items():
        rows = rows[rows[col] == want]
    if rows.empty:
        raise StoreError(f"figure {spec.name!r}: no rows of metric {spec.y!r} to draw")

    facets = _sorted_values(rows[spec.facet]) if spec.facet else [None]
    ncols = min(len(facets), 3)
    nrows = math.ceil(len(facets) / ncols)
    # one narrow panel is still wide enough for its title and a legend row below it
    fig = MplFigure(figsize=(max(4.8 * ncols, 7.2), 3.6 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    hues = _sorted_values(rows[spec.hue]) if spec.hue else [None]
    colours = {h: f"C{i % 10}" for i, h in enumerate(hues)}
    unit = next((u for u in rows["unit"].dropna().unique() if u), "")

    # A categorical x (model names, say) has no order: markers only, no lines implying a trend between them,
    # each hue shifted sideways within its category so that equal values do not hide one another.
    categorical = not pd.api.types.is_numeric_dtype(rows[spec.x])
    categories = _sorted_values(rows[spec.x]) if categorical else []
    position = {c: i for i, c in enumerate(categories)}
    for ax, facet in zip(axes, facets, strict=False):
        panel = rows if facet is None else rows[rows[spec.facet] == facet]
        curves: dict[Any, pd.Series] = {}
        for k, hue in enumerate(hues):
            sel = panel if hue is None else panel[panel[spec.hue] == hue]
            label = "" if hue is None else f"{spec.hue}={hue}"
            # Earlier hues are drawn bigger and wider, so a later one drawn on top leaves their outline showing.
            behind = (len(hues) - 1 - k) / max(1, len(hues) - 1)
            style = {**_SIM_STYLE, "marker": _MARKERS[k % len(_MARKERS)], "markersize": 4 + 5 * behind,
                     "linewidth": 1.2 + 1.8 * behind,
                     "linestyle": "none" if categorical else _LINESTYLES[k % len(_LINESTYLES)]}
            shift = (k - (len(hues) - 1) / 2) * _DODGE_WIDTH / len(hues) if categorical else 0.0
            sim = sel[sel["source"] == "sim"].groupby(spec.x)["value"].mean()
            hw = sel[sel["source"] == "hw"].groupby(spec.x)["value"].agg(["mean", "std"])
            if not sim.empty:
                if spec.logy and (sim <= 0).all():
                    label += " (0: below the log axis)"
                xs = [position[c] + shift for c in sim.index] if categorical else sim.index
                ax.plot(xs, sim.to_numpy(), color=colours[hue], label=f"{label} sim".strip(), **style)
                curves[hue] = sim
                _band(ax, sel[sel["source"] == "sim"], spec.x, colours[hue],
                      (lambda c, s=shift: position[c] + s) if categorical else None)
            if not hw.empty:
                spread = hw["std"].to_numpy() if hw["std"].notna().any() else None  # repeats only
                xs = [position[c] + shift for c in hw.index] if categorical else hw.index
                ax.errorbar(xs, hw["mean"].to_numpy(), yerr=spread,
                            color=colours[hue], label=f"{label} measured".strip(), **_HW_STYLE)
        if spec.hue and not categorical:
            _label_coinciding(ax, curves, spec.hue)
        if spec.logx:
            ax.set_xscale("log")
        if spec.logy:
            ax.set_yscale("log")
        ax.set_xlabel(spec.xlabel or spec.x)
        ax.set_ylabel(spec.ylabel or (f"{spec.y} [{unit}]" if unit else spec.y))
        if facet is not None:
            ax.set_title(f"{spec.facet} = {facet}", fontsize=10)
        ax.grid(True, alpha=0.3)
        if categorical:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=20)
            for edge in range(1, len(categories)):  # where one category's group of hues ends
                ax.axvline(edge - 0.5, color="0.85", linewidth=0.8, zorder=0)
        elif spec.logx:
            _readable_log_ticks(ax, _sorted_values(rows[spec.x]))
    for ax in axes[len(facets):]:
        ax.set_visible(False)
    # One legend for all panels, below them, so it never hides data or the title.
    handles: dict[str, Any] = {}
    for ax in axes[: len(facets)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=8, loc="outside lower center",
                   ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(spec.title or f"{study_name}: {spec.name}".strip(": "))
    return fig


def _readable_log_ticks(ax: Any, xs: list[Any]) -> None:
    """Log x tick labels that never run into one another: no labels on minor ticks (over less than a decade
    matplotlib labels them, and they collide), and with few x values, ticks at exactly those values."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    values = [float(x) for x in xs if float(x) > 0]
    if 0 < len(values) <= 6:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=7))


def _label_coinciding(ax: Any, curves: dict[Any, pd.Series], hue: str, rel: float = 0.01) -> None:
    """Series that lie on one another (within `rel` at every shared x) get one direct label at their right
    end naming all of them, so a reader knows the single visible line is several."""
    groups: list[list[Any]] = []
    for name, curve in curves.items():
        for group in groups:
            other = curves[group[0]]
            shared = curve.index.intersection(other.index)
            if len(shared) == len(curve) == len(other) and (
                    (curve[shared] - other[shared]).abs() <= rel * other[shared].abs().clip(lower=1e-300)).all():
                group.append(name)
                break
        else:
            groups.append([name])
    for group in groups:
        if len(group) < 2:
            continue
        curve = curves[group[0]]
        x_end, y_end = curve.index[-1], curve.iloc[-1]
        ax.annotate(f"{hue} = {', '.join(str(g) for g in group)}", (x_end, y_end), xytext=(-4, -14),
                    textcoords="offset points", ha="right", fontsize=7, color="0.25")


FORMATS = ("png", "svg")  # each figure is written in both


def figure_paths(out_dir: Path, name: str) -> list[Path]:
    """The files figure `name` is written to: the one list `save_figure` writes and `plot_study` checks."""
    return [out_dir / f"{name}.{ext}" for ext in FORMATS]


def save_figure(fig: MplFigure, out_dir: Path, name: str) -> list[Path]:
    """PNG + SVG, each written under a temporary name, synced and renamed, so no half-written figure is seen,
    even after a crash. `out_dir` is made if missing, not the folders above it (`fileio.make_output_folder`).
    Replaces figures of the same name: `plot_study` asks first (`force`)."""
    make_output_folder(out_dir, "figures")
    written = []
    for ext, final in zip(FORMATS, figure_paths(out_dir, name), strict=True):
        tmp = out_dir / f".tmp-{uuid.uuid4().hex}.{ext}"
        try:
            with open(tmp, "wb") as fh:
                fig.savefig(fh, format=ext, dpi=120)
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not land before the bytes do
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(final)
    return written


PLOTS_DIR = Path("plots")  # the figures' folder when none is given: PLOTS_DIR/STUDY, both made if missing


def plot_study(study: Study, store: ResultsStore, out_dir: str | Path | None = None, *,
               force: bool = False) -> list[Path]:
    """Draw every figure a study declares from the rows in `store` into `out_dir` (made if missing; the folder
    above it must exist), or by default into ./plots/STUDY; return the files written.

    A figure file already there is replaced only with `force` (`plot --force`), as every command's named output:
    a re-run silently replaced figures kept from an earlier sweep. Every figure is drawn before any is written,
    so a refusal (or a figure function that fails) leaves the folder as it was."""
    if not study.figures:
        raise StudyError(f"study {study.name!r} declares no figures (Study(..., figures=[Figure(...)]))")
    df = store.load(study.name, include_failed=False)
    if df.empty:
        raise StoreError(f"no results for study {study.name!r} in {store.root}; run `fabricsim sweep` first")
    out = PLOTS_DIR / study.name if out_dir is None else Path(out_dir)
    drawn: list[tuple[MplFigure, str]] = []
    params = {k for _, point in study.points() for k in point}
    skipped: list[str] = []  # said once the figures are sure to be written: a refusal stays one line
    for spec in study.figures:
        if isinstance(spec, Figure):
            try:
                fig, name = draw_figure(spec, df, study.name, params), spec.name
            except StoreError as exc:
                # A figure of metrics not run yet (say, measured only) must not hide the others.
                skipped.append(f"skipped: {exc}")
                continue
        elif callable(spec):
            fn: Callable[..., Any] = spec
            fig, name = fn(df), getattr(fn, "__name__", "figure")
            if not isinstance(fig, MplFigure):
                raise StudyError(f"figure function {name!r} must return a matplotlib Figure")
        else:
            raise StudyError(f"study {study.name!r}: figures must be Figure(...) or functions, got {spec!r}")
        drawn.append((fig, name))
    if not drawn:  # each figure's reason, in the one line
        raise StoreError(f"study {study.name!r}: none of its figures has rows to draw ("
                         + "; ".join(note.removeprefix("skipped: ") for note in skipped) + ")")
    if out.is_dir():  # (else there is nothing to replace)
        for _, name in drawn:
            for path in figure_paths(out, name):
                refuse_overwrite(path, force, "figure", file=True)
    if out_dir is None:
        make_output_folder(PLOTS_DIR, "study figure folders")
    for note in skipped:
        warnings.warn(note, FigureSkipped, stacklevel=2)
    written: list[Path] = []
    for fig, name in drawn:
        written += save_figure(fig, out, name)
    return written
