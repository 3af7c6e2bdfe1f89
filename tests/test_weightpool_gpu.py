"""WeightPool on a real GPU: publish/read, errors, a reader in another process, a short torture run."""

from __future__ import annotations

import pytest
import torch
from _gpu import HAS_CUDA, N_GPUS

from fabricsim.kernels.errors import KernelInputError, LayoutMismatchError, PoolGoneError, ReadOnlyPoolError

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]

SPEC = {"w": ((1000, 3), torch.bfloat16), "b": ((7,), torch.float32), "e": ((0,), torch.int32)}


def _pool(double: bool):
    from fabricsim.kernels.weightpool import WeightPool

    return WeightPool(SPEC, device=0, double_buffered=double)


@pytest.mark.parametrize("double", [False, True])
def test_publish_then_read_in_process(double: bool) -> None:
    from fabricsim.kernels.weightpool import PoolReader

    pool = _pool(double)
    w = torch.randn(1000, 3, device="cuda:0").to(torch.bfloat16)
    b = torch.randn(7, device="cuda:0")
    v = pool.publish({"w": w, "b": b})
    assert v == 2 and pool.version() == 2
    reader = PoolReader.open(pool.export(), expected=SPEC)
    dst = {"w": torch.empty_like(w), "b": torch.empty_like(b)}
    assert reader.read_consistent(dst) == 2
    assert torch.equal(dst["w"], w) and torch.equal(dst["b"], b)
    with pool.writing() as views:
        views["b"].fill_(3.0)
        if double:
            views["w"].copy_(w)
    assert reader.version() == 4
    only_b = {"b": torch.empty_like(b)}
    assert reader.read_consistent(only_b, names=["b"]) == 4 and bool((only_b["b"] == 3).all())
    assert torch.equal(reader.views()["w"], w)
    flat = torch.empty(pool.layout.slot_bytes, dtype=torch.uint8, device="cuda:0")
    assert reader.read_consistent(flat) == 4
    assert reader.wait_for(4, timeout=1.0) == 4
    pool.close()


def test_errors() -> None:
    from fabricsim.kernels.weightpool import PoolReader

    pool = _pool(False)
    handle = pool.export()
    with pytest.raises(LayoutMismatchError):
        PoolReader.open(handle, expected={"w": ((1000, 4), torch.bfloat16)})
    reader = PoolReader.open(handle)
    with pytest.raises(ReadOnlyPoolError):
        reader.publish({"b": torch.zeros(7, device="cuda:0")})
    with pytest.raises(ReadOnlyPoolError):
        reader["b"] = torch.zeros(7)
    with pytest.raises(KernelInputError):
        reader.read_consistent({"b": torch.empty(8, device="cuda:0")})
    pool.close()
    with pytest.raises(PoolGoneError):
        reader.version()
    with pytest.raises(PoolGoneError):
        reader.read_consistent({"b": torch.empty(7, device="cuda:0")}, names=["b"])
    with pytest.raises(PoolGoneError):
        pool.publish({})
    with pytest.raises(PoolGoneError):
        PoolReader.open(handle)


def _remote_reader(handle, device, q) -> None:
    from fabricsim.kernels.weightpool import PoolReader

    r = PoolReader.open(handle, device=device)
    v = r.wait_for(4, timeout=30)
    dst = {"b": torch.empty(7, device=f"cuda:{device}")}
    got = r.read_consistent(dst, names=["b"])
    q.put((v, got, dst["b"].cpu().tolist()))


@pytest.mark.parametrize("device", [0, 1] if N_GPUS > 1 else [0])
def test_reader_in_another_process(device: int) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    pool = _pool(True)
    pool.publish({"b": torch.full((7,), 1.0, device="cuda:0")})
    q = ctx.Queue()
    p = ctx.Process(target=_remote_reader, args=(pool.export(), device, q))
    p.start()
    pool.publish({"b": torch.full((7,), 2.0, device="cuda:0")})
    v, got, vals = q.get(timeout=120)
    p.join(60)
    assert v >= 4 and got >= 4 and vals == [2.0] * 7
    pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "double"])
def test_short_torture(mode: str) -> None:
    from fabricsim.kernels.weightpool_torture import torture

    res = torture(mode, readers=2, reads=300, payload_mib=2, control_reads=20, gap_us=50.0)
    assert res["torn"] == 0 and res["reads"] == 600


def test_cpu_store_fallback_when_cuda_will_not_register_the_page(monkeypatch) -> None:
    """Where registration fails the writer stores from the CPU after a stream sync; nothing sticky is left
    behind for torch's next kernel launch."""
    from fabricsim.kernels import _hostwords
    from fabricsim.kernels.weightpool import PoolReader

    monkeypatch.setattr(_hostwords, "_REGISTER_FLAGS", 0x80)  # an invalid flag: cuMemHostRegister refuses
    for double in (False, True):
        pool = _pool(double)
        assert pool.store_path == "cpu-after-sync"
        b = torch.arange(7, dtype=torch.float32, device="cuda:0")
        assert pool.publish({"b": b}) == 2 and pool.publish({"b": b + 1}) == 4
        reader = PoolReader.open(pool.export())
        assert reader.version() == 4
        dst = {"b": torch.empty_like(b)}
        assert reader.read_consistent(dst, names=["b"]) == 4 and torch.equal(dst["b"], b + 1)
        pool.close()
        with pytest.raises(PoolGoneError):
            reader.version()


def test_a_pool_collected_without_close_is_gone_for_its_readers() -> None:
    import gc

    from fabricsim.kernels.weightpool import PoolReader

    pool = _pool(True)
    pool.publish({"b": torch.ones(7, device="cuda:0")})
    reader = PoolReader.open(pool.export())
    assert reader.version() == 2
    del pool
    gc.collect()
    with pytest.raises(PoolGoneError):
        reader.version()
