"""The cluster-scale study: its grid, its placements, and one point of each kind (an answer, an infeasible one)."""

from fabricsim.harness.study import load_study
from fabricsim.studies import cluster_scale


def test_grid_stops_each_strategy_at_its_size():
    study = load_study("cluster_scale")
    points = list(study.grid)
    assert len(points) == sum(len(cluster_scale.MODELS) * sum(g <= top for g in cluster_scale.GPUS)
                              for top in cluster_scale.MAX_GPUS.values())
    assert max(p["gpus"] for p in points if p["strategy"] == "nccl-broadcast") == 1024
    assert all(p["gpus"] <= cluster_scale.MAX_GPUS[p["strategy"]] for p in points)
    assert study.topology_of({"gpus": 1024, "model": "Kimi-K2", "strategy": "nccl-broadcast"}) == "cluster-128x8-h200"


def test_placement_halves_the_cluster_and_widens_engines_for_big_models():
    setup = cluster_scale.setup_of({"model": "DeepSeek-V3", "strategy": "rdma-p2p", "gpus": 64})
    assert len(setup.trainer.gpus) == len(setup.rollout.gpus) == 32
    assert setup.rollout.tp == 16 and setup.rollout_dtype == "fp8"
    assert cluster_scale.setup_of({"model": "Qwen3-235B-A22B", "strategy": "rdma-p2p", "gpus": 8}).rollout.tp == 4


def test_one_answer_and_one_infeasible_point():
    study = load_study("cluster_scale")
    ok = study.run({"strategy": "nccl-broadcast", "model": "Qwen3-235B-A22B", "gpus": 16})
    assert ok["feasible"][0] == 1.0 and ok["sync_s"][0] > 0
    ipc = study.run({"strategy": "cuda-ipc-buckets", "model": "Qwen3-235B-A22B", "gpus": 16})
    assert ipc["feasible"][0] == 0.0  # CUDA IPC handles do not cross nodes


def test_a_single_sync_loads_no_sweep_machinery():
    """`fabricsim sync` and one point of this layout (benchmarks/sync_scale.py) import neither pandas nor
    pyarrow (~0.3 s of every run's wall time); the study itself still may."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import fabricsim.workloads.weightsync.cli\n"
            "from fabricsim.workloads.weightsync.cluster_layout import setup_of\n"
            "from fabricsim.workloads.weightsync import get, simulate_sync\n"
            "simulate_sync(setup_of({'model': 'Qwen3-235B-A22B', 'gpus': 16}), get('nccl-broadcast'))\n"
            "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_variant_runs_its_strategy_with_its_knobs():
    """`rdma-p2p max_sim_tasks=1` is rdma-p2p with one simulated pipeline task per GPU: the same sync as asking for
    that knob, and a different one from the default's (which overlaps four tasks)."""
    from fabricsim.workloads.weightsync import get, simulate_sync

    point = {"strategy": "rdma-p2p max_sim_tasks=1", "model": "Qwen3-235B-A22B", "gpus": 16}
    strategy = cluster_scale.strategy_of(point["strategy"])
    assert strategy.name == "rdma-p2p" and strategy.knobs.max_sim_tasks == 1
    row = load_study("cluster_scale").run(point)
    one = simulate_sync(cluster_scale.setup_of(point), get("rdma-p2p", max_sim_tasks=1))
    four = simulate_sync(cluster_scale.setup_of(point), get("rdma-p2p"))
    assert row["sync_s"][0] == one.sync_s != four.sync_s
    assert cluster_scale.strategy_of("host-staged").name == "host-staged"
