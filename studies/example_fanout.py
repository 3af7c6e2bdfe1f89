"""Example study: N GPUs reading from (or writing to) pinned host memory at once.

The question it answers: how does per-GPU host-transfer bandwidth fall as more GPUs of one machine copy
at the same time, and from what size on is a copy bandwidth-bound rather than latency-bound? It is small
(140 points) and real — every point runs the core `Simulation` — so the sweep runner, the store and the
plots have something to work on before the bigger weight-sync and KV studies.

Run it:  fabricsim sweep example_fanout && fabricsim plot example_fanout
Measured points (real H100 and H200 runs of examples/measure_h2d_fanout.py) join the predictions with
    python studies/example_fanout.py examples/data/h2d_fanout_*.json
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fabricsim.harness.store import ResultsStore, StoreError, make_row
from fabricsim.harness.study import Figure, Grid, PointContext, Study, point_id
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.intervals import predict_interval
from fabricsim.hwmodels.topology import Topology, nearest_host
from fabricsim.simcore import Simulation
from fabricsim.simcore.records import Result

GPUS = {"h100-1": 1, "h200-2": 2, "hgx-h200-8": 8}
SIZES = [1024 * 4**k for k in range(1, 11)]  # 4 KiB, 16 KiB, ..., 1 GiB


def _fanout(topo: Topology, point: dict, **sim_kwargs: Any) -> Result:
    sim = Simulation(topo, **sim_kwargs)
    for i, gpu in enumerate(topo.gpus()[: point["fanout"]]):
        host = nearest_host(topo, gpu)
        src, dst = (host, gpu) if point["direction"] == "h2d" else (gpu, host)
        sim.transfer(f"copy{i}", src, dst, point["size_bytes"], tag=point["direction"])
    return sim.run()


def run_point(point: dict, ctx: PointContext | None = None) -> dict:
    """`fanout` GPUs each move `size_bytes` to/from host memory at t=0; report makespan and bandwidth."""
    topo = presets.get(point["topology"])
    result = _fanout(topo, point)
    if ctx is not None and ctx.trace_path is not None:
        result.write_trace(str(ctx.trace_path))
    makespan = result.makespan_s
    total = point["size_bytes"] * point["fanout"]
    # the makespan's 90% interval: re-runs on topologies drawn from the profile's spreads (hwmodels.intervals)
    interval = predict_interval(lambda t: _fanout(t, point, record_load=False).makespan_s, topo, samples=16,
                                point=makespan)
    return {
        "makespan_s": (makespan, "s", interval),
        "aggregate_GBps": (total / makespan / 1e9, "GB/s"),
        "per_gpu_GBps": (point["size_bytes"] / makespan / 1e9, "GB/s"),
    }


GRID = (
    Grid.product(topology=list(GPUS), direction=["h2d", "d2h"], fanout=[1, 2, 4, 8], size_bytes=SIZES)
    .where(lambda p: p["fanout"] <= GPUS[p["topology"]])
)

STUDY = Study(
    name="example_fanout",
    description=__doc__.splitlines()[0],
    grid=GRID,
    run=run_point,
    calibration="default",
    figures=[
        Figure("per_gpu_bandwidth", x="size_bytes", y="per_gpu_GBps", hue="fanout", facet="topology",
               logx=True, where={"direction": "h2d"}, title="Per-GPU host→GPU bandwidth vs size and fan-out"),
        Figure("makespan", x="size_bytes", y="makespan_s", hue="fanout", facet="topology", logx=True, logy=True,
               where={"direction": "h2d"}, title="Host→GPU fan-out: time until the last GPU has its copy"),
        Figure("d2h_aggregate", x="fanout", y="aggregate_GBps", hue="topology",
               where={"direction": "d2h", "size_bytes": SIZES[-1]}, title="GPU→host aggregate bandwidth, 1 GiB each"),
    ],
)


def measured_rows(path: str | Path) -> list[dict]:
    """Rows (`source="hw"`) from a file written by examples/measure_h2d_fanout.py on a real machine.

    The run id is derived from the file's bytes, so importing the same measurements twice is refused by the
    store (it never overwrites) instead of counting them twice.
    """
    raw = Path(path).read_bytes()
    doc = json.loads(raw)
    run_id = "hw-" + hashlib.sha256(raw).hexdigest()[:12]
    created = datetime.fromisoformat(doc["created_at"])
    versions = json.dumps({"torch": doc.get("torch"), "cuda": doc.get("cuda")}, sort_keys=True)
    rows = []
    for rec in doc["records"]:
        params = {k: rec[k] for k in ("topology", "direction", "fanout", "size_bytes")}
        rows.append(make_row(study=STUDY.name, run_id=run_id, point_id=point_id(params, "measured"), params=params,
                             metric=rec["metric"], value=rec["value"], unit=rec["unit"], source="hw",
                             calibration_id="", device=doc["device"], versions=versions, created_at=created))
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Import measured fan-out results into the results store.")
    ap.add_argument("files", nargs="+", help="JSON files from examples/measure_h2d_fanout.py")
    ap.add_argument("--store", default=None, help="results store (default: $FABRICSIM_STORE or ./results)")
    args = ap.parse_args()
    store = ResultsStore(args.store)
    for f in args.files:
        rows = measured_rows(f)
        try:
            print(store.write(rows, study=STUDY.name, run_id=rows[0]["run_id"]))
        except StoreError as exc:
            print(f"{f}: {exc}")
