"""Decode-step model: roofline terms, zero-copy reads at peer bandwidth, standalone == simulated."""

from __future__ import annotations

import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.topology import path_bandwidth_Bps
from fabricsim.simcore import Simulation
from fabricsim.workloads import models
from fabricsim.workloads.decode import (
    DecodeBatch,
    decode_work,
    schedule_decode_step,
    step_cost,
)
from fabricsim.workloads.errors import WorkloadError

TOPO = presets.get("hgx-h200-8", calibration=None)
GPU = TOPO.gpu("gpu0")
TINY_KV = DecodeBatch(batch=1, context=1)  # weights dominate: KV and FLOPs are negligible


def test_local_step_is_weight_bytes_over_hbm_when_weights_dominate() -> None:
    model = models.get("Llama-3-8B")
    cost = step_cost(model, TINY_KV, GPU)
    assert cost.bound == "hbm"
    embed = model.vocab_size * model.hidden_size
    assert cost.work.weight_bytes == (model.param_count() - embed) * 2
    assert cost.step_s == pytest.approx((cost.work.weight_bytes + cost.work.kv_bytes) / GPU.hbm_Bps)


def test_zero_copy_step_is_weight_bytes_over_peer_bandwidth() -> None:
    model = models.get("Llama-3-70B")
    peer = path_bandwidth_Bps(TOPO, "gpu0", "gpu1")
    assert peer == pytest.approx(450e9 * 0.87)  # NVLink 4, 18 links, 87% efficiency
    cost = step_cost(model, TINY_KV, GPU, tp=4, weight_read_Bps=peer)
    assert cost.bound == "remote"
    assert cost.step_s == pytest.approx(cost.work.weight_bytes / peer)

    sim = Simulation(TOPO)
    schedule_decode_step(sim, "gpu1", model, TINY_KV, tp=4, weights_at="gpu0", id="s")
    res = sim.run()
    latency = TOPO.path("gpu0", "gpu1").latency_s
    assert res.makespan_s == pytest.approx(latency + cost.work.weight_bytes / peer, rel=1e-9)


def test_simulated_local_step_matches_standalone() -> None:
    model = models.get("Qwen3-30B-A3B")
    batch = DecodeBatch(batch=128, context=8192)
    cost = step_cost(model, batch, GPU, tp=2)
    sim = Simulation(TOPO)
    schedule_decode_step(sim, "gpu0", model, batch, tp=2, id="s")
    assert sim.run().makespan_s == pytest.approx(cost.step_s, rel=1e-9)


def test_compute_bound_at_huge_batch() -> None:
    model = models.get("Llama-3-8B")
    cost = step_cost(model, DecodeBatch(batch=4096, context=16), GPU)
    assert cost.bound == "compute"
    assert cost.compute_s == pytest.approx(cost.work.flops / 989e12)


def test_tp_split_of_weights_and_kv() -> None:
    gqa, mla = models.get("Llama-3-70B"), models.get("DeepSeek-V3")
    b = DecodeBatch(batch=8, context=1000)
    w1, w8 = decode_work(gqa, b, 1), decode_work(gqa, b, 8)
    assert w8.weight_bytes == pytest.approx(w1.weight_bytes / 8)
    assert w8.kv_bytes == pytest.approx(w1.kv_bytes / 8)  # 8 KV heads over 8 ranks
    assert decode_work(gqa, b, 16).kv_bytes == pytest.approx(w1.kv_bytes / 8)  # replicated beyond 8
    assert decode_work(mla, b, 8).kv_bytes == decode_work(mla, b, 1).kv_bytes  # MLA latent replicated


def test_moe_reads_only_touched_experts() -> None:
    model = models.get("Qwen3-235B-A22B")
    small, big = decode_work(model, DecodeBatch(batch=1), 1), decode_work(model, DecodeBatch(batch=4096), 1)
    embed = model.vocab_size * model.hidden_size * 2
    assert big.weight_bytes == pytest.approx(model.weight_bytes() - embed, rel=1e-6)
    assert small.weight_bytes < 0.2 * big.weight_bytes


def test_bad_input() -> None:
    with pytest.raises(WorkloadError):
        DecodeBatch(batch=0)
    with pytest.raises(WorkloadError):
        decode_work(models.get("Llama-3-8B"), DecodeBatch(), tp=0)
    with pytest.raises(WorkloadError):
        step_cost(models.get("Llama-3-8B"), DecodeBatch(), GPU, weight_read_Bps=0.0)
