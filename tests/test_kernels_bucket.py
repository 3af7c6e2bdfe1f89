"""Bucket pack/unpack against per-tensor copies: mixed shapes and dtypes, empty tensors, one launch."""

from __future__ import annotations

import pytest
import torch
from _gpu import DEVICE, gpu, poison
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.kernels.bucket import BucketLayout, BucketPlan, pack, pack_ref, unpack, unpack_ref
from fabricsim.kernels.errors import KernelInputError

DTYPES = [torch.uint8, torch.bfloat16, torch.float16, torch.float32, torch.int64]


def _tensors(sizes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, d in sizes:
        dtype = DTYPES[d % len(DTYPES)]
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        out.append(torch.randint(0, 256, (nbytes,), generator=g, dtype=torch.uint8).view(dtype).to(DEVICE))
    return out


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 4)), min_size=1, max_size=6), st.integers(0, 99))
def test_pack_unpack_match_reference(sizes: list[tuple[int, int]], seed: int) -> None:
    ts = _tensors(sizes, seed)
    layout = BucketLayout.of(ts)
    bucket = poison(torch.empty(layout.nbytes, dtype=torch.uint8, device=DEVICE))
    ref = poison(torch.empty_like(bucket))
    pack(ts, bucket, layout)
    pack_ref(ts, ref, layout)
    for got, want in zip(layout.views(bucket), layout.views(ref), strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    outs = [poison(torch.empty_like(t)) for t in ts]
    refs = [poison(torch.empty_like(t)) for t in ts]
    unpack(bucket, layout, outs)
    unpack_ref(bucket, layout, refs)
    for o, r, t in zip(outs, refs, ts, strict=True):
        assert torch.equal(o.view(torch.uint8), r.view(torch.uint8))
        assert torch.equal(o.view(torch.uint8), t.view(torch.uint8))


def test_word_path_with_large_tensor() -> None:
    # bf16 of 8193 elements: exactly one full chunk of words plus a 2-byte tail; 3 uint8 bytes: tail only
    ts = _tensors([(40_000, 3), (12, 3), (1, 4), (5000, 1), (8193, 1), (3, 0), (16_385, 1)], 3)
    bucket, layout = pack(ts)
    assert all(e.offset % 16 == 0 for e in layout.entries)
    outs = [poison(torch.empty_like(t)) for t in ts]
    unpack(bucket, layout, outs)
    assert all(torch.equal(o.view(torch.uint8), t.view(torch.uint8)) for o, t in zip(outs, ts, strict=True))


def test_plan_packs_and_unpacks_repeatedly() -> None:
    ts = _tensors([(3000, 1), (5, 4), (777, 2)], 11)
    layout = BucketLayout.of(ts)
    bucket = poison(torch.empty(layout.nbytes, dtype=torch.uint8, device=DEVICE))
    outs = [poison(torch.empty_like(t)) for t in ts]
    to_bucket, from_bucket = BucketPlan.build(ts, bucket, layout), BucketPlan.build(outs, bucket, layout)
    for step in range(2):  # new values each step, same plan
        for t in ts:
            t.view(torch.uint8).add_(step + 1)
        to_bucket.pack()
        from_bucket.unpack()
        assert all(torch.equal(o.view(torch.uint8), t.view(torch.uint8)) for o, t in zip(outs, ts, strict=True))


def test_layout_mismatch_is_a_typed_error() -> None:
    ts = _tensors([(10, 3), (4, 1)], 0)
    bucket, layout = pack(ts)
    with pytest.raises(KernelInputError):
        unpack(bucket, layout, [torch.empty(10, device=DEVICE)])
    with pytest.raises(KernelInputError):
        unpack(bucket, layout, [torch.empty(11, device=DEVICE), torch.empty(4, dtype=torch.bfloat16, device=DEVICE)])


@gpu
@pytest.mark.gpu
def test_pack_into_pinned_host() -> None:
    ts = _tensors([(1 << 20, 3), (333, 1), (77_777, 2)], 5)
    layout = BucketLayout.of(ts)
    bucket = poison(torch.empty(layout.nbytes, dtype=torch.uint8).pin_memory())
    pack(ts, bucket, layout)
    torch.cuda.synchronize()
    for v, t in zip(layout.views(bucket), ts, strict=True):
        assert torch.equal(v.view(torch.uint8), t.cpu().view(torch.uint8))
