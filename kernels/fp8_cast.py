"""Cast-on-copy: bf16 -> fp8 e4m3 (per-tensor or per-block scales) while copying, and back.

Sending weights as fp8 halves the bytes on the wire; doing the cast inside the copy saves a pass over
HBM. Scales follow the usual recipe: `scale = amax / 448` (448 is e4m3's largest finite value; an all-zero
block gets scale 1), `q = e4m3(clamp(x * (1 / scale), -448, 448))`, and back `bf16(q * scale)`.

On a GPU the conversions are Triton's `.to(float8e4nv)` / `.to(bfloat16)`, i.e. the hardware's
round-to-nearest-even conversions. Triton's CPU interpreter rounds those casts differently (truncation, a
lost carry), so there the kernels use the same roundings written as integer bit operations
(`kernels._fp8_jit`). Both give the bits torch gives, so the torch references below are matched exactly,
not within a tolerance.
"""

from __future__ import annotations

import functools

import torch

from fabricsim.kernels._runtime import device_context, interpreting, launch_device, triton_modules
from fabricsim.kernels.errors import KernelInputError

FP8_MAX = 448.0
TENSOR_BLOCK = 4096  # elements per program in per-tensor mode


def quantize_ref(x: torch.Tensor, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `quantize`: (q as float8_e4m3fn with x's shape, fp32 scales).

    `block_size=None` gives one scale for the tensor; otherwise one scale per `block_size` consecutive
    elements of the flattened tensor (the last block may be short).
    """
    flat = x.reshape(-1).float()
    if block_size is None:
        amax = flat.abs().max() if flat.numel() else torch.zeros((), device=x.device)
        scales = _scale(amax.reshape(1).float())
        inv = _reciprocal(scales)
        q = (flat * inv).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q.reshape(x.shape), scales
    nb = (flat.numel() + block_size - 1) // block_size
    padded = torch.zeros(nb * block_size, device=x.device)
    padded[: flat.numel()] = flat
    blocks = padded.reshape(nb, block_size)
    scales = _scale(blocks.abs().amax(dim=1)) if nb else torch.ones(0, device=x.device)
    inv = _reciprocal(scales)
    q = (blocks * inv[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(-1)[: flat.numel()].reshape(x.shape), scales


def dequantize_ref(q: torch.Tensor, scales: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """Torch reference of `dequantize`: bf16(q * scale)."""
    flat = q.reshape(-1).float()
    per = scales.repeat_interleave(block_size)[: flat.numel()] if block_size is not None else scales
    return (flat * per).to(torch.bfloat16).reshape(q.shape)


def _scale(amax: torch.Tensor) -> torch.Tensor:
    # Tensor-by-tensor division: IEEE division on every device (PyTorch divides a CUDA tensor by a Python
    # scalar as a multiplication by its reciprocal, which can differ in the last bit).
    return torch.where(amax > 0, amax / torch.full_like(amax, FP8_MAX), torch.ones_like(amax)).float()


def _reciprocal(scales: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(scales) / scales


def quantize(
    x: torch.Tensor, block_size: int | None = None, out: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 `x` -> (fp8 e4m3 `out`, fp32 `scales`) in one pass (per-block) or two (per-tensor amax first).

    `out` and `scales` may live on a peer GPU or in pinned host memory (cast fused into the transfer).
    """
    if x.dtype != torch.bfloat16 or not x.is_contiguous():
        raise KernelInputError(f"quantize takes a contiguous bfloat16 tensor, got {x.dtype}")
    if block_size is not None and block_size < 1:
        raise KernelInputError(f"block_size must be positive, got {block_size}")
    n = x.numel()
    nscales = 1 if block_size is None else (n + block_size - 1) // block_size
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device) if out is None else out
    scales = torch.empty(nscales, dtype=torch.float32, device=x.device) if scales is None else scales
    if out.shape != x.shape or out.dtype != torch.float8_e4m3fn or not out.is_contiguous():
        raise KernelInputError("out must be a contiguous float8_e4m3fn tensor of x's shape")
    if scales.numel() != nscales or scales.dtype != torch.float32:
        raise KernelInputError(f"scales must be {nscales} float32 values")
    run_on = launch_device([x, out, scales], x.device if x.device.type == "cuda" else None)
    xi = x.reshape(-1).view(torch.int16)
    qo = out.reshape(-1).view(torch.uint8)
    k = _kernels()
    hw = not interpreting()  # hardware conversions on a GPU, bit-exact integer ones in the interpreter
    with device_context(run_on):
        if block_size is None:
            programs = max(1, (n + TENSOR_BLOCK - 1) // TENSOR_BLOCK)
            partial = torch.empty(programs, dtype=torch.float32, device=run_on)
            k["amax"][(programs,)](xi, partial, n, BLOCK=TENSOR_BLOCK, num_warps=8)
            # one small reduction on the device (no host sync) so each program reads one amax, not all partials
            amax = partial.amax(dim=0, keepdim=True)
            k["quant_tensor"][(programs,)](xi, qo, amax, scales, n, BLOCK=TENSOR_BLOCK, HW=hw, num_warps=8)
        elif n:
            bs = _next_pow2(block_size)
            rows = max(1, 4096 // bs)
            grid = ((nscales + rows - 1) // rows,)
            k["quant_block"][grid](xi, qo, scales, n, nscales, block_size, ROWS=rows, BS=bs, HW=hw,
                                   num_warps=8)
    return out, scales


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, block_size: int | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """fp8 e4m3 `q` with fp32 `scales` -> bf16 `out`, in one pass."""
    if q.dtype != torch.float8_e4m3fn or not q.is_contiguous():
        raise KernelInputError("dequantize takes a contiguous float8_e4m3fn tensor")
    n = q.numel()
    nscales = 1 if block_size is None else (n + block_size - 1) // block_size
    if scales.numel() != nscales or scales.dtype != torch.float32:
        raise KernelInputError(f"scales must be {nscales} float32 values")
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device) if out is None else out
    if out.shape != q.shape or out.dtype != torch.bfloat16 or not out.is_contiguous():
        raise KernelInputError("out must be a contiguous bfloat16 tensor of q's shape")
    if n == 0:
        return out
    run_on = launch_device([q, out, scales], out.device if out.device.type == "cuda" else None)
    qi, oi = q.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.int16)
    k = _kernels()
    hw = not interpreting()  # hardware conversions on a GPU, bit-exact integer ones in the interpreter
    with device_context(run_on):
        if block_size is None:
            k["dequant"][((n + TENSOR_BLOCK - 1) // TENSOR_BLOCK,)](qi, scales, oi, n, BLOCK=TENSOR_BLOCK, HW=hw,
                                                                   num_warps=8)
        else:
            bs = _next_pow2(block_size)
            rows = max(1, 4096 // bs)
            k["dequant_block"][((nscales + rows - 1) // rows,)](qi, scales, oi, n, nscales, block_size, ROWS=rows,
                                                                BS=bs, HW=hw, num_warps=8)
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _kernels() -> dict:
    triton_modules()  # a typed error where Triton is missing
    from fabricsim.kernels import _fp8_jit

    return {
        "amax": _fp8_jit.amax,
        "quant_tensor": _fp8_jit.quant_tensor,
        "quant_block": _fp8_jit.quant_block,
        "dequant": _fp8_jit.dequant,
        "dequant_block": _fp8_jit.dequant_block,
    }
