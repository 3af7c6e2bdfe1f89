"""The relay's per-chunk version checks on the CPU (the decisions `kernels.relay` makes around each copy)."""

from __future__ import annotations

import pytest

from fabricsim.kernels import seqlock
from fabricsim.kernels.errors import KernelInputError
from fabricsim.kernels.relay import (
    MOVED,
    OK,
    P_CHUNKS,
    P_SLOT,
    P_VER,
    RETRY,
    chunk_ranges,
    relay_chunk_check,
    trainer_chunk_check,
)


def _words(head: int, seq0: int, seq1: int) -> tuple[int, int, int]:
    w = [0, 0, 0]
    w[seqlock.HEAD], w[seqlock.SEQ0], w[seqlock.SEQ1] = head, seq0, seq1
    return tuple(w)


def _progress(ver: int, slot: int, chunks: int) -> tuple[int, int, int]:
    w = [0, 0, 0]
    w[P_VER], w[P_SLOT], w[P_CHUNKS] = ver, slot, chunks
    return tuple(w)


def test_chunks_cover_the_slot_exactly() -> None:
    assert chunk_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 4)]
    with pytest.raises(KernelInputError):
        chunk_ranges(8, 0)


def test_trainer_chunk_accepted_only_when_its_slot_held_v_before_and_after() -> None:
    v4_in_slot0 = _words(4 | 0, 4, 2)  # version 4 published in slot 0, slot 1 holds 2
    assert trainer_chunk_check(v4_in_slot0, v4_in_slot0, 4) == OK
    # one publish during the copy (6 into slot 1): slot 0 untouched, the chunk is still version 4
    assert trainer_chunk_check(v4_in_slot0, _words(6 | 1, 4, 6), 4) == OK
    # two publishes: slot 0 is being rewritten for 8 (seq odd): the copy may be torn, and a newer version exists
    assert trainer_chunk_check(v4_in_slot0, _words(6 | 1, 7, 6), 4) == MOVED
    # the head already names a newer version before the copy
    assert trainer_chunk_check(_words(6 | 1, 4, 6), _words(6 | 1, 4, 6), 4) == MOVED
    assert trainer_chunk_check(_words(2 | 1, 0, 2), _words(2 | 1, 0, 2), 4) == RETRY


def test_relay_chunk_waits_for_the_chunk_and_rejects_a_restart_during_the_copy() -> None:
    assert relay_chunk_check(_progress(4, 1, 3), _progress(4, 1, 3), 4, 2) == OK
    assert relay_chunk_check(_progress(4, 1, 2), _progress(4, 1, 2), 4, 2) == RETRY  # chunk 2 not there yet
    # upstream restarted with version 6 while we copied: those bytes may be 6's
    assert relay_chunk_check(_progress(4, 1, 3), _progress(6, 1, 0), 4, 2) == MOVED
    assert relay_chunk_check(_progress(6, 0, 0), _progress(6, 0, 0), 4, 0) == MOVED


def test_the_device_scripts_torture_summary_reads_the_committed_runs() -> None:
    """workloads_device_run.sh prints one line per relay torture file; its filter once took the int key `hops` for
    a hop's dict (TypeError on every file). Run the script's own one-liner on the committed results."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "validate" / "gpu" / "workloads_device_run.sh").read_text()
    (code,) = re.findall(r'python3 -c "(import json.*?)" "\$f"', script, flags=re.S)
    code = code.replace("\\\n", "")  # bash drops a backslash-newline inside double quotes
    files = sorted((root / "benchmarks" / "results" / "relay-h200").glob("relay-torture-*.json"))
    assert len(files) == 4
    for f in files:
        res = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"{f.name} torn 0 {{'hop1': (") and "trainer" not in res.stdout
