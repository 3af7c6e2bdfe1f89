"""Triton code of `kernels.weightpool`: system-scope release stores of control words, each followed by a fence.

`atom.release.sys` (what `tl.atomic_xchg(..., sem="release", scope="sys")` lowers to) makes every write
this thread has observed, including all writes of earlier work in the stream, visible at system scope
before the new value is: a reader (on the host, or on another GPU) that sees the value also sees those
writes. The `fence.sc.sys` after it orders the other way: the stored word is visible system-wide before
any later write of this stream, so no payload byte of a new version can be seen before the odd word that
announces it. The words live in pinned host memory (see `kernels._hostwords`), reached through unified
addressing.
"""

import triton
import triton.language as tl


@triton.jit
def _fence_sys():
    tl.inline_asm_elementwise("fence.sc.sys;\n\tmov.u32 $0, 0;", "=r", [], dtype=tl.uint32, is_pure=False,
                              pack=1)


@triton.jit
def store_words(words, i0, v0, i1, v1, TWO: tl.constexpr):
    # One thread stores both words in program order; the second release also orders the first.
    tl.atomic_xchg(words + i0, v0, sem="release", scope="sys")
    if TWO:
        tl.atomic_xchg(words + i1, v1, sem="release", scope="sys")
    _fence_sys()
