"""The relay on a real GPU: a chain of hops in one process, a late hop, and a short multi-process torture run."""

from __future__ import annotations

import pytest
import torch
from _gpu import HAS_CUDA

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


def _trainer(n: int):
    from fabricsim.kernels.weightpool import WeightPool

    return WeightPool({"a": ((n,), torch.bfloat16), "b": ((n // 3 + 5,), torch.int32)}, device=0,
                      double_buffered=True)


def test_a_chain_relays_each_version_exactly_and_a_late_hop_joins_at_the_newest() -> None:
    from fabricsim.kernels.relay import Relay
    from fabricsim.kernels.weightpool import PoolReader

    pool = _trainer(3_000_001)
    hop1 = Relay(PoolReader.open(pool.export(), device=0), device=0, chunk_bytes=1 << 20)
    hop2 = Relay(hop1.export(), device=0)
    for _ in range(3):
        a = torch.randn(3_000_001, device="cuda:0").to(torch.bfloat16)
        b = torch.randint(-2**31, 2**31 - 1, (1_000_005,), dtype=torch.int32, device="cuda:0")
        v = pool.publish({"a": a, "b": b})
        assert hop1.pull(v) == v and hop2.pull(v) == v
        for hop in (hop1, hop2):
            got = hop.current()
            assert torch.equal(got["a"].view(torch.int16), a.view(torch.int16)) and torch.equal(got["b"], b)
    for _ in range(2):
        pool.publish({"a": a, "b": b})
    late = Relay(hop1.export(), device=0)
    assert hop1.pull(2) == pool.version()  # hop1 follows the newest version, skipping what it missed
    assert late.pull(2) == pool.version()
    assert hop1.stats.chunks >= 4 * len(hop1.chunks)
    for hop in (late, hop2, hop1):
        hop.close()
    pool.close()


def test_relay_torture_no_torn_versions() -> None:
    from fabricsim.kernels.relay_torture import run

    res = run(hops=2, seconds=3.0, mib=16, chunk_mib=2, gap_us=1000)  # back to back, a chunked copy starves
    assert res["torn_total"] == 0, res
    for h in (1, 2):
        assert res[f"hop{h}"]["pulls"] > 0 and not res[f"hop{h}"]["error"], res
