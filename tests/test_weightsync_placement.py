"""Resharding conserves bytes: every element of every tensor reaches every rollout GPU that needs it, exactly once."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.workloads import models
from fabricsim.workloads.errors import InfeasibleError, PlacementError
from fabricsim.workloads.placement import (
    FSDPLayout,
    MegatronLayout,
    RolloutLayout,
    check_fits,
    overlap_numel,
    reshard,
)

TINY_MOE = models.ModelConfig.from_hf({
    "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "n_shared_experts": 1, "vocab_size": 250, "model_type": "qwen3_moe"}, name="tiny-moe")
TINY_MLA = models.ModelConfig.from_hf({
    "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
    "moe_intermediate_size": 16, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "q_lora_rank": 24, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16, "v_head_dim": 16, "vocab_size": 101}, name="tiny-mla")


def gpus(n: int, start: int = 0) -> list[str]:
    return [f"gpu{i}" for i in range(start, start + n)]


def _rollout_need(model, rollout):
    """Reference: per (tensor, rollout GPU), the elements its shard holds."""
    need = {}
    for t in model.tensors():
        for engine in rollout.engines:
            for k, g in enumerate(engine):
                sh = rollout.shard(t, model, k)
                if sh is not None:
                    need[(t.name, g)] = sh.numel(t.shape) * t.nbytes / t.numel
    return need


def _assert_conserved(model, trainer, rollout):
    plan = reshard(model, trainer, rollout, detail=True)
    got = defaultdict(float)
    for name, _src, dst, nbytes in plan.pieces:
        got[(name, dst)] += nbytes
    need = _rollout_need(model, rollout)
    assert set(got) == {k for k, v in need.items() if v > 0}
    for key, v in need.items():
        assert got.get(key, 0.0) == pytest.approx(v, abs=0)
    # Column sums equal what each rollout GPU keeps; the matrix is the pieces aggregated.
    np.testing.assert_allclose(plan.matrix.sum(axis=0), plan.need_bytes)
    assert plan.total_bytes == pytest.approx(sum(need.values()))
    # The vectorised planner (no per-piece detail, what the strategies use) gives the same matrix.
    fast = reshard(model, trainer, rollout)
    np.testing.assert_allclose(fast.matrix, plan.matrix, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(fast.need_bytes, plan.need_bytes)
    return plan


@pytest.mark.parametrize("model", [TINY_MOE, TINY_MLA, models.get("Llama-3-8B")], ids=lambda m: m.name)
def test_fsdp_to_tp_conserves(model) -> None:
    plan = _assert_conserved(model, FSDPLayout(gpus(4)), RolloutLayout(gpus(4, 4), tp=2))
    assert plan.held_bytes.sum() == pytest.approx(model.weight_bytes())  # FSDP holds one copy


@pytest.mark.parametrize(("tp", "pp", "ep", "rtp", "rep"), [(2, 2, 1, 4, False), (1, 1, 4, 2, True),
                                                            (2, 1, 2, 8, False), (4, 1, 8, 1, False)])
def test_megatron_to_tp_conserves(tp: int, pp: int, ep: int, rtp: int, rep: bool) -> None:
    _assert_conserved(TINY_MOE, MegatronLayout(gpus(8), tp=tp, pp=pp, ep=ep),
                      RolloutLayout(gpus(8), tp=rtp, expert_parallel=rep))


def test_colocated_tp1_sends_everything_to_each_engine() -> None:
    model = models.get("Llama-3-8B")
    plan = reshard(model, FSDPLayout(gpus(8)), RolloutLayout(gpus(8), tp=1))
    np.testing.assert_allclose(plan.need_bytes, model.weight_bytes())
    # Each GPU already holds 1/8 of what it needs: the diagonal.
    assert np.trace(plan.matrix) == pytest.approx(model.weight_bytes(), rel=1e-3)


@settings(max_examples=25, deadline=None)
@given(n_train=st.sampled_from([1, 2, 3, 4, 6, 8]), rtp=st.sampled_from([1, 2, 4, 8]), engines=st.integers(1, 2),
       rep=st.booleans(), mla=st.booleans())
def test_fsdp_reshard_property(n_train: int, rtp: int, engines: int, rep: bool, mla: bool) -> None:
    model = TINY_MLA if mla else TINY_MOE
    if rtp == 8 and mla:
        rtp = 4  # 4 heads
    _assert_conserved(model, FSDPLayout(gpus(n_train)), RolloutLayout(gpus(rtp * engines, 8), tp=rtp,
                                                                      expert_parallel=rep))


def test_overlap_of_row_and_column_blocks() -> None:
    from fabricsim.workloads.placement import Shard
    assert overlap_numel((10, 6), Shard(0, (0, 5)), Shard(1, (0, 3))) == 15
    assert overlap_numel((10, 6), Shard(0, (0, 5)), Shard(0, (5, 10))) == 0
    assert overlap_numel((10, 6), Shard(None, None), Shard(0, (2, 4))) == 12


def test_bad_layouts_raise_typed_errors() -> None:
    with pytest.raises(PlacementError, match="not a multiple of TP"):
        RolloutLayout(gpus(6), tp=4)
    with pytest.raises(PlacementError, match="TP x PP"):
        MegatronLayout(gpus(6), tp=4)
    with pytest.raises(PlacementError, match="EP 3"):
        MegatronLayout(gpus(8), tp=2, ep=3)
    with pytest.raises(PlacementError, match="attention heads"):
        reshard(models.get("Llama-3-8B"), FSDPLayout(gpus(2)), RolloutLayout(gpus(3), tp=3))
    with pytest.raises(PlacementError, match="experts"):
        reshard(TINY_MOE, MegatronLayout(gpus(6), tp=1, ep=3), RolloutLayout(gpus(2), tp=2))
    # a dense model has no experts: said so, not "does not divide the 0 experts" (a new-user trial)
    with pytest.raises(PlacementError, match="Megatron EP 2: Llama-3-8B is a dense model, with no experts"):
        reshard(models.get("Llama-3-8B"), MegatronLayout(gpus(2), tp=1, ep=2), RolloutLayout(gpus(2), tp=2))
    with pytest.raises(PlacementError, match="rollout expert parallelism: Llama-3-8B is a dense model"):
        reshard(models.get("Llama-3-8B"), FSDPLayout(gpus(2)), RolloutLayout(gpus(2), tp=2, expert_parallel=True))


def test_layout_that_does_not_fit_is_infeasible() -> None:
    model = models.get("Llama-3-405B")
    plan = reshard(model, FSDPLayout(gpus(8)), RolloutLayout(gpus(8), tp=4))
    with pytest.raises(InfeasibleError, match="does not fit on gpu0"):
        check_fits(plan, dict.fromkeys(plan.rollout_gpus, 141 * 2**30))
    small = reshard(models.get("Llama-3-8B"), FSDPLayout(gpus(8)), RolloutLayout(gpus(8), tp=4))
    check_fits(small, dict.fromkeys(small.rollout_gpus, 141 * 2**30), reserve_fraction=0.5)


@pytest.mark.parametrize(("model", "trainer", "rollout"), [
    (models.get("Llama-3-8B"), FSDPLayout(gpus(4)), RolloutLayout(gpus(4, 4), tp=2)),
    (TINY_MOE, MegatronLayout(gpus(8), tp=2, pp=2, ep=2), RolloutLayout(gpus(8), tp=4, expert_parallel=True)),
    (TINY_MLA, FSDPLayout(gpus(3)), RolloutLayout(gpus(4), tp=2)),
    (models.get("Llama-3-8B"), FSDPLayout(gpus(16)), RolloutLayout(gpus(16, 16), tp=1)),
], ids=["llama-fsdp", "moe-megatron", "mla-fsdp", "llama-16-engines"])
def test_assembled_plan_conserves_and_balances(model, trainer, rollout) -> None:
    """Column sums are what each rollout GPU keeps; no trainer GPU sends more than twice the mean."""
    from fabricsim.workloads.placement import assembled_plan
    plan, full = reshard(model, trainer, rollout), assembled_plan(model, trainer, rollout)
    np.testing.assert_allclose(full.send.sum(axis=0), plan.need_bytes)
    # Every tensor is assembled at least once, at most once per engine.
    assert model.weight_bytes() * (1 - 1e-12) <= full.unique.sum() <= len(rollout.engines) * model.weight_bytes()
    assert np.all(np.diag(full.fetch) == 0)
    assert full.fetch.sum() <= full.unique.sum()
    out = full.send.sum(axis=1)
    assert out.max() <= 2 * out.mean()
