"""Triton code of `kernels.fp8_cast` (imported on first use, so `kernels.fp8_cast` imports without Triton).

Helpers are module-level `@triton.jit` functions because Triton resolves callees through module globals.

Two ways to convert, chosen by the constexpr `HW`: on a GPU (`HW=True`) Triton's own casts, which lower to
the hardware conversions (`cvt.rn.satfinite.e4m3x2.f32`, `cvt.rn.bf16.f32`), both round to nearest even;
under the CPU interpreter (`HW=False`) the same roundings as integer bit operations, because the
interpreter's casts truncate or lose a carry. The bit path costs about 30 integer operations an element,
which held the per-block kernels at ~2.4 TB/s on both Hopper GPUs whatever their HBM speed.
"""

import triton
import triton.language as tl


@triton.jit
def bf16_bits_to_f32(h):
    return (h.to(tl.int32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def f32_to_e4m3_bits(v):
    # v is finite with |v| <= 448 (clamped by the caller); round to nearest, ties to even.
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(v)
    abits = a.to(tl.int32, bitcast=True)
    # normal range (a >= 2^-6): drop 20 mantissa bits with RNE, then rebias 127 -> 7
    normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal range: multiples of 2^-9, rounded half to even (a * 512 is exact)
    s = a * 512.0
    fl = s.to(tl.int32)
    frac = s - fl.to(tl.float32)
    up = (frac > 0.5) | ((frac == 0.5) & ((fl & 1) == 1))
    sub = fl + up.to(tl.int32)
    code = tl.where(a >= 0.015625, normal, sub)
    code = tl.where(v != v, 0x7F, code)
    return (code | sign).to(tl.uint8)


@triton.jit
def e4m3_bits_to_f32(c):
    c = c.to(tl.int32)
    e = (c >> 3) & 0xF
    m = c & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    sub = m.to(tl.float32) * 0.001953125
    mag = tl.where(e == 0, sub, normal)
    mag = tl.where((c & 0x7F) == 0x7F, float("nan"), mag)
    return tl.where((c & 0x80) != 0, -mag, mag)


@triton.jit
def f32_to_bf16_bits(v):
    bits = v.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    r = tl.where(v != v, 0x7FC0, r)
    return r.to(tl.int16)


@triton.jit
def to_e4m3(v, HW: tl.constexpr):
    """fp32 (finite, |v| <= 448) -> e4m3 bits, round to nearest even."""
    if HW:
        return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        return f32_to_e4m3_bits(v)


@triton.jit
def from_e4m3(c, HW: tl.constexpr):
    if HW:
        return c.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        return e4m3_bits_to_f32(c)


@triton.jit
def to_bf16_bits(v, HW: tl.constexpr):
    if HW:
        return v.to(tl.bfloat16).to(tl.int16, bitcast=True)
    else:
        return f32_to_bf16_bits(v)


@triton.jit
def amax(x, partial, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = bf16_bits_to_f32(tl.load(x + offs, mask=offs < n, other=0))
    tl.store(partial + tl.program_id(0), tl.max(tl.abs(v), axis=0))


@triton.jit
def quant_tensor(x, q, amax, scales, n, BLOCK: tl.constexpr, HW: tl.constexpr):
    a = tl.load(amax)
    scale = tl.where(a > 0, tl.math.div_rn(a, 448.0), 1.0)
    inv = tl.math.div_rn(1.0, scale)
    if tl.program_id(0) == 0:
        tl.store(scales, scale)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = bf16_bits_to_f32(tl.load(x + offs, mask=m, other=0)) * inv
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    tl.store(q + offs, to_e4m3(v, HW), mask=m)


@triton.jit
def quant_block(x, q, scales, n, nscales, block_size, ROWS: tl.constexpr, BS: tl.constexpr, HW: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BS)
    offs = rows[:, None] * block_size + cols[None, :]
    m = (cols[None, :] < block_size) & (offs < n) & (rows[:, None] < nscales)
    v = bf16_bits_to_f32(tl.load(x + offs, mask=m, other=0))
    a = tl.max(tl.abs(v), axis=1)
    scale = tl.where(a > 0, tl.math.div_rn(a, 448.0), 1.0)
    inv = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), scale)
    tl.store(scales + rows, scale, mask=rows < nscales)
    v = v * inv[:, None]
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    tl.store(q + offs, to_e4m3(v, HW), mask=m)


@triton.jit
def dequant(q, scales, out, n, BLOCK: tl.constexpr, HW: tl.constexpr):
    # one scale for the whole tensor
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = from_e4m3(tl.load(q + offs, mask=m, other=0), HW) * tl.load(scales)
    tl.store(out + offs, to_bf16_bits(v, HW), mask=m)


@triton.jit
def dequant_block(q, scales, out, n, nscales, block_size, ROWS: tl.constexpr, BS: tl.constexpr,
                  HW: tl.constexpr):
    # a tile of ROWS scale blocks: one scale load per row instead of one gather per element
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BS)
    offs = rows[:, None] * block_size + cols[None, :]
    m = (cols[None, :] < block_size) & (offs < n) & (rows[:, None] < nscales)
    s = tl.load(scales + rows, mask=rows < nscales, other=1.0)
    v = from_e4m3(tl.load(q + offs, mask=m, other=0), HW) * s[:, None]
    tl.store(out + offs, to_bf16_bits(v, HW), mask=m)
