"""Triton code of `kernels.bucket` and `kernels.paged_kv` (imported on first use, so both import without Triton).

Both kernels copy many pieces (tensors of a bucket, pages of a KV cache) in fixed-size chunks; `copy_chunk`
is the one chunk copy they share: unmasked when the chunk is whole (so 16-byte vector accesses survive),
masked at a piece's end. Helpers are module-level `@triton.jit` functions because Triton resolves callees
through module globals.
"""

import triton
import triton.language as tl


@triton.jit
def copy_chunk(a, b, offs, n, whole, A_TO_B: tl.constexpr):
    """Copy words `offs` (those below `n`) from a to b, or from b to a; `whole`: no word is past `n`."""
    if whole:
        if A_TO_B:
            tl.store(b + offs, tl.load(a + offs))
        else:
            tl.store(a + offs, tl.load(b + offs))
    else:
        m = offs < n
        if A_TO_B:
            tl.store(b + offs, tl.load(a + offs, mask=m), mask=m)
        else:
            tl.store(a + offs, tl.load(b + offs, mask=m), mask=m)


@triton.jit
def bucket_copy(table, starts, n_tensors, bucket, bucket_bytes, TO_BUCKET: tl.constexpr, UNIT: tl.constexpr,
                WORD: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    lo = pid * 0  # int64 loop-carried values even when Triton specialises n_tensors == 1 to a constant
    hi = pid * 0 + n_tensors
    while hi - lo > 1:  # find the tensor t with starts[t] <= pid < starts[t + 1]
        mid = (lo + hi) // 2
        if tl.load(starts + mid) <= pid:
            lo = mid
        else:
            hi = mid
    chunk = pid - tl.load(starts + lo)
    t_off = tl.load(table + lo * 3)
    b_off = tl.load(table + lo * 3 + 1)
    nbytes = tl.load(table + lo * 3 + 2)
    n = nbytes // WORD
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    copy_chunk(bucket + t_off * UNIT, bucket + b_off * UNIT, offs, n, (chunk + 1) * CHUNK <= n, TO_BUCKET)
    if WORD > 1:  # noqa: SIM102 - a compile-time branch around a run-time one
        if (chunk + 1) * CHUNK >= n:  # the tensor's last program copies its last nbytes % WORD bytes
            o = n * WORD + tl.arange(0, WORD)
            copy_chunk(bucket_bytes + t_off * (UNIT * WORD), bucket_bytes + b_off * (UNIT * WORD), o, nbytes,
                       False, TO_BUCKET)


@triton.jit
def page_copy(
    plane_tab, table, buf, n_pages, groups, page_words, block_stride, num_blocks,
    GATHER: tl.constexpr, UNIT: tl.constexpr, CHUNK: tl.constexpr, TILES: tl.constexpr,
):
    pid = tl.program_id(0)
    plane = tl.program_id(1)
    page = pid // groups
    group = pid % groups
    block = tl.load(table + page).to(tl.int64)
    if (block >= 0) & (block < num_blocks):  # an out-of-range entry copies nothing
        pages_off = buf + (tl.load(plane_tab + plane) + block * block_stride) * UNIT
        buf_off = buf + (plane.to(tl.int64) * n_pages + page) * page_words
        for i in tl.static_range(TILES):
            chunk = group * TILES + i
            offs = chunk * CHUNK + tl.arange(0, CHUNK)
            copy_chunk(pages_off, buf_off, offs, page_words, (chunk + 1) * CHUNK <= page_words, GATHER)
