"""Relay torture test: a trainer publishes continuously, a chain of relay hops (separate processes) follows it.

Version v fills word i of the trainer's slot (int32) with `i + v`; every hop, after each `Relay.pull`, checks
that its own published slot is exactly one version (`value - i` equal to the version it reports) and counts
any that is not (torn). Hops run as separate processes on the given GPUs (one GPU: all on it).

Run: `python -m fabricsim.kernels.relay_torture --hops 2 --seconds 10 --out relay.json` (needs CUDA).
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

from fabricsim.kernels.errors import PoolError
from fabricsim.kernels.relay import Relay, RelayHandle
from fabricsim.kernels.weightpool import PoolHandle, PoolReader, WeightPool


def _trainer(n_words: int, device: int, seconds: float, gap_us: float, q: Any, stop: Any) -> None:
    torch.cuda.set_device(device)
    dev = torch.device("cuda", device)
    pool = WeightPool({"w": ((n_words,), torch.int32)}, device=dev, double_buffered=True)
    base = torch.arange(n_words, dtype=torch.int32, device=dev)
    torch.cuda.synchronize(dev)  # the pool's stream reads `base`
    pool.publish(fill=lambda views: views["w"].copy_(base + 2))
    q.put(("trainer-handle", pool.export()))
    t0 = time.perf_counter()
    published = 1
    while time.perf_counter() - t0 < seconds + 5 and not stop.is_set():
        v = pool.version() + 2
        pool.publish(fill=lambda views, v=v: torch.add(base, v, out=views["w"]))
        published += 1
        if gap_us:
            time.sleep(gap_us / 1e6)
    q.put(("trainer", {"published": published, "last_version": pool.version()}))
    stop.wait(timeout=60)
    pool.close()


def _hop(rank: int, upstream: PoolHandle | RelayHandle, device: int, chunk_bytes: int, seconds: float, q: Any,
         stop: Any) -> None:
    torch.cuda.set_device(device)
    up = PoolReader.open(upstream, device=device) if isinstance(upstream, PoolHandle) else upstream
    relay = Relay(up, device=device, chunk_bytes=chunk_bytes)
    q.put((f"hop{rank}-handle", relay.export()))
    n_words = relay.pool.layout.slot_bytes // 4
    base = torch.arange(n_words, dtype=torch.int32, device=torch.device("cuda", device))
    pulls = torn = 0
    last = 0
    versions: list[int] = []
    t0 = time.perf_counter()
    error = ""
    while time.perf_counter() - t0 < seconds:
        try:
            v = relay.pull(last + 2, timeout=max(1.0, seconds - (time.perf_counter() - t0)))
        except PoolError as exc:
            if time.perf_counter() - t0 < seconds - 0.5:  # a timeout at the end of the run is its end, not an error
                error = f"{type(exc).__name__}: {exc}"
            break
        pulls += 1
        got = relay.current()["w"]
        if not bool(((got - base) == v).all()):
            torn += 1
        versions.append(v)
        last = v
    q.put((f"hop{rank}", {"pulls": pulls, "torn": torn, "chunks": relay.stats.chunks, "retries": relay.stats.retries,
                          "restarts": relay.stats.restarts, "versions_seen": len(set(versions)),
                          "skipped_versions": sum(1 for a, b in zip(versions, versions[1:], strict=False)
                                                  if b - a > 2),
                          "seconds": time.perf_counter() - t0, "error": error}))
    stop.wait(timeout=60)
    relay.close()


def run(hops: int = 2, seconds: float = 10.0, mib: int = 64, chunk_mib: int = 8, gap_us: float = 0.0,
        devices: list[int] | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    n = torch.cuda.device_count()
    devices = devices or [0]
    procs = []
    results: dict[str, Any] = {"hops": hops, "seconds": seconds, "mib": mib, "chunk_mib": chunk_mib, "gap_us": gap_us}

    def wait_for(key: str) -> Any:
        while True:
            k, v = q.get(timeout=120)
            if k == key:
                return v
            results[k] = v

    try:
        p = ctx.Process(target=_trainer, args=(mib * (1 << 20) // 4, devices[0] % n, seconds, gap_us, q, stop),
                        daemon=True)
        p.start()
        procs.append(p)
        upstream: Any = wait_for("trainer-handle")
        for h in range(1, hops + 1):
            dev = devices[h % len(devices)] % n
            p = ctx.Process(target=_hop, args=(h, upstream, dev, chunk_mib << 20, seconds, q, stop), daemon=True)
            p.start()
            procs.append(p)
            upstream = wait_for(f"hop{h}-handle")
        deadline = time.monotonic() + seconds + 120
        while not all(f"hop{h}" in results for h in range(1, hops + 1)) and time.monotonic() < deadline:
            k, v = q.get(timeout=max(1.0, deadline - time.monotonic()))
            results[k] = v
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    results["torn_total"] = sum(results.get(f"hop{h}", {}).get("torn", 0) for h in range(1, hops + 1))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fabricsim.kernels.relay_torture")
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--chunk-mib", type=int, default=8)
    ap.add_argument("--gap-us", type=float, default=0.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("relay_torture: no CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    res = run(args.hops, args.seconds, args.mib, args.chunk_mib, args.gap_us)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0 if res["torn_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
