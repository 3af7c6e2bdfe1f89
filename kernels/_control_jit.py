"""Triton code of `kernels.weightpool`: one system-scope release store of a control word.

`atom.release.sys` (what `tl.atomic_xchg(..., sem="release", scope="sys")` lowers to) makes every write
this thread has observed, including all writes of earlier work in the stream, visible at system scope
before the new value is: readers on other GPUs or the host that see the value also see those writes.
"""

import triton
import triton.language as tl


@triton.jit
def store_word(words, index, value):
    tl.atomic_xchg(words + index, value, sem="release", scope="sys")
