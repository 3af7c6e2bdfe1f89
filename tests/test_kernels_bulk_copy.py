"""bulk_copy against its torch reference: awkward sizes, dtypes, misalignment, peer and pinned host."""

from __future__ import annotations

import sys

import pytest
import torch
from _gpu import AWKWARD_SIZES, DEVICE, HAS_CUDA, gpu, multigpu, poison

from fabricsim.kernels.bulk_copy import bulk_copy, copy_ref
from fabricsim.kernels.errors import KernelInputError, TritonUnavailableError


def _rand(n: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), generator=g,
                         dtype=torch.uint8).view(dtype).to(device)


@pytest.mark.parametrize("n", AWKWARD_SIZES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32, torch.int64])
def test_matches_reference(n: int, dtype: torch.dtype) -> None:
    src = _rand(n, dtype, DEVICE, n)
    out, ref = poison(torch.empty_like(src)), poison(torch.empty_like(src))
    bulk_copy(out, src)
    copy_ref(ref, src)
    assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_misaligned_views_fall_back_to_bytes(shift: int) -> None:
    src = _rand(5000, torch.uint8, DEVICE, shift)[shift:]
    out = poison(torch.empty(5000 - shift + 7, dtype=torch.uint8, device=DEVICE))[7:]
    bulk_copy(out, src)
    assert torch.equal(out, src)


def test_size_mismatch_is_a_typed_error() -> None:
    with pytest.raises(KernelInputError):
        bulk_copy(torch.empty(3, device=DEVICE), torch.empty(4, device=DEVICE))


def test_missing_triton_is_a_typed_error_and_the_reference_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    from fabricsim.kernels import _runtime
    from fabricsim.kernels import bulk_copy as module

    src = _rand(10, torch.uint8, DEVICE, 2)
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    _runtime.triton_modules.cache_clear()
    module._kernel.cache_clear()
    try:
        with pytest.raises(TritonUnavailableError):
            bulk_copy(torch.empty_like(src), src)
        assert torch.equal(copy_ref(torch.empty_like(src), src), src)
    finally:
        _runtime.triton_modules.cache_clear()
        module._kernel.cache_clear()


@pytest.mark.skipif(HAS_CUDA, reason="interpreter-only check")
def test_interpreter_rejects_nothing_on_cpu() -> None:
    src = _rand(33, torch.uint8, DEVICE, 1)
    assert torch.equal(bulk_copy(poison(torch.empty_like(src)), src), src)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["h2d", "d2h"])
def test_pinned_host(direction: str) -> None:
    n = 1 << 20 | 3
    src = _rand(n, torch.uint8, torch.device("cuda", 0), 5)
    if direction == "h2d":
        src = src.cpu().pin_memory()
        out = poison(torch.empty(n, dtype=torch.uint8, device="cuda:0"))
        bulk_copy(out, src)
    else:
        out = poison(torch.empty(n, dtype=torch.uint8).pin_memory())
        bulk_copy(out, src, device=torch.device("cuda", 0))
    torch.cuda.synchronize()
    assert torch.equal(out.cpu().view(torch.uint8), src.cpu().view(torch.uint8))


@gpu
@pytest.mark.gpu
def test_pageable_host_is_a_typed_error() -> None:
    with pytest.raises(KernelInputError):
        bulk_copy(torch.empty(64, dtype=torch.uint8, device="cuda:0"), torch.empty(64, dtype=torch.uint8))


@multigpu
@pytest.mark.gpu
@pytest.mark.multigpu
@pytest.mark.parametrize("runner", [0, 1])
def test_peer(runner: int) -> None:
    n = (4 << 20) + 12
    src = _rand(n // 4, torch.float32, torch.device("cuda", 0), 9)
    out = poison(torch.empty_like(src, device="cuda:1"))
    bulk_copy(out, src, device=torch.device("cuda", runner))
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    assert torch.equal(out.cpu().view(torch.uint8), src.cpu().view(torch.uint8))
