"""fp8 e4m3 cast-on-copy against the torch reference, bit for bit: per-tensor and per-block scales."""

from __future__ import annotations

import pytest
import torch
from _gpu import DEVICE, gpu, poison

from fabricsim.kernels.errors import KernelInputError
from fabricsim.kernels.fp8_cast import dequantize, dequantize_ref, quantize, quantize_ref


def _x(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(1, generator=g).item() * 1000 + 1e-3
    x = torch.randn(n, generator=g) * mag
    if n > 8:
        x[0], x[1], x[2], x[3] = 0.0, 1e-9, -mag * 5, 2.0**-8  # zero, subnormal-range, outlier, fp8 subnormal
    return x.to(torch.bfloat16).to(DEVICE)


@pytest.mark.parametrize("n", [0, 1, 5, 127, 128, 129, 5000])
@pytest.mark.parametrize("block", [None, 1, 16, 100, 128])
def test_quantize_dequantize_bit_exact(n: int, block: int | None) -> None:
    x = _x(n, n * 31 + (block or 0))
    nscales = 1 if block is None else -(-n // block)
    q = poison(torch.empty(n, dtype=torch.float8_e4m3fn, device=DEVICE))
    s = poison(torch.empty(nscales, dtype=torch.float32, device=DEVICE))
    quantize(x, block, out=q, scales=s)
    qr, sr = quantize_ref(x, block)
    assert torch.equal(s, sr)
    assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
    d = poison(torch.empty(n, dtype=torch.bfloat16, device=DEVICE))
    dequantize(q, s, block, out=d)
    assert torch.equal(d.view(torch.int16), dequantize_ref(qr, sr, block).view(torch.int16))


def test_round_trip_error_is_within_fp8_precision() -> None:
    x = _x(4096, 7)
    q, s = quantize(x, 128)
    back = dequantize(q, s, 128).float()
    err = (back - x.float()).abs()
    bound = x.float().abs() * 2.0**-4 + s.repeat_interleave(128)[: x.numel()] * 2.0**-9
    assert bool((err <= bound + 1e-30).all())


def test_every_e4m3_value_round_trips() -> None:
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)  # skip NaNs
    vals = codes.view(torch.float8_e4m3fn).float().to(torch.bfloat16).to(DEVICE)  # exact in bf16
    q, s = quantize(vals * 1.0, None)
    d = dequantize(q, s)
    assert torch.equal(d.float(), dequantize_ref(*quantize_ref(vals, None)).float())


def test_bad_inputs_are_typed_errors() -> None:
    with pytest.raises(KernelInputError):
        quantize(torch.zeros(4, device=DEVICE))
    with pytest.raises(KernelInputError):
        quantize(torch.zeros(4, dtype=torch.bfloat16, device=DEVICE), 0)
    with pytest.raises(KernelInputError):
        dequantize(torch.zeros(4, dtype=torch.float8_e4m3fn, device=DEVICE), torch.ones(2, device=DEVICE))


@gpu
@pytest.mark.gpu
def test_large_per_tensor_on_gpu() -> None:
    x = _x(3_000_001, 3)
    q, s = quantize(x)
    qr, sr = quantize_ref(x)
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
