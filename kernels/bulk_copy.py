"""SM-driven bulk copy: every thread moves 16-byte vectors, coalesced across the warp.

Copy engines move large blocks with few, big packets; an SM-driven copy instead issues loads and stores
from many threads, which lets it run where copy engines are busy, fuse with other work, and reach memory
the copy engine call would need a separate API for (a peer GPU's HBM with peer access, pinned host
memory through unified addressing). Both tensors are seen as bytes; when both addresses and the size are
4-byte aligned the kernel moves int32 words, and with 16-byte-aligned bases (the allocators' default)
Triton turns four consecutive words into one 16-byte access. Full tiles run unmasked so the vector width
survives; only the last program masks.
"""

from __future__ import annotations

import functools

import torch

from fabricsim.kernels._runtime import byte_view, device_context, launch_device, triton_modules, word_dtype
from fabricsim.kernels.errors import KernelInputError

BLOCK = 2048  # words per tile: 8 KiB of int32 words, 8 per thread at 8 warps
TILES_PER_PROGRAM = 4  # 32 KiB per program keeps enough loads in flight without a huge grid


def copy_ref(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """The torch reference: the same bytes copied by `Tensor.copy_` (copy engine on a GPU)."""
    _check(dst, src)
    byte_view(dst).copy_(byte_view(src))
    return dst


def bulk_copy(dst: torch.Tensor, src: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Copy `src`'s bytes into `dst` with a Triton kernel running on `device` (default: dst's GPU).

    Either tensor may live on the running GPU, on a peer GPU (peer access is enabled on demand) or in
    pinned host memory. Returns `dst`.
    """
    _check(dst, src)
    if dst.numel() == 0:
        return dst
    prefer = device if device is not None else (dst.device if dst.device.type == "cuda" else None)
    run_on = launch_device([dst, src], prefer)
    d, s = byte_view(dst), byte_view(src)
    words = word_dtype(d.numel(), d.data_ptr(), s.data_ptr())
    d, s = d.view(words), s.view(words)
    n = d.numel()
    per_program = BLOCK * TILES_PER_PROGRAM
    grid = ((n + per_program - 1) // per_program,)
    with device_context(run_on):
        _kernel()[grid](s, d, n, BLOCK=BLOCK, TILES=TILES_PER_PROGRAM, num_warps=8)
    return dst


def _check(dst: torch.Tensor, src: torch.Tensor) -> None:
    nd, ns = dst.numel() * dst.element_size(), src.numel() * src.element_size()
    if nd != ns:
        raise KernelInputError(f"bulk copy needs equal byte sizes, got dst {nd} B and src {ns} B")


@functools.cache
def _kernel():
    triton, tl = triton_modules()

    @triton.jit
    def copy_words(src, dst, n, BLOCK: tl.constexpr, TILES: tl.constexpr):
        start = tl.program_id(0).to(tl.int64) * (BLOCK * TILES)
        offs = tl.arange(0, BLOCK)
        if start + BLOCK * TILES <= n:
            for i in tl.static_range(TILES):
                o = start + i * BLOCK + offs
                tl.store(dst + o, tl.load(src + o, cache_modifier=".cg"), cache_modifier=".cs")
        else:
            for i in tl.static_range(TILES):
                o = start + i * BLOCK + offs
                m = o < n
                tl.store(dst + o, tl.load(src + o, mask=m), mask=m)

    return copy_words
