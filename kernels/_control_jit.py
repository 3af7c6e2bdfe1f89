"""Triton code of `kernels.weightpool`: system-scope release stores of control words.

`atom.release.sys` (what `tl.atomic_xchg(..., sem="release", scope="sys")` lowers to) makes every write
this thread has observed, including all writes of earlier work in the stream, visible at system scope
before the new value is: readers on other GPUs or the host that see the value also see those writes.
"""

import triton
import triton.language as tl


@triton.jit
def store_words(words, i0, v0, i1, v1, TWO: tl.constexpr):
    # One thread stores both words in program order; the second release also orders the first.
    tl.atomic_xchg(words + i0, v0, sem="release", scope="sys")
    if TWO:
        tl.atomic_xchg(words + i1, v1, sem="release", scope="sys")
