"""Python's cyclic garbage collector held off while a simulation is declared and run.

Why: a large simulation holds millions of live Python objects (declared items, records, simpy events, route
tuples) and creates them at a steady rate, so CPython keeps running full collections that walk the whole
growing heap and free almost nothing. A 1,024-GPU `shared-pool:pull-on-publish` sync whose reads are simpy
processes (two publishes) took 20.7-22.0 s with the pause and 26.4-26.7 s without; a declared `host-staged` one
5% less; a solver-bound `rdma-p2p` one the same (`benchmarks/gc_pause.py`, 2-core VM). Peak memory is the same
with collection held off (those objects are alive, not garbage), and reference counting still frees everything
acyclic at once; the cycles a run leaves are collected as usual after it. `FABRICSIM_GC_PAUSE=0` keeps the
collector running.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Automatic cyclic collection off inside the block, back as it was after it (nested blocks are fine: an
    inner one finds it off and leaves it off)."""
    was = gc.isenabled()
    if os.environ.get("FABRICSIM_GC_PAUSE", "1") != "0":
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
