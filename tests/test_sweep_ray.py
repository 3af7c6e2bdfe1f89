"""The Ray backend gives exactly the rows of the local backend (one local Ray session, 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fabricsim.harness.store import ResultsStore
from fabricsim.harness.sweep import run_sweep

ray = pytest.importorskip("ray")

STUDY = '''
from fabricsim.harness.study import Grid, Study

def run(p):
    if p["n"] == 5:
        raise RuntimeError("five")
    return {"t": (p["n"] / 7.0, "s"), "sq": p["n"] ** 2}

STUDY = Study(name="raytoy", grid=Grid.product(n=list(range(10)), mode=["a", "b"]), run=run)
'''


@pytest.mark.slow
def test_ray_and_local_backends_give_identical_rows(tmp_path: Path) -> None:
    study = tmp_path / "raytoy.py"
    study.write_text(STUDY)
    local, remote = ResultsStore(tmp_path / "local"), ResultsStore(tmp_path / "ray")
    run_sweep(study, store=local, backend="local", workers=2, progress=False)
    report = run_sweep(study, store=remote, backend="ray", workers=2, progress=False, chunk_size=3)
    assert report.ran == 20 and report.failed == 2
    assert not ray.is_initialized()  # the Ray we started is stopped again

    def comparable(df: pd.DataFrame) -> pd.DataFrame:
        return df.drop(columns=["run_id", "created_at"]).sort_values(["point_id", "metric"]).reset_index(drop=True)

    a, b = comparable(local.load("raytoy")), comparable(remote.load("raytoy"))
    assert len(a) == 18 * 2 + 2
    pd.testing.assert_frame_equal(a, b)
