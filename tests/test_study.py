"""Study contract: grids, stable point ids, loading study files, bad input."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabricsim.harness.study import (
    Choice,
    Figure,
    Grid,
    IntUniform,
    LogUniform,
    PointContext,
    Study,
    StudyError,
    Uniform,
    calibration_id_of,
    canonical_params,
    load_study,
    normalise_metrics,
    point_id,
    resolve_study_path,
)


def _metrics(p: dict) -> dict:
    return {"m": 1.0}


def test_product_is_every_combination_last_axis_fastest() -> None:
    g = Grid.product(a=[1, 2], b=["x", "y", "z"])
    assert list(g) == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert len(g) == 6


def test_zipped_advances_together_and_rejects_unequal_lengths() -> None:
    assert list(Grid.zipped(a=[1, 2], b=[3, 4])) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(StudyError, match="equal lengths"):
        Grid.zipped(a=[1, 2], b=[3])


def test_composition_product_concat_when_where() -> None:
    g = (Grid.product(s=["nccl", "ipc"]) * Grid.zipped(n=[1, 2], m=[10, 20])).when(
        lambda p: p["s"] == "ipc", bucket=[64, 128]
    )
    pts = list(g)
    assert {"s": "nccl", "n": 1, "m": 10} in pts
    assert {"s": "ipc", "n": 2, "m": 20, "bucket": 128} in pts
    assert len(pts) == 2 + 4
    assert all("bucket" not in p for p in pts if p["s"] == "nccl")
    both = g + Grid.points([{"s": "rdma", "n": 8, "m": 80}])
    assert len(both) == 7
    assert len(g.where(lambda p: p["n"] == 1)) == 3


def test_product_of_grids_with_shared_axis_is_an_error() -> None:
    with pytest.raises(StudyError, match="repeats axes"):
        list(Grid.product(a=[1]) * Grid.product(a=[2]))


def test_random_grid_is_reproducible_and_within_bounds() -> None:
    mk = lambda seed: Grid.random(  # noqa: E731
        50, seed, u=Uniform(0.0, 1.0), l=LogUniform(1e3, 1e9), i=IntUniform(1, 8), c=Choice(["a", "b"]), d=[5, 6]
    )
    a, b, c = list(mk(7)), list(mk(7)), list(mk(8))
    assert a == b and a != c
    for p in a:
        assert 0 <= p["u"] <= 1 and 1e3 <= p["l"] <= 1e9 and 1 <= p["i"] <= 8
        assert p["c"] in ("a", "b") and p["d"] in (5, 6)
        assert isinstance(p["i"], int) and isinstance(p["l"], float)


def test_nested_params_flatten_to_dotted_names() -> None:
    flat = list(Grid.points([{"model": {"layers": 2, "dtype": "bf16"}}]))
    assert flat == [{"model.layers": 2, "model.dtype": "bf16"}]


def test_non_scalar_param_is_rejected() -> None:
    with pytest.raises(StudyError, match="values must be"):
        list(Grid.product(a=[[1, 2]]))
    with pytest.raises(StudyError, match="not finite"):
        list(Grid.product(a=[float("nan")]))


params_st = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    st.one_of(st.integers(-5, 5), st.text("xyz", max_size=3), st.booleans(), st.none(),
              st.floats(allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=5,
)


@given(params_st)
def test_point_id_ignores_key_order_and_depends_on_calibration(params: dict) -> None:
    items = list(params.items())
    random.Random(0).shuffle(items)
    assert point_id(params) == point_id(dict(items))
    assert point_id(params, "cal-a") != point_id(params, "cal-b")


@given(params_st, params_st)
def test_different_params_give_different_ids(a: dict, b: dict) -> None:
    # 1, 1.0 and True are equal in Python but different points here: the canonical text tells them apart.
    assert (point_id(a) == point_id(b)) == (canonical_params(a) == canonical_params(b))


def test_point_id_is_the_documented_hash() -> None:
    # A changed formula would make every stored result look new to --resume; change only deliberately.
    text = '{"a":1,"b":"x"}' + "\x00" + "uncalibrated"
    assert point_id({"b": "x", "a": 1}) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_calibration_id_tracks_file_contents(tmp_path: Path) -> None:
    f = tmp_path / "prof.json"
    f.write_text('{"a": 1}')
    first = calibration_id_of(f)
    f.write_text('{"a": 2}')
    assert calibration_id_of(f) != first and calibration_id_of(f).startswith("prof-")
    assert calibration_id_of(None) == "uncalibrated"
    assert calibration_id_of("default").startswith("default-")
    with pytest.raises(StudyError, match="calibration profile"):
        calibration_id_of(tmp_path / "missing.json")


def test_study_points_dedupe_and_check_reserved_names() -> None:
    s = Study(name="s", grid=Grid.points([{"a": 1}, {"a": 1}, {"a": 2}]), run=_metrics)
    assert [p for _, p in s.points()] == [{"a": 1}, {"a": 2}]
    bad = Study(name="s", grid=Grid.product(metric=["x"]), run=_metrics)
    with pytest.raises(StudyError, match="collides"):
        bad.points()
    # `topology` is allowed: it fills the topology column.
    Study(name="s", grid=Grid.product(topology=["h100-1"]), run=_metrics).points()


def test_empty_grid_is_an_error() -> None:
    s = Study(name="s", grid=Grid.product(a=[1]).where(lambda p: False), run=_metrics)
    with pytest.raises(StudyError, match="grid is empty"):
        s.points()


def test_study_validates_its_fields() -> None:
    with pytest.raises(StudyError, match="study name"):
        Study(name="a b", grid=Grid.product(a=[1]), run=_metrics)
    with pytest.raises(StudyError, match="grid must be"):
        Study(name="s", grid=[{"a": 1}], run=_metrics)  # type: ignore[arg-type]
    with pytest.raises(StudyError, match="run must be"):
        Study(name="s", grid=Grid.product(a=[1]), run=None)  # type: ignore[arg-type]


def test_context_is_passed_only_to_functions_that_take_it() -> None:
    seen = []

    def with_ctx(p: dict, ctx: PointContext | None = None) -> dict:
        seen.append(ctx)
        return {"m": (2, "s")}

    s = Study(name="s", grid=Grid.product(a=[1]), run=with_ctx)
    assert s.takes_context
    ctx = PointContext(study="s", point_id="x")
    assert s.evaluate({"a": 1}, ctx) == {"m": (2.0, "s")}
    assert seen == [ctx]
    assert not Study(name="s", grid=Grid.product(a=[1]), run=_metrics).takes_context


@pytest.mark.parametrize(
    "raw, match",
    [({}, "non-empty dict"), (3.0, "non-empty dict"), ({"m": "fast"}, "not a number"),
     ({"m": (1.0, 2)}, "value or \\(value, unit\\)"), ({"": 1.0}, "non-empty strings")],
)
def test_bad_metrics_are_errors(raw: object, match: str) -> None:
    with pytest.raises(StudyError, match=match):
        normalise_metrics(raw)


def _write(tmp_path: Path, text: str, name: str = "st.py") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_study_by_path_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = (
        "from fabricsim.harness.study import Grid, Study, Figure\n"
        "def f(p):\n    return {'y': p['x'] * 2}\n"
        "STUDY = Study(name='demo', grid=Grid.product(x=[1, 2]), run=f, figures=[Figure('y', x='x', y='y')])\n"
    )
    path = _write(tmp_path, body)
    s = load_study(path)
    assert s.name == "demo" and s.path == path and len(s.points()) == 2
    (tmp_path / "studies").mkdir()
    _write(tmp_path / "studies", body, "demo.py")
    monkeypatch.chdir(tmp_path)
    assert load_study("demo").name == "demo"
    assert load_study("example_fanout").name == "example_fanout"  # found beside the package


@pytest.mark.parametrize(
    "body, match",
    [
        ("x = 1\n", "defines no STUDY"),
        ("STUDY = 3\n", "must be a fabricsim.harness.study.Study"),
        ("from fabricsim.harness.study import Study\nSTUDY = Study(name='a', run=print)\n", "missing 1 required.*grid"),
        ("from fabricsim.harness.study import Study, Grid\nSTUDY = Study(name='a', grid=Grid.product(a=[1]))\n",
         "missing 1 required.*run"),
        ("raise RuntimeError('boom')\n", "failed to load: RuntimeError: boom"),
        ("def (:\n", "failed to load: SyntaxError"),
    ],
)
def test_bad_study_files_name_the_problem(tmp_path: Path, body: str, match: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(StudyError, match=match) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_unknown_study_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load_study("nope")
    with pytest.raises(StudyError, match="does not exist"):
        load_study("nope.py")


def test_only_python_files_are_run_as_studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study file is executed: a CSV given by mistake said 'failed to load: NameError: name 'arrival_s' is not
    defined'. Any file not ending in .py is refused unread, saying what a study is; a bundled study's name still
    finds the study when a file or folder of that name is in the way."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requests.csv").write_text("arrival_s,prompt_tokens\n0,1\n")
    (tmp_path / "study").write_text("from fabricsim.harness.study import Study\n")
    for name in ("requests.csv", "study"):
        with pytest.raises(StudyError, match=rf"^{name}: not a study file: a study is a \.py file or a study's name "
                                             r"\(`fabricsim sweep --list` lists them\)$"):
            resolve_study_path(name)
    (tmp_path / "example_fanout").mkdir()
    (tmp_path / "weight_sync").write_text("not a study")
    assert resolve_study_path("example_fanout").name == "example_fanout.py"
    assert resolve_study_path("weight_sync").name == "weight_sync.py"
    (tmp_path / "sub").mkdir()
    with pytest.raises(StudyError, match="^sub is a folder: a study is a .py file"):
        resolve_study_path("sub")


def test_figure_is_a_plain_record() -> None:
    f = Figure("a", x="size", y="t", hue="n", logx=True)
    assert f.where == {} and f.facet is None


def test_parameters_and_metrics_that_cannot_be_stored_are_refused(tmp_path) -> None:
    """A 10**30 parameter gave an OverflowError traceback from Parquet; an infinite metric was stored silently."""
    from fabricsim.harness.sweep import run_sweep

    with pytest.raises(StudyError, match="does not fit in 64 bits"):
        Study(name="big", grid=Grid.product(x=[10**30]), run=lambda p: {"y": 1.0}).points()
    inf = Study(name="inf", grid=Grid.product(x=[1]), run=lambda p: {"y": float("inf")})
    report = run_sweep(inf, store=tmp_path, workers=1, progress=False)
    assert report.failed == 1


def test_rows_name_a_cluster_by_its_shortest_spelling_however_the_grid_spells_it():
    """Results are kept by topology name: a grid that says `cluster-4x8-rail` (or a study's topology function that
    does) stores the rows of `cluster-4x8`, the name its topology carries; files and other presets keep theirs."""
    s = Study(name="s", grid=Grid.points([{"topology": "cluster-4x8-rail"}, {"topology": "cluster-4x8-rail-h200"},
                                          {"topology": "hgx-h200-8"}, {"topology": "mine.yaml"}]), run=_metrics)
    assert [s.topology_of(p) for _, p in s.points()] == ["cluster-4x8", "cluster-4x8-h200", "hgx-h200-8", "mine.yaml"]
    ids = [pid for pid, _ in s.points()]
    one = Study(name="s", grid=Grid.points([{"topology": "cluster-4x8"}, {"topology": "cluster-4x8-rail"}]),
                run=_metrics)
    assert [p["topology"] for _, p in one.points()] == ["cluster-4x8"]  # one machine, one point (first kept)
    assert ids[0] == one.points()[0][0]  # the id of a machine, however spelt
    by_function = Study(name="f", grid=Grid.points([{"a": 1}]), run=_metrics, topology=lambda p: "cluster-2x8-rail")
    assert by_function.topology_of({"a": 1}) == "cluster-2x8"
