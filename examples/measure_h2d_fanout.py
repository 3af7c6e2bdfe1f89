"""Measure what `studies/example_fanout.py` predicts: N GPUs copying to/from pinned host memory at once.

Runs on a GPU machine with only torch (no fabricsim import: the simulator's deps need not be there) and
writes JSON records the notebook stores as measured (`source="hw"`) rows beside the predictions:

    python3 examples/measure_h2d_fanout.py --topology h100-1 --out examples/data/h2d_fanout_h100-1.json

Method (shared/MEASURING.md): every copy on a non-default stream of its GPU, all streams gated on one
event recorded after a short sleep kernel so the copies start together, per-copy time from CUDA events
on its own stream; makespan = the slowest copy; median over repetitions after warm-up; random data in
pinned host buffers. Sizes 4 KiB .. 1 GiB in powers of 4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from datetime import UTC, datetime

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

import torch  # noqa: E402

SIZES = [1024 * 4**k for k in range(1, 11)]


def measure(fanout: int, direction: str, size: int, reps: int, warmup: int = 3) -> list[float]:
    """Makespans (s) of `reps` simultaneous copies of `size` bytes on GPUs 0..fanout-1."""
    devs = [torch.device("cuda", i) for i in range(fanout)]
    hosts = [torch.empty(size, dtype=torch.uint8, pin_memory=True).random_(0, 255) for _ in devs]
    gpus = [torch.empty(size, dtype=torch.uint8, device=d).random_(0, 255) for d in devs]
    streams = [torch.cuda.Stream(device=d) for d in devs]
    gate_stream = torch.cuda.Stream(device=devs[0])
    out = []
    for it in range(warmup + reps):
        with torch.cuda.stream(gate_stream):
            torch.cuda._sleep(200_000)  # ~0.1 ms: lets every copy be enqueued before any starts
            gate = torch.cuda.Event()
            gate.record(gate_stream)
        starts, ends = [], []
        for d, s, h, g in zip(devs, streams, hosts, gpus, strict=True):
            with torch.cuda.device(d), torch.cuda.stream(s):
                s.wait_event(gate)
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record(s)
                if direction == "h2d":
                    g.copy_(h, non_blocking=True)
                else:
                    h.copy_(g, non_blocking=True)
                e1.record(s)
                starts.append(e0)
                ends.append(e1)
        for d in devs:
            torch.cuda.synchronize(d)
        if it >= warmup:
            out.append(max(a.elapsed_time(b) for a, b in zip(starts, ends, strict=True)) / 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topology", required=True, help="fabricsim preset this machine is (e.g. h100-1, h200-2)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    n = torch.cuda.device_count()
    fanouts = [f for f in (1, 2, 4, 8) if f <= n]
    records = []
    for direction in ("h2d", "d2h"):
        for fanout in fanouts:
            for size in SIZES:
                reps = args.reps if size < (256 << 20) else max(5, args.reps // 3)
                times = measure(fanout, direction, size, reps)
                t = statistics.median(times)
                base = {"topology": args.topology, "direction": direction, "fanout": fanout, "size_bytes": size}
                records += [
                    {**base, "metric": "makespan_s", "value": t, "unit": "s"},
                    {**base, "metric": "aggregate_GBps", "value": size * fanout / t / 1e9, "unit": "GB/s"},
                    {**base, "metric": "per_gpu_GBps", "value": size / t / 1e9, "unit": "GB/s"},
                ]
                print(f"{direction} x{fanout} {size:>11} B: {t * 1e6:9.1f} us  {size / t / 1e9:6.1f} GB/s per GPU",
                      flush=True)
    doc = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "gpus": n,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "method": "median of reps after 3 warm-ups; copies gated to start together; CUDA events per stream",
        "records": records,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
