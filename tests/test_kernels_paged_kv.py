"""Paged KV gather/scatter against index_select/index_copy_: page sizes, layers, layouts, peer, host."""

from __future__ import annotations

import pytest
import torch
from _gpu import DEVICE, gpu, multigpu, poison

from fabricsim.kernels.errors import KernelInputError
from fabricsim.kernels.paged_kv import gather_pages, gather_ref, scatter_pages, scatter_ref

CASES = [  # layers, blocks, page tokens, heads, head_dim, pages gathered, dtype
    (2, 7, 3, 2, 5, 4, torch.bfloat16),  # odd page bytes: byte path
    (1, 5, 16, 2, 8, 3, torch.float16),
    (3, 9, 1, 1, 1, 9, torch.uint8),
    (2, 4, 4, 1, 4, 0, torch.float32),  # empty block table
    (1, 3, 32, 4, 64, 1, torch.bfloat16),  # a page of two chunks
    (1, 3, 100, 4, 64, 2, torch.bfloat16),  # seven chunks: two programs per page, the last partly idle
]


def _table(blocks: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(blocks, generator=torch.Generator().manual_seed(seed))[:n].to(DEVICE)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("as_list", [False, True])
def test_gather_matches_reference(case: tuple, as_list: bool) -> None:
    layers, blocks, page, heads, dim, n, dtype = case
    kv = torch.randn(layers, 2, blocks, page, heads, dim, device=DEVICE).to(dtype)
    cache = list(kv.unbind(0)) if as_list else kv
    table = _table(blocks, n, blocks + n)
    out = poison(torch.empty(layers, 2, n, page, heads, dim, device=DEVICE, dtype=dtype))
    gather_pages(cache, table, out)
    assert torch.equal(out, gather_ref(cache, table))


@pytest.mark.parametrize("case", CASES)
def test_scatter_matches_reference(case: tuple) -> None:
    layers, blocks, page, heads, dim, n, dtype = case
    layers_kv = [poison(torch.empty(2, blocks, page, heads, dim, device=DEVICE, dtype=dtype)) for _ in range(layers)]
    ref = [t.clone() for t in layers_kv]
    table = _table(blocks, n, blocks * 7 + n)
    buf = torch.randn(layers, 2, n, page, heads, dim, device=DEVICE).to(dtype)
    scatter_pages(buf, layers_kv, table)
    scatter_ref(buf, ref, table)
    for a, b in zip(layers_kv, ref, strict=True):
        assert torch.equal(a, b)


def test_round_trip_with_int32_table() -> None:
    kv = torch.randn(2, 2, 6, 8, 2, 16, device=DEVICE).to(torch.bfloat16)
    table = torch.tensor([5, 0, 3], dtype=torch.int32, device=DEVICE)
    buf = gather_pages(kv, table)
    other = poison(torch.empty_like(kv))
    scatter_pages(buf, other, table)
    assert torch.equal(other[:, :, table.long()], kv[:, :, table.long()])


@gpu
@pytest.mark.gpu
def test_out_of_range_device_entries_touch_nothing() -> None:
    kv = torch.randn(1, 2, 4, 2, 1, 4, device="cuda:0")
    out = poison(torch.empty(1, 2, 2, 2, 1, 4, device="cuda:0"))
    gather_pages(kv, torch.tensor([2, 9], device="cuda:0"), out)  # 9 is out of range: its page is skipped
    assert torch.equal(out[:, :, 0], kv[:, :, 2])
    assert bool((out[:, :, 1].view(torch.uint8) == 0xA5).all())


def test_bad_inputs_are_typed_errors() -> None:
    kv = torch.zeros(1, 2, 4, 2, 1, 4, device=DEVICE)
    with pytest.raises(KernelInputError):
        gather_pages(kv, torch.tensor([4]))  # a host table is checked on the host
    with pytest.raises(KernelInputError):
        gather_pages(kv, torch.tensor([0], device=DEVICE), out=torch.empty(3, device=DEVICE))
    with pytest.raises(KernelInputError):
        gather_pages([torch.zeros(3, 4, device=DEVICE)], torch.tensor([0], device=DEVICE))


@gpu
@pytest.mark.gpu
def test_gather_to_pinned_host_and_scatter_back() -> None:
    kv = torch.randn(4, 2, 64, 16, 8, 128, device="cuda:0").to(torch.bfloat16)
    table = torch.randperm(64, device="cuda:0")[:20]
    host = poison(torch.empty(4, 2, 20, 16, 8, 128, dtype=torch.bfloat16).pin_memory())
    gather_pages(kv, table, host, device=torch.device("cuda", 0))
    torch.cuda.synchronize()
    assert torch.equal(host, gather_ref(kv, table).cpu())
    back = poison(torch.empty_like(kv))
    scatter_pages(host, back, table, device=torch.device("cuda", 0))
    assert torch.equal(back[:, :, table], kv[:, :, table])


@multigpu
@pytest.mark.gpu
@pytest.mark.multigpu
def test_gather_from_peer() -> None:
    kv = torch.randn(2, 2, 32, 16, 8, 128, device="cuda:1").to(torch.bfloat16)
    table = torch.randperm(32, device="cuda:0")[:9]
    out = poison(torch.empty(2, 2, 9, 16, 8, 128, dtype=torch.bfloat16, device="cuda:0"))
    gather_pages(kv, table, out)
    torch.cuda.synchronize(0)
    assert torch.equal(out.cpu(), gather_ref(kv, table.to("cuda:1")).cpu())
