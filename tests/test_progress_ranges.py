"""Usable at scale: endpoint ranges, the progress line of long simulations, huge cluster presets refused at once."""

import time

import pytest

from fabricsim.errors import TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.endpoints import expand_endpoints
from fabricsim.simcore import Simulation, progress
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout


def test_node_and_gpu_ranges_expand_node_major():
    assert expand_endpoints("node0-1.gpu0-1,host") == ["node0.gpu0", "node0.gpu1", "node1.gpu0", "node1.gpu1", "host"]
    assert len(expand_endpoints("node0-63.gpu0-7")) == 512
    assert expand_endpoints(["gpu0-1", "node3.gpu2"]) == ["gpu0", "gpu1", "node3.gpu2"]


@pytest.mark.parametrize("spec", ["node3-1.gpu0", "gpu2-0", " , "])
def test_bad_ranges_are_typed_errors(spec):
    with pytest.raises(TopologyError):
        expand_endpoints(spec)


@pytest.mark.parametrize("spec", ["gpu0-3,", "gpu0,,gpu2", ",gpu1", "gpu0, ,gpu1"])
def test_an_empty_item_is_refused_not_skipped(spec):
    """A name left out (an unset shell variable between commas) was skipped: a layout of fewer GPUs than meant."""
    with pytest.raises(TopologyError, match=f"endpoint list '{spec}' has an empty item"):
        expand_endpoints(spec)
    assert expand_endpoints(["gpu0-1", " gpu3 "]) == ["gpu0", "gpu1", "gpu3"]


def test_layouts_take_range_strings():
    assert FSDPLayout("node0-1.gpu0-3").gpus == expand_endpoints("node0.gpu0-3,node1.gpu0-3")
    assert len(RolloutLayout("node2-3.gpu0-7", tp=8).gpus) == 16


def test_huge_cluster_refused_in_a_second():
    t = time.perf_counter()
    with pytest.raises(TopologyError, match="800,000 GPUs"):
        presets.get("cluster-100000x8")
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("name", ["cluster-1x4096", "cluster-2x16", "cluster-4x0"])
def test_cluster_nodes_are_hgx_boards_of_at_most_8_gpus(name):
    """`hgx` refuses a board of more than 8 GPUs; a cluster of such nodes once built one NVSwitch of 4,096 GPUs."""
    with pytest.raises(TopologyError, match=f"preset '{name}': a cluster node is one HGX board of 1..8 GPUs"):
        presets.get(name)


def _busy_sim() -> Simulation:
    sim = Simulation(presets.hgx_h200(8), record_load=False)
    prev = None
    for i in range(600):
        prev = sim.transfer(f"t{i}", f"gpu{i % 8}", f"gpu{(i + 1) % 8}", 1 << 20, after=[prev] if prev else [])
    return sim


@pytest.mark.parametrize("loop", ["simpy", "compiled"])
def test_progress_line_after_delay(monkeypatch, capsys, loop):
    from fabricsim.simcore import lowering

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(lowering, "STEPS_PER_CALL", 100)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "1")
    res = _busy_sim().run(loop=loop)
    assert res.makespan_s > 0
    assert "fabricsim: simulating" in capsys.readouterr().err


def test_progress_plain_lines_when_stderr_is_no_terminal(monkeypatch, capsys):
    """In a log file the line is plain text, one per LOG_EVERY_S, with no carriage returns."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "1")
    _busy_sim().run(loop="simpy")
    err = capsys.readouterr().err
    assert err.startswith("fabricsim: simulating: ") and "flow events" in err
    assert "\r" not in err and err.count("\n") == 1


def test_compiled_progress_counts_items_and_the_time_left(monkeypatch, capsys):
    """The compiled loop knows all its items: its line says how many finished, of how many, and (once there is a
    pace to go by) about how long the rest will take."""
    from fabricsim.simcore import lowering

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(lowering, "STEPS_PER_CALL", 50)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "1")
    _busy_sim().run(loop="compiled")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fabricsim: simulating: ")]
    assert len(lines) > 3
    done = [int(ln.split("simulating: ")[1].split(" of ")[0].replace(",", "")) for ln in lines]
    assert all(" of 600 items done" in ln for ln in lines)
    assert done == sorted(done) and done[-1] < 600


def test_time_left_follows_the_recent_pace(monkeypatch):
    """The estimate goes by the last ~30 s (or third of the run, while shorter), not the whole run: a slowing run's
    estimate keeps up, and is called a floor as soon as the recent pace falls behind."""
    monkeypatch.setattr(progress, "PACE_WINDOW_S", 30.0)
    clock = iter([0.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    p = progress.Progress(delay_s=0.0)
    assert p._left(100, 100_000) == ""  # the first count: no pace yet
    assert p._left(1100, 100_000) == f", about {10 / 1000 * 98_900 / 60:.0f} min left"  # 100 items/s
    assert p._left(2100, 100_000) == f", about {20 / 2000 * 97_900 / 60:.0f} min left"
    assert p._left(3100, 100_000) == f", about {30 / 3000 * 96_900 / 60:.0f} min left"
    # from here the run slows to 10 items/s; the counts older than the window (a third of the run so far, up to
    # 30 s) drop out of the pace, and once the recent pace is 1.25x slower than the pace since the first count the
    # estimate is a floor: at once here (with the whole 30 s window the first slow count read 1.11x, "about")
    assert p._left(3200, 100_000) == f", more than {20 / 1100 * 96_800 / 60:.0f} min left"  # since t = 20 (1.41x)
    assert p._left(3300, 100_000) == f", more than {20 / 200 * 96_700 / 60:.0f} min left"  # since t = 30
    assert p._left(3400, 100_000) == f", more than {20 / 200 * 96_600 / 60:.0f} min left"  # since t = 40


def test_no_estimate_without_progress(monkeypatch):
    clock = iter([0.0, 0.0, 10.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    p = progress.Progress(delay_s=0.0)
    assert p._left(100, 1000) == ""
    assert p._left(100, 1000) == ""  # nothing finished since: no pace to go by


def test_solve_work_counts_toward_a_call_budget():
    """A step that re-rates hundreds of classes costs its share of the loop's budget, and the budget runs across
    the calls that return to grow the finish heap (they come often where each change re-rates many flows), so
    the progress line moves on an all-to-all too: 255 copies into one GPU, each departure re-rating the rest,
    hand back control several times for a budget of 1,000 (more than a third of their ~2,500 plain steps);
    handing back control changes no result."""
    from fabricsim.hwmodels import presets
    from fabricsim.simcore import _eventloop as loop
    from fabricsim.simcore import lowering

    topo = presets.get("cluster-32x8")
    gpus = [f"node{n}.gpu{g}" for n in range(32) for g in range(8)]

    def run(budget: int, mp: pytest.MonkeyPatch) -> tuple[int, list[float]]:
        sim = Simulation(topo, record_load=False)
        for i, a in enumerate(gpus[1:]):
            sim.transfer(None, a, gpus[0], float((i + 1) << 20))
        statuses = []
        real = loop.run

        def counted(*args):
            statuses.append(real(*args))
            return statuses[-1]

        mp.setattr(lowering, "STEPS_PER_CALL", budget)
        mp.setattr(loop, "run", counted)
        res = sim.run(loop="compiled")
        return statuses.count(loop.YIELD), [r.finish_s for r in res.records]

    with pytest.MonkeyPatch.context() as mp:
        _, whole = run(1 << 40, mp)
        yields, split = run(1000, mp)
    assert split == whole
    assert yields >= 5


def test_declaring_a_large_run_shows_progress_too(monkeypatch, capsys):
    """Describing a million items takes seconds before the first event: that phase has its line as well, and the
    simulating line follows it at once."""
    from fabricsim.simcore import simulation

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    monkeypatch.setattr(simulation, "PROGRESS_EVERY", 63)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "1")
    _busy_sim().run(loop="simpy")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("fabricsim: declaring: 64 transfers, tasks and delays")
    assert lines[1].startswith("fabricsim: simulating: ") and len(lines) == 2


def test_progress_off(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setenv("FABRICSIM_PROGRESS", "0")
    _busy_sim().run()
    assert capsys.readouterr().err == ""


def test_a_range_where_one_endpoint_is_wanted_says_so():
    """`node0-1.gpu1` in a transfer (one endpoint) is a list: the error says that, not only 'unknown'."""
    from fabricsim.hwmodels import presets
    from fabricsim.hwmodels.topology import TopologyError

    topo = presets.get("cluster-2x8")
    with pytest.raises(TopologyError, match="names a list of endpoints, and this takes one"):
        topo.resolve("node0-1.gpu1")
    with pytest.raises(TopologyError) as err:
        topo.resolve("node0.gpu9")
    assert "names a list" not in str(err.value)


def test_no_estimate_in_the_first_seconds(monkeypatch):
    """The first seconds of a large run go faster than the rest: no estimate before ETA_AFTER_S of wall time."""
    clock = iter([0.0, 1.0, 2.0, 9.9, 10.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    p = progress.Progress(delay_s=0.0)
    assert p._left(100, 1000) == "" and p._left(200, 1000) == "" and p._left(300, 1000) == ""
    # over the last third of the run (since t = 2), 1.33x slower than since the first count: a floor
    assert p._left(400, 1000) == f", more than {(10.0 - 2.0) / 200 * 600:.0f} s left"


def test_the_terminal_bar_shows_no_time_left_in_the_first_seconds(monkeypatch, capsys):
    """In a terminal, tqdm's own estimate is as optimistic early on as ours was: its time left is shown only
    from ETA_AFTER_S on."""
    now = [0.0]  # the wall clock, as many readings as the code takes
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = progress.Progress(delay_s=0.0)
    p._plain = False
    for t, done in ((1.0, 100), (2.0, 200), (12.0, 300)):
        now[0] = t
        p.tick(t / 10, done // 10, 5, done=done, total=1000)
        if t < progress.ETA_AFTER_S:
            assert p._bar.bar_format == progress.EARLY_BAR and "<" not in str(p._bar)
    assert p._bar.bar_format is None
    p.close()


def test_the_terminal_bar_says_when_the_run_is_slowing_down(monkeypatch):
    """tqdm's estimate goes by the recent pace as ours does: while the run slows, the postfix says it is a floor."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = progress.Progress(delay_s=0.0)
    p._plain = False
    for t, done in ((1.0, 100), (11.0, 1100), (21.0, 2100)):  # 100 items/s throughout
        now[0] = t
        p.tick(t, done, 5, done=done, total=100_000)
    assert "slowing" not in str(p._bar)
    now[0] = 51.0
    p.tick(51.0, 2400, 5, done=2400, total=100_000)  # 10 items/s since t = 21
    assert "slowing down: the time left shown is a floor" in p._bar.postfix
    p.close()
