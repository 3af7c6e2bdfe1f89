"""The placement of the cluster-scale study (`studies/cluster_scale.py`, which says why): half of
`cluster-Nx8-h200` trains (FSDP, bf16), half serves fp8 weights in expert-parallel engines of the smallest TP
that fits. Kept apart from the study so that a single sync of that layout (`benchmarks/sync_scale.py`,
`benchmarks/route_build.py`) loads no sweep machinery: the study's module brings pandas and pyarrow, ~0.3 s of
every point's wall time.
"""

from __future__ import annotations

from fabricsim.hwmodels import presets

from .. import models
from ..placement import FSDPLayout, RolloutLayout
from .base import SyncSetup, fp8_conversion


def layout(gpus: int) -> tuple[str, str, str]:
    """(topology, trainer GPUs, rollout GPUs) for a cluster of `gpus` GPUs, half training."""
    nodes = gpus // 8
    if nodes == 1:
        return "cluster-1x8-h200", "node0.gpu0-3", "node0.gpu4-7"
    return f"cluster-{nodes}x8-h200", f"node0-{nodes // 2 - 1}.gpu0-7", f"node{nodes // 2}-{nodes - 1}.gpu0-7"


def expert_parallel_tp(model: models.ModelConfig, hbm_bytes: int, n_rollout: int) -> int:
    """Smallest power-of-two TP >= 8 (capped by the rollout GPUs) whose fp8 weights fit in half of HBM: the
    expert-parallel engines of a large cluster (not `studies.weight_sync.rollout_tp`, the smallest TP that fits
    one small box's dense engines)."""
    tp = 8
    fp8 = fp8_conversion().ratio  # with its block scales, as the engines hold them
    while tp < n_rollout and model.weight_bytes() * fp8 / tp > 0.5 * hbm_bytes:
        tp *= 2
    return min(tp, n_rollout)


def setup_of(point: dict) -> SyncSetup:
    """The sync setup of a point of the study ({"model": name, "gpus": count}; other keys are ignored)."""
    topo_name, trainer, rollout = layout(int(point["gpus"]))
    topo = presets.get(topo_name, calibration=None)
    model = models.get(point["model"])
    rollout_gpus = FSDPLayout(rollout).gpus
    tp = expert_parallel_tp(model, topo.gpu(rollout_gpus[0]).hbm_bytes, len(rollout_gpus))
    return SyncSetup(topo, model, FSDPLayout(trainer), RolloutLayout(rollout_gpus, tp=tp, expert_parallel=True),
                     rollout_dtype="fp8")
