"""WeightPool torture test: a writer publishes continuously, reader processes check every read.

Version v fills word i of the slot (viewed as int32) with `i + v`, so a read that mixes two versions
shows as words whose `value - i` differ. Readers (separate processes, spread over the GPUs) call
`read_consistent` until each has `reads` successful reads and count any that are not exactly one
version (torn). A control reader copies without the protocol, to show that tearing does happen here
and the check would catch it.

Run: `python -m fabricsim.kernels.weightpool_torture --mode double --readers 2 --reads 10000 --out result.json`
(needs CUDA; prints one JSON object and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import torch.multiprocessing as mp

from fabricsim.kernels.errors import PoolTimeoutError
from fabricsim.kernels.weightpool import HEADER_BYTES, PoolHandle, PoolReader, WeightPool


def _pattern_base(n_words: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n_words, dtype=torch.int32, device=device)


def _reader(rank: int, handle: PoolHandle, device: int, reads: int, control_reads: int, seconds: float, q: Any,
            done: Any) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.cuda.set_device(device)
    reader = PoolReader.open(handle, device=device)
    n_words = handle.layout.slot_bytes // 4
    base = _pattern_base(n_words, torch.device("cuda", device))
    dst = torch.empty(handle.layout.slot_bytes, dtype=torch.uint8, device=f"cuda:{device}")
    torn, versions, done_reads = 0, set(), 0
    t0 = time.perf_counter()
    for _ in range(reads):
        left = seconds - (time.perf_counter() - t0)
        if left <= 0:
            break  # out of time: report what was read
        try:
            v = reader.read_consistent(dst, timeout=left)
        except PoolTimeoutError:
            break  # starved: report what was read
        done_reads += 1
        diff = dst.view(torch.int32) - base
        if not bool((diff == v).all()):
            torn += 1
        versions.add(v)
    elapsed = time.perf_counter() - t0
    # Control: plain copies with no version check, while the writer keeps publishing.
    control_torn = 0
    slot0 = reader.mem[HEADER_BYTES : HEADER_BYTES + handle.layout.slot_bytes]
    for _ in range(control_reads):
        dst.copy_(slot0)
        diff = dst.view(torch.int32) - base
        if bool((diff != diff[0]).any()):
            control_torn += 1
    q.put({
        "rank": rank, "device": device, "pool_device": handle.device, "reads": done_reads, "torn": torn,
        "attempts": reader.stats.attempts, "retries": reader.stats.retries,
        "retry_rate": reader.stats.retry_rate, "reasons": reader.stats.reasons,
        "distinct_versions": len(versions), "seconds": elapsed, "control_reads": control_reads,
        "control_torn": control_torn,
    })
    done.wait()


def torture(mode: str, readers: int, reads: int, payload_mib: int, control_reads: int, gap_us: float,
            max_seconds: float = 300.0) -> dict:
    """Run one torture round; returns the summary (torn reads must be 0).

    A seqlock lets a writer that publishes back to back starve single-slot readers (every attempt overlaps
    a write), so readers stop after `max_seconds` and the summary says so (`complete: false`) rather than
    hang.
    """
    ctx = mp.get_context("spawn")
    n_gpu = torch.cuda.device_count()
    n_words = payload_mib * (1 << 20) // 4
    pool = WeightPool({"a": ((n_words // 2,), torch.int32), "b": ((n_words - n_words // 2,), torch.int32)},
                      device=0, double_buffered=(mode == "double"))
    dev = torch.device("cuda", 0)
    base = _pattern_base(n_words, dev)
    half = n_words // 2

    def fill_for(v: int):
        def fill(views: dict[str, torch.Tensor]) -> None:
            torch.add(base[:half], v, out=views["a"])
            torch.add(base[half:], v, out=views["b"])
        return fill

    pool.publish(fill=fill_for(2))
    if mode == "double":
        pool.publish(fill=fill_for(4))
    handle = pool.export()
    q, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_reader, args=(r, handle, r % n_gpu, reads, control_reads, max_seconds, q, done))
             for r in range(readers)]
    for p in procs:
        p.start()
    results: list[dict] = []
    publishes = 0
    t0 = time.perf_counter()
    try:
        while len(results) < readers:
            if time.perf_counter() - t0 > max_seconds + 120:  # readers stop at max_seconds; this is a backstop
                raise RuntimeError("reader processes did not report")
            v = pool.version() + 2
            pool.publish(fill=fill_for(v))
            publishes += 1
            if gap_us:
                time.sleep(gap_us * 1e-6 * (publishes % 3))
            while not q.empty():
                results.append(q.get())
            if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                raise RuntimeError("a reader process failed")
        elapsed = time.perf_counter() - t0
    finally:  # never leave readers waiting on `done` (the interpreter would join them at exit and hang)
        done.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    store_path = pool.store_path
    pool.close()
    attempts = sum(r["attempts"] for r in results)
    return {
        "mode": mode, "store": store_path, "complete": all(r["reads"] == reads for r in results), "gpus": n_gpu,
        "payload_MiB": payload_mib, "writer_publishes": publishes,
        "publish_rate_per_s": publishes / elapsed, "reads": sum(r["reads"] for r in results),
        "torn": sum(r["torn"] for r in results), "attempts": attempts,
        "retry_rate": (attempts - sum(r["reads"] for r in results)) / attempts if attempts else 0.0,
        "control_torn": sum(r["control_torn"] for r in results),
        "control_reads": sum(r["control_reads"] for r in results), "readers": results, "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["single", "double", "both"], default="both")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--reads", type=int, default=10_000, help="successful reads per reader")
    ap.add_argument("--payload-mib", type=int, default=8)
    ap.add_argument("--control-reads", type=int, default=300)
    ap.add_argument("--gap-us", type=float, default=0.0, help="writer pause between publishes (x0, x1, x2)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop a round after this long")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("weightpool_torture: no CUDA device: nothing to test", file=sys.stderr)
        return 2
    modes = ["single", "double"] if args.mode == "both" else [args.mode]
    out = {m: torture(m, args.readers, args.reads, args.payload_mib, args.control_reads,
                      args.gap_us if m == "single" else 0.0, args.max_seconds) for m in modes}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0 if all(r["torn"] == 0 and r["complete"] for r in out.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
