"""Model specs: published parameter counts, tensor lists that add up, KV bytes per token by attention kind."""

from __future__ import annotations

import pytest

from fabricsim.errors import FabricsimError
from fabricsim.workloads import models
from fabricsim.workloads.errors import UnknownModelError, WorkloadError

# Kimi-K2's report says 1.04T while its released config.json gives 1.026T (the model card says "1T"); that
# 1.3% gap is in the published numbers themselves, so it gets its own allowance, stated here.
TOLERANCE = {"Kimi-K2": 0.015}


@pytest.mark.parametrize("name", models.names())
def test_param_count_matches_published_total(name: str) -> None:
    cfg = models.get(name)
    published = models.PUBLISHED_PARAMS[name]
    assert abs(cfg.param_count() / published - 1) <= TOLERANCE.get(name, 0.01)


@pytest.mark.parametrize("name", models.names())
def test_tensor_list_sums_to_param_count(name: str) -> None:
    cfg = models.get(name)
    tensors = cfg.tensors()
    assert sum(t.numel for t in tensors) == cfg.param_count()
    assert len({t.name for t in tensors}) == len(tensors)
    name0, shape0, dtype0 = tensors[0]  # unpacks as (name, shape, dtype)
    assert name0 == "model.embed_tokens.weight" and dtype0 == "bf16" and shape0 == (cfg.vocab_size, cfg.hidden_size)


def test_llama3_8b_closed_form() -> None:
    cfg = models.get("Llama-3-8B")
    h, L, V, inter = 4096, 32, 128256, 14336
    per_layer = 2 * h * h + 2 * h * 1024 + 3 * h * inter + 2 * h
    assert cfg.param_count() == L * per_layer + 2 * V * h + h


def test_active_params_of_moe_models() -> None:
    # Published activated parameters: DeepSeek-V3 37B, Kimi-K2 32B, Qwen3-235B-A22B 22B (embeddings excluded
    # here, as a lookup is not a matmul; the published figures round loosely).
    assert models.get("DeepSeek-V3").active_param_count() == pytest.approx(37e9, rel=0.03)
    assert models.get("Kimi-K2").active_param_count() == pytest.approx(32e9, rel=0.03)
    assert models.get("Qwen3-235B-A22B").active_param_count() == pytest.approx(22e9, rel=0.03)
    dense = models.get("Llama-3-8B")
    assert dense.active_param_count() == dense.param_count() - dense.vocab_size * dense.hidden_size


def test_kv_bytes_per_token() -> None:
    assert models.get("Llama-3-8B").kv_bytes_per_token() == 32 * 2 * 8 * 128 * 2  # GQA, bf16
    assert models.get("Llama-3-8B").kv_bytes_per_token("fp8") == 32 * 2 * 8 * 128
    assert models.get("DeepSeek-V3").kv_bytes_per_token() == 61 * (512 + 64) * 2  # MLA latent + rope key
    mha = models.ModelConfig("mha", 1024, 2, 16, 16, 64, 4096, 1000)
    assert mha.kv_bytes_per_token() == 2 * 2 * 16 * 64 * 2


def test_expected_active_experts_bounds() -> None:
    cfg = models.get("Qwen3-30B-A3B")
    assert cfg.expected_active_experts(1) == pytest.approx(8)
    assert cfg.expected_active_experts(4096) == pytest.approx(128, rel=1e-6)
    assert models.get("Llama-3-8B").expected_active_experts(64) == 0.0


def test_from_hf_minimal_and_dtype() -> None:
    cfg = models.ModelConfig.from_hf({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                      "intermediate_size": 128, "vocab_size": 100, "tie_word_embeddings": True},
                                     name="tiny", dtype="fp8")
    assert cfg.head_dim == 16 and cfg.num_kv_heads == 4
    assert cfg.weight_bytes() == cfg.param_count()
    assert cfg.with_dtype("bf16").weight_bytes() == 2 * cfg.param_count()
    assert not any(t.name == "lm_head.weight" for t in cfg.tensors())


def test_tensor_layer_and_expert_indices() -> None:
    cfg = models.get("Qwen3-30B-A3B")
    t = next(t for t in cfg.layer_tensors(3) if ".experts.7." in t.name)
    assert t.layer == 3 and t.expert == 7
    assert cfg.tensors()[0].layer is None


def test_bad_input_is_typed() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'GPT-5'.*Llama-3-8B"):
        models.get("GPT-5")
    with pytest.raises(UnknownModelError, match="hidden_size"):
        models.ModelConfig.from_hf({"num_hidden_layers": 2})
    with pytest.raises(WorkloadError, match="multiple"):
        models.ModelConfig("bad", 64, 2, 6, 4, 16, 128, 100)
    with pytest.raises(FabricsimError, match="dtype"):
        models.get("Llama-3-8B", dtype="fp7")
