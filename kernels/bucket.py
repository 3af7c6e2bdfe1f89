"""Bucket pack / unpack: many tensors of mixed shapes and dtypes to one byte bucket and back, one launch.

Bucketed weight sync sends parameters in a few large buffers instead of hundreds of small ones. Packing
with one `copy_` per tensor costs a launch per tensor (microseconds each, and thousands of them); here one
launch moves every tensor. The host builds a table (source address, size, offset in the bucket) and the
prefix sum of each tensor's chunk count; every program binary-searches that prefix sum for its tensor and
copies one chunk. Tensors start at 16-byte-aligned bucket offsets, so when every tensor address is
16-byte aligned (the allocators' default) bodies move as 16-byte vectors and each tensor's last 1-3
bytes (odd-sized bf16 tensors, say) are copied bytewise by its last program; a misaligned view anywhere
in the list makes the whole launch bytewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fabricsim.kernels._runtime import device_context, launch_device, triton_modules
from fabricsim.kernels.errors import KernelInputError

ALIGN = 16
CHUNK_BYTES = 16384


@dataclass(frozen=True)
class BucketEntry:
    """Where one tensor lives in a bucket."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # bytes from the bucket's start, a multiple of ALIGN
    nbytes: int


@dataclass(frozen=True)
class BucketLayout:
    """The placement of a list of tensors in one byte bucket."""

    entries: tuple[BucketEntry, ...]
    nbytes: int

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor]) -> BucketLayout:
        """Place `tensors` back to back at ALIGN-byte boundaries."""
        entries = []
        off = 0
        for t in tensors:
            nb = t.numel() * t.element_size()
            entries.append(BucketEntry(tuple(t.shape), t.dtype, off, nb))
            off += (nb + ALIGN - 1) // ALIGN * ALIGN
        return cls(tuple(entries), off)

    def views(self, bucket: torch.Tensor) -> list[torch.Tensor]:
        """Typed views of each tensor inside `bucket` (no copy)."""
        return [
            bucket[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in self.entries
        ]


def pack_ref(tensors: Sequence[torch.Tensor], bucket: torch.Tensor, layout: BucketLayout) -> torch.Tensor:
    """Torch reference of `pack`: one `copy_` per tensor."""
    _check(tensors, bucket, layout)
    for t, v in zip(tensors, layout.views(bucket), strict=True):
        v.copy_(t)
    return bucket


def unpack_ref(bucket: torch.Tensor, layout: BucketLayout, outs: Sequence[torch.Tensor]) -> None:
    """Torch reference of `unpack`: one `copy_` per tensor."""
    _check(outs, bucket, layout)
    for o, v in zip(outs, layout.views(bucket), strict=True):
        o.copy_(v)


def pack(
    tensors: Sequence[torch.Tensor], bucket: torch.Tensor | None = None, layout: BucketLayout | None = None
) -> tuple[torch.Tensor, BucketLayout]:
    """Copy `tensors` into one uint8 bucket in a single launch; returns (bucket, layout).

    Builds a `BucketPlan` each call (host work linear in the number of tensors); to pack the same tensors
    repeatedly, build the plan once and call `plan.pack()`.
    """
    layout = layout if layout is not None else BucketLayout.of(tensors)
    if bucket is None:
        device = tensors[0].device if tensors else torch.device("cpu")
        bucket = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
    BucketPlan.build(tensors, bucket, layout).pack()
    return bucket, layout


def unpack(bucket: torch.Tensor, layout: BucketLayout, outs: Sequence[torch.Tensor]) -> None:
    """Copy each tensor of `bucket` into `outs` (same shapes and dtypes) in a single launch."""
    BucketPlan.build(outs, bucket, layout).unpack()


class BucketPlan:
    """One bucket and its tensors with the launch table already on the device: pack/unpack = one launch.

    Bucketed weight sync packs the same parameters into the same buffers every step; the per-tensor host
    work (checks, addresses, the table and its upload) is done once here instead of every call.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], bucket: torch.Tensor, layout: BucketLayout) -> None:
        self.tensors, self.bucket, self.layout = list(tensors), bucket, layout
        live = [(t, e) for t, e in zip(tensors, layout.entries, strict=True) if e.nbytes]
        self.n_live = len(live)
        if not live:
            return
        prefer = bucket.device if bucket.device.type == "cuda" else None
        self.run_on = launch_device([bucket, *(t for t, _ in live)], prefer)
        addrs = [t.data_ptr() for t, _ in live]
        # Word path when every address is 16-byte aligned (the allocators' default; bucket offsets always
        # are): int32 words for each tensor's body, its last 1-3 bytes copied byte by byte.
        word4 = all(a % 16 == 0 for a in [*addrs, bucket.data_ptr()])
        self.word = 4 if word4 else 1
        self.chunk = CHUNK_BYTES // self.word
        counts = [max(1, (e.nbytes // self.word + self.chunk - 1) // self.chunk) for _, e in live]
        prefix = [0]
        for c in counts:
            prefix.append(prefix[-1] + c)
        # Tensor addresses travel as offsets from the bucket in units of `unit` bytes (16 when aligned):
        # the kernel multiplies them back, so Triton knows each address is 16-byte aligned (vector access).
        self.unit = 16 if word4 else 1
        anchor = bucket.data_ptr()
        self.table = torch.tensor(
            [[(a - anchor) // self.unit, e.offset // self.unit, e.nbytes] for a, (_, e) in zip(addrs, live,
                                                                                              strict=True)],
            dtype=torch.int64,
        ).to(self.run_on)
        self.starts = torch.tensor(prefix, dtype=torch.int64).to(self.run_on)
        self.programs = prefix[-1]
        self.words = bucket[: bucket.numel() // 4 * 4].view(torch.int32) if word4 else bucket

    @classmethod
    def build(cls, tensors: Sequence[torch.Tensor], bucket: torch.Tensor, layout: BucketLayout) -> BucketPlan:
        """Check `tensors` and `bucket` against `layout` and prepare the launch."""
        _check(tensors, bucket, layout)
        return cls(tensors, bucket, layout)

    def pack(self) -> torch.Tensor:
        """Copy the plan's tensors into its bucket (one launch); returns the bucket."""
        self._run(True)
        return self.bucket

    def unpack(self) -> None:
        """Copy the plan's bucket into its tensors (one launch)."""
        self._run(False)

    def _run(self, to_bucket: bool) -> None:
        if not self.n_live:
            return
        with device_context(self.run_on):
            _kernel()[(self.programs,)](
                self.table, self.starts, self.n_live, self.words, self.bucket, TO_BUCKET=to_bucket,
                UNIT=self.unit // self.word, WORD=self.word, CHUNK=self.chunk, num_warps=8,
            )


def _check(tensors: Sequence[torch.Tensor], bucket: torch.Tensor, layout: BucketLayout) -> None:
    if len(tensors) != len(layout.entries):
        raise KernelInputError(f"layout has {len(layout.entries)} tensors, got {len(tensors)}")
    if bucket.dtype != torch.uint8 or bucket.dim() != 1 or bucket.numel() < layout.nbytes:
        raise KernelInputError(f"bucket must be a 1-D uint8 tensor of at least {layout.nbytes} bytes")
    for i, (t, e) in enumerate(zip(tensors, layout.entries, strict=True)):
        if tuple(t.shape) != e.shape or t.dtype != e.dtype or not t.is_contiguous():
            raise KernelInputError(f"tensor {i}: expected contiguous {e.dtype}{list(e.shape)}, got "
                                   f"{t.dtype}{list(t.shape)}")


def _kernel():
    triton_modules()  # a typed error where Triton is missing
    from fabricsim.kernels import _copy_jit

    return _copy_jit.bucket_copy
