"""fp8 engines fed from the shared pool: the GPU that reads the pool's bf16 converts (a relay chain's first GPU,
every pull-on-publish reader), later relay hops forward fp8, and converting readers hold a bf16 staging area."""

from __future__ import annotations

import pytest

from fabricsim.hwmodels import presets
from fabricsim.workloads import models
from fabricsim.workloads.placement import FSDPLayout, RolloutLayout, reshard
from fabricsim.workloads.weightsync import SyncSetup, get, simulate_sync
from fabricsim.workloads.weightsync.base import fp8_conversion

HGX = presets.get("hgx-h200-8", calibration=None)
G = HGX.gpus()
MODEL = models.get("Llama-3-8B")
QUIET = {"measure_contention": False}


def _setup(dtype: str | None, rollout: list[str] = G[1:], tp: int = 1) -> SyncSetup:
    return SyncSetup(HGX, MODEL, FSDPLayout(["gpu0"]), RolloutLayout(rollout, tp=tp), rollout_dtype=dtype)


def _relay(dtype: str | None, **knobs):
    return simulate_sync(_setup(dtype), get("shared-pool:relay", **QUIET, **knobs), keep_result=True)


def test_relay_converts_once_at_the_head_of_its_chain_and_forwards_fp8() -> None:
    """gpu0 -> gpu1 -> ... -> gpu7: gpu1 reads bf16 from the pool and converts chunk by chunk; every later hop
    copies fp8, half the bytes, and converts nothing."""
    res = _relay("fp8")
    recs = res.sim_result.records
    pulled = sum(r.bytes for r in recs if r.kind == "transfer" and r.src == "gpu0")
    relayed = [r for r in recs if r.kind == "transfer" and r.tag == "relay"]
    encodes = [r for r in recs if r.tag == "encode"]
    assert pulled == pytest.approx(MODEL.weight_bytes(), rel=1e-9)  # bf16, read once
    fp8_bytes = MODEL.weight_bytes() * fp8_conversion().ratio  # half, plus the block scales
    assert sum(r.bytes for r in relayed) == pytest.approx(6 * fp8_bytes, rel=1e-9)  # 6 hops
    assert encodes and {r.src for r in encodes} == {"gpu1"}
    n_chunks = len([r for r in relayed if r.dst == "gpu2"])
    assert len(encodes) == n_chunks > 1
    # a chunk leaves the head of the chain only once converted
    enc_end = sorted(r.finish_s for r in encodes)
    to_gpu2 = sorted(r.begin_s for r in relayed if r.dst == "gpu2")
    assert all(b >= e - 1e-15 for e, b in zip(enc_end, to_gpu2, strict=True))


def test_relay_with_fp8_moves_less_than_with_bf16_and_both_paths_agree() -> None:
    """The declared chain and the processes (later publishes make the readers processes) give the same answer."""
    bf16, fp8 = _relay(None), _relay("fp8")
    assert sum(fp8.bytes_by_class.values()) < 0.6 * sum(bf16.bytes_by_class.values())
    procedural = _relay("fp8", publishes=2, publish_interval_s=100.0)
    assert procedural.sync_s == pytest.approx(fp8.sync_s, rel=1e-12)
    assert procedural.stall_s == pytest.approx(fp8.stall_s, rel=1e-12)


@pytest.mark.parametrize("chunk", [2**20, 2**26, 2**40])
def test_converting_readers_hold_a_bf16_staging_of_two_chunks(chunk: float) -> None:
    """Memory the plan counts and memory the run allocates: pull-on-publish's readers each add min(2 chunks, slice)
    with fp8; relay adds it on the head of its chain only; bf16 engines add nothing."""
    need = float(MODEL.weight_bytes())
    staging = min(2 * chunk, need)
    for mode, converting in (("pull-on-publish", set(G[1:])), ("relay", {"gpu1"})):
        strategy = get(f"shared-pool:{mode}", chunk_bytes=chunk, **QUIET)
        plain, fp8 = _setup(None), _setup("fp8")
        plan = reshard(MODEL, plain.trainer, plain.rollout)
        with_bf16, with_fp8 = strategy.extra_memory(plain, plan), strategy.extra_memory(fp8, plan)
        fp8_copy = need * fp8_conversion().ratio  # half, plus the block scales
        for g in G[1:]:
            assert with_bf16[g] == pytest.approx(need)
            assert with_fp8[g] == pytest.approx(fp8_copy + (staging if g in converting else 0.0)), (mode, g)
        peaks = simulate_sync(fp8, strategy, keep_result=True).sim_result.memory_peaks
        quiet = simulate_sync(plain, strategy, keep_result=True).sim_result.memory_peaks
        for g in G[1:]:  # fp8 engines hold about half the weights, live and inactive, plus any staging
            grew = peaks[g] - quiet[g]
            assert grew == pytest.approx(2 * (fp8_copy - need) + (staging if g in converting else 0.0), abs=2), \
                (mode, g)


def test_a_gpus_fp8_weights_take_the_bytes_the_wire_brings_them() -> None:
    """One ratio for fp8 weights, block scales included: the live copy and the inactive buffer of a relay hop hold
    what the hop before it forwards, not half the bf16 bytes."""
    setup = _setup("fp8")
    assert setup.rollout_ratio == fp8_conversion().ratio
    strategy = get("shared-pool:relay", **QUIET)
    plan = reshard(MODEL, setup.trainer, setup.rollout)
    res = simulate_sync(setup, strategy, keep_result=True)
    forwarded = sum(r.bytes for r in res.sim_result.records if r.tag == "relay" and r.dst == "gpu2")
    assert strategy.extra_memory(setup, plan)["gpu2"] == pytest.approx(forwarded, rel=1e-12)
    assert strategy.rollout_resident(setup, plan)["gpu2"] == pytest.approx(forwarded, rel=1e-12)


def test_staging_can_make_a_full_reader_infeasible() -> None:
    """The staging is real memory: a reader that fits its fp8 copy with less than the staging to spare does not
    fit any more: a KV reserve that leaves 1 GiB beside the default staging (two 64 MiB chunks) fits two 1 MiB
    chunks, not two 1 GiB ones."""
    def reserved(fraction: float) -> SyncSetup:
        return SyncSetup(HGX, MODEL, FSDPLayout(["gpu0"]), RolloutLayout(G[1:]), rollout_dtype="fp8",
                         kv_reserve_fraction=fraction)

    strategy = get("shared-pool:pull-on-publish", chunk_bytes=2**30, **QUIET)
    half = simulate_sync(reserved(0.5), get("shared-pool:pull-on-publish", **QUIET))
    assert half.feasible  # a reserve this large holds the decode batch's KV: each more byte of it is a byte less
    tight = reserved(0.5 + (half.extra_headroom_bytes - 2**30) / HGX.gpu("gpu1").hbm_bytes)
    assert simulate_sync(tight, get("shared-pool:pull-on-publish", **QUIET)).extra_headroom_bytes == \
        pytest.approx(2**30, rel=1e-6)
    assert simulate_sync(tight, get("shared-pool:pull-on-publish", chunk_bytes=2**20, **QUIET)).feasible
    refused = simulate_sync(tight, strategy)
    assert not refused.feasible and "extra" in refused.reason


def test_the_head_reads_a_chunk_only_once_the_conversion_two_chunks_back_freed_its_staging(monkeypatch):
    """Two staging chunks: the read of chunk c lands in the one chunk c-2 was converted from, so it starts only
    after that conversion ended. A conversion 400x as costly (1,000 bytes of HBM traffic per byte) makes that wait
    bind, so the pulls follow the conversions instead of running ahead."""
    from fabricsim.workloads.weightsync import base

    real = base.fp8_conversion()
    monkeypatch.setattr(base, "fp8_conversion", lambda: base.Transform("fp8", real.ratio, encode_hbm=1000.0))
    recs = _relay("fp8").sim_result.records
    pulls = sorted((r for r in recs if r.kind == "transfer" and r.src == "gpu0"), key=lambda r: r.begin_s)
    encodes = sorted((r for r in recs if r.tag == "encode"), key=lambda r: r.finish_s)
    assert len(pulls) == len(encodes) > 2
    for c in range(2, len(pulls)):
        assert pulls[c].begin_s == pytest.approx(encodes[c - 2].finish_s, rel=1e-12), c  # held back, then at once


def test_both_paths_agree_where_the_conversion_binds(monkeypatch):
    """The processes (later publishes) wait for conversion c-2 as the declared chain does."""
    from fabricsim.workloads.weightsync import base

    real = base.fp8_conversion()
    monkeypatch.setattr(base, "fp8_conversion", lambda: base.Transform("fp8", real.ratio, encode_hbm=1000.0))
    declared, procedural = _relay("fp8"), _relay("fp8", publishes=2, publish_interval_s=100.0)
    assert procedural.sync_s == pytest.approx(declared.sync_s, rel=1e-12)


@pytest.mark.parametrize("mode", ["pull-on-publish", "relay"])
@pytest.mark.parametrize("publishes", [1, 2], ids=["declared", "procedural"])
def test_the_staging_is_released_once_its_readers_last_conversion_ended(mode: str, publishes: int,
                                                                        monkeypatch) -> None:
    """The bf16 staging is needed only while bf16 lands to be converted: each converting reader's memory record
    drops by it when that reader's last conversion ends (before the sync does), on the compiled loop and in the
    processes (a later publish keeps the run going long after the sync ended), and the peaks stay those the
    plan counts."""
    from fabricsim.workloads.weightsync import base

    made: list = []

    class Kept(base.Simulation):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(base, "Simulation", Kept)
    chunk = 2**26
    setup = _setup("fp8")
    strategy = get(f"shared-pool:{mode}", chunk_bytes=chunk, publishes=publishes, publish_interval_s=100.0, **QUIET)
    res = simulate_sync(setup, strategy, keep_result=True)
    staging = strategy.staging_bytes(float(MODEL.weight_bytes()))
    extra = strategy.extra_memory(setup, reshard(MODEL, setup.trainer, setup.rollout))
    converting = G[1:] if mode == "pull-on-publish" else ["gpu1"]
    for g in converting:
        pool = made[0].memory(g)
        last = max(r.finish_s for r in res.sim_result.records if r.tag == "encode" and r.src == g)
        released = [t for (t, used), (_, before) in zip(pool.timeline[1:], pool.timeline, strict=False)
                    if before - used == int(staging)]
        assert len(released) == 1, (g, pool.timeline)
        assert last == pytest.approx(released[0], rel=1e-12) and released[0] <= res.sync_s, g
        assert pool.timeline[-1][1] == pool.peak_bytes - int(staging), g
        assert pool.peak_bytes == max(used for _, used in pool.timeline), g
        assert res.sim_result.memory_peaks[g] == pool.peak_bytes
    for g in G[1:]:
        resident = made[0].memory(g).timeline[1][1]  # the live weights, allocated first
        assert made[0].memory(g).peak_bytes - resident == pytest.approx(extra[g], abs=2), g
