"""Paged KV-cache gather and scatter through a block table.

A paged KV cache keeps, for every layer and for K and V, an array of fixed-size pages
(`[num_blocks, page_size, num_heads, head_dim]`, vLLM's layout). Moving one sequence's cache (to another
GPU, to pinned host memory for offload, back for reuse) means gathering the pages its block table lists
into one contiguous buffer `[layers, 2, n_pages, page_size, num_heads, head_dim]`, or scattering such a
buffer into free pages. One launch covers every layer, K and V, and page: the kernel gets a table of
plane base addresses (one per layer and K/V, so each layer may be its own allocation, on this GPU, a peer
or pinned host memory) and copies a page as 16-byte vectors when everything is 16-byte aligned.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from fabricsim.kernels._runtime import device_context, launch_device, triton_modules
from fabricsim.kernels.errors import KernelInputError

CHUNK_BYTES = 8192  # bytes per tile (2048 int32 words: 16 bytes x 2 per thread of 8 warps, unrolled x4)
TILES_PER_PROGRAM = 4  # up to 32 KiB per program, as in bulk_copy: enough bytes in flight per program

KVCache = torch.Tensor | Sequence[torch.Tensor]


def planes(kv: KVCache) -> list[torch.Tensor]:
    """The (layer, K/V) page arrays of a cache, each `[num_blocks, page_size, heads, head_dim]`.

    `kv` is one tensor `[layers, 2, num_blocks, page_size, heads, head_dim]` or a sequence of per-layer
    tensors `[2, num_blocks, page_size, heads, head_dim]`.
    """
    layers = list(kv.unbind(0)) if isinstance(kv, torch.Tensor) else list(kv)
    out: list[torch.Tensor] = []
    for layer in layers:
        if layer.dim() != 5 or layer.shape[0] != 2:
            raise KernelInputError(f"a layer's KV must be [2, blocks, page, heads, dim], got {tuple(layer.shape)}")
        out.extend(layer.unbind(0))
    shapes = {tuple(p.shape[1:]) for p in out}
    if len(shapes) != 1 or len({p.dtype for p in out}) != 1:
        raise KernelInputError("every layer's pages must have one page shape and dtype")
    for p in out:
        if p.shape[0] and not p[0].is_contiguous():
            raise KernelInputError("each page (page_size x heads x head_dim) must be contiguous")
    return out


def gather_ref(kv: KVCache, block_table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference of `gather_pages`: `index_select` on every plane."""
    ps = planes(kv)
    idx = block_table.to(device=ps[0].device, dtype=torch.long)
    res = torch.stack([p.index_select(0, idx) for p in ps]).reshape(len(ps) // 2, 2, len(idx), *ps[0].shape[1:])
    if out is None:
        return res
    out.copy_(res)
    return out


def scatter_ref(buf: torch.Tensor, kv: KVCache, block_table: torch.Tensor) -> None:
    """Torch reference of `scatter_pages`: `index_copy_` into every plane."""
    ps = planes(kv)
    flat = buf.reshape(len(ps), len(block_table), *ps[0].shape[1:])
    for p, src in zip(ps, flat, strict=True):
        p.index_copy_(0, block_table.to(device=p.device, dtype=torch.long), src.to(p.device))


def gather_pages(
    kv: KVCache, block_table: torch.Tensor, out: torch.Tensor | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Copy the pages `block_table` lists, for every layer and K/V, into one contiguous buffer.

    `out` (default: a new tensor on the cache's device) has shape `[layers, 2, n, page, heads, dim]` and
    may live on a peer GPU or in pinned host memory. Returns `out`.
    """
    ps = planes(kv)
    shape = (len(ps) // 2, 2, block_table.numel(), *ps[0].shape[1:])
    if out is None:
        out = torch.empty(shape, dtype=ps[0].dtype, device=ps[0].device)
    if tuple(out.shape) != shape or out.dtype != ps[0].dtype or not out.is_contiguous():
        raise KernelInputError(f"out must be a contiguous {ps[0].dtype} tensor of shape {shape}")
    _launch(ps, out, block_table, gather=True, device=device)
    return out


def scatter_pages(
    buf: torch.Tensor, kv: KVCache, block_table: torch.Tensor, device: torch.device | None = None
) -> None:
    """Copy a contiguous `[layers, 2, n, page, heads, dim]` buffer into the pages `block_table` lists.

    Entries of `block_table` must be distinct (two pages written to one block race).
    """
    ps = planes(kv)
    shape = (len(ps) // 2, 2, block_table.numel(), *ps[0].shape[1:])
    if tuple(buf.shape) != shape or buf.dtype != ps[0].dtype or not buf.is_contiguous():
        raise KernelInputError(f"buf must be a contiguous {ps[0].dtype} tensor of shape {shape}")
    _launch(ps, buf, block_table, gather=False, device=device)


def _launch(
    ps: list[torch.Tensor], buf: torch.Tensor, table: torch.Tensor, gather: bool, device: torch.device | None
) -> None:
    n_pages = table.numel()
    if n_pages == 0 or buf.numel() == 0:
        return
    num_blocks = ps[0].shape[0]
    if table.dim() != 1 or table.dtype not in (torch.int32, torch.int64):
        raise KernelInputError("block_table must be a 1-D int32/int64 tensor")
    page_bytes = ps[0][0].numel() * ps[0].element_size()
    strides = {p.stride(0) * p.element_size() for p in ps}
    if len(strides) != 1:
        raise KernelInputError("every plane must have the same block stride")
    block_stride = strides.pop()
    bases = [p.data_ptr() for p in ps]
    aligned = all(a % 16 == 0 for a in [*bases, buf.data_ptr(), page_bytes, block_stride])
    word = 4 if aligned else 1
    if gather:
        prefer = device if device is not None else (buf.device if buf.device.type == "cuda" else None)
    else:
        prefer = device if device is not None else (ps[0].device if ps[0].device.type == "cuda" else None)
    run_on = launch_device([*ps, buf], prefer)
    # Plane addresses travel as offsets from `buf` in units of `unit` bytes (16 when aligned): the kernel
    # multiplies them back, so Triton knows every address is 16-byte aligned and emits vector accesses.
    unit = 16 if aligned else 1
    anchor = buf.data_ptr()
    plane_tab = _plane_table(tuple((a - anchor) // unit for a in bases), run_on)
    if table.device.type == "cpu" and table.numel() and (int(table.min()) < 0 or int(table.max()) >= num_blocks):
        raise KernelInputError(f"block_table entries must lie in [0, {num_blocks})")
    # A device-resident table is not checked on the host (that would synchronise every call); the kernel
    # skips entries outside [0, num_blocks) instead of touching memory outside the cache.
    table = table.to(run_on)
    page_words = page_bytes // word
    chunk_words = min(CHUNK_BYTES // word, _next_pow2(page_words))
    chunks = (page_words + chunk_words - 1) // chunk_words
    tiles = min(TILES_PER_PROGRAM, chunks)
    groups = (chunks + tiles - 1) // tiles
    grid = (n_pages * groups, len(ps))
    buf_words = buf.reshape(-1).view(torch.uint8).view(torch.int32 if word == 4 else torch.uint8)
    with device_context(run_on):
        _kernel()[grid](
            plane_tab, table, buf_words, n_pages, groups, page_words, block_stride // unit, num_blocks,
            GATHER=gather, UNIT=unit // word, CHUNK=chunk_words, TILES=tiles, num_warps=8,
        )


@functools.lru_cache(maxsize=64)
def _plane_table(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The plane offsets on the device, uploaded once per distinct cache/buffer placement."""
    return torch.tensor(offsets, dtype=torch.int64).to(device)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _kernel():
    triton_modules()  # a typed error where Triton is missing
    from fabricsim.kernels import _copy_jit

    return _copy_jit.page_copy
