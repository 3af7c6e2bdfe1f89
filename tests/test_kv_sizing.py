"""KV sizing: bytes per token, per layer, per page and per GPU, against hand-computed values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabricsim.workloads.kvsize import KVConfigError, KVLayout
from fabricsim.workloads.models import ModelConfig, get


def test_llama3_70b_gqa_bytes_per_token():
    # 80 layers x (K + V) x 8 KV heads x 128 dims x 2 bytes (bf16)
    lay = KVLayout(get("Llama-3-70B"))
    assert lay.kind == "gqa"
    assert lay.bytes_per_token == 80 * 2 * 8 * 128 * 2 == 327_680
    assert lay.bytes_per_token_per_layer == 4096
    assert lay.page_bytes == 16 * 4096  # one layer's page of 16 tokens
    # TP 8: one KV head per GPU
    lay8 = KVLayout(get("Llama-3-70B"), tp=8)
    assert lay8.bytes_per_token_per_gpu == 327_680 / 8
    assert lay8.page_bytes == 16 * 4096 / 8


def test_deepseek_v3_mla_bytes_per_token():
    # 61 layers x (kv_lora_rank 512 + rope dim 64) x 2 bytes; the latent is replicated on every TP rank.
    lay = KVLayout(get("DeepSeek-V3"), tp=8)
    assert lay.kind == "mla"
    assert lay.bytes_per_token == 61 * (512 + 64) * 2 == 70_272
    assert lay.bytes_per_token_per_gpu == 70_272
    assert lay.bytes(100, paged=False) == 70_272 * 100 * 8  # 8 replicas


def test_dtypes_and_scales():
    m = get("Llama-3-8B")
    bf16 = KVLayout(m).bytes_per_token
    assert bf16 == 32 * 2 * 8 * 128 * 2
    assert KVLayout(m, kv_dtype="fp8").bytes_per_token == bf16 / 2
    assert KVLayout(m, kv_dtype="int4").bytes_per_token == bf16 / 4
    # int4 with one bf16 scale per 32 elements: 0.5 + 2/32 bytes per element
    assert KVLayout(m, kv_dtype="int4", quant_group=32).bytes_per_token == 32 * 2 * 8 * 128 * (0.5 + 2 / 32)
    assert KVLayout(m).bytes_per_token == m.kv_bytes_per_token()


def test_mha_kind():
    m = ModelConfig("mha", hidden_size=1024, num_layers=4, num_heads=8, num_kv_heads=8, head_dim=128,
                    intermediate_size=4096, vocab_size=1000)
    lay = KVLayout(m, tp=2)
    assert lay.kind == "mha"
    assert lay.bytes_per_token == 4 * 2 * 8 * 128 * 2
    assert lay.bytes_per_token_per_gpu == lay.bytes_per_token / 2


def test_pages_round_up():
    lay = KVLayout(get("Llama-3-8B"), page_tokens=16)
    assert [lay.pages(t) for t in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
    assert lay.bytes(17) == 32 * lay.bytes_per_token
    assert lay.page_copies(17) == 2 * 32  # two pages in each of 32 layers


@given(tokens=st.integers(1, 100_000), page=st.integers(1, 256))
def test_paged_bytes_bound(tokens, page):
    lay = KVLayout(get("Llama-3-8B"), page_tokens=page)
    exact = lay.bytes(tokens, paged=False)
    paged = lay.bytes(tokens)
    assert exact <= paged < exact + page * lay.bytes_per_token


@pytest.mark.parametrize("page", [0, -4, 1.5])
def test_bad_page_size(page):
    with pytest.raises(KVConfigError, match="page size"):
        KVLayout(get("Llama-3-8B"), page_tokens=page)


def test_budget_smaller_than_one_page():
    lay = KVLayout(get("Llama-3-70B"), page_tokens=16)
    with pytest.raises(KVConfigError, match="smaller than one page"):
        lay.budget_pages(1000)
    assert lay.budget_pages(16 * 327_680) == 1
