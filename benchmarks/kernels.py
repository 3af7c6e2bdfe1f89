"""How fast the kernels of `kernels/` move bytes, against the copy-engine ceiling measured in the same run.

Measures, on every GPU path the machine has (D2D, P2P pull/push, H2D, D2H through pinned memory):
the copy engine (`Tensor.copy_`) and the SM-driven `bulk_copy` for sizes 64 KiB .. 1 GiB; paged KV
gather/scatter for page sizes 16 .. 256 tokens; bucket pack/unpack; fp8 cast-on-copy; and `WeightPool`
publish latency, observe latency from a reader process on another GPU, and `read_consistent`
bandwidth against a plain copy of the same bytes. GB/s are bytes copied (one way) per second; fp8
rows count bytes read plus written. Writes `kernels-bench.json` and `kernels-bench.csv` (atomically)
with the machine's facts (GPU, driver, torch/triton versions, `nvidia-smi topo -m`).

Run on a GPU machine from the repository root:
`source validate/gpu/checkout_env.sh;
python3 benchmarks/kernels.py --out benchmarks/results/kernels-<machine> [--budget-s 170]`
Timing: CUDA events around each operation on a non-default stream, median of repetitions after
warm-up, random (never zero) data, buffers several times the L2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZES = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB]
PAGE_TOKENS = [16, 32, 64, 128, 256]


class Bench:
    """Collects rows and keeps to a wall-clock budget (later sections are skipped, not truncated)."""

    def __init__(self, budget_s: float, rep_budget_s: float) -> None:
        self.rows: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + budget_s
        self.rep_budget_s = rep_budget_s
        self.skipped: list[str] = []

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def time(self, fn: Callable[[], Any], device: int, max_reps: int = 50) -> float:
        """Median seconds of `fn` (which enqueues on `device`'s current stream), CUDA events."""
        with torch.cuda.device(device):
            for _ in range(2):
                fn()
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            est = max(time.perf_counter() - t0, 1e-6)
            reps = int(min(max_reps, max(3, self.rep_budget_s / est)))
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for a, b in events:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize(device)
        return statistics.median(a.elapsed_time(b) for a, b in events) * 1e-3

    def add(self, **row: Any) -> None:
        if "bytes" in row and "time_s" in row and row["time_s"] > 0:
            row["GBps"] = row["bytes"] / row["time_s"] / 1e9
        self.rows.append(row)
        keys = ("section", "kernel", "path", "bytes", "page_tokens", "GBps", "frac_of_ce", "time_s")
        print("  ".join(f"{k}={_fmt(row[k])}" for k in keys if k in row), flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def machine_facts(kind: str) -> dict[str, Any]:
    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unavailable: {exc}"

    import triton

    return {
        "kind": kind, "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "driver": sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).strip(),
        "topo": sh(["nvidia-smi", "topo", "-m"]), "nvlink": sh(["nvidia-smi", "nvlink", "-s"])[:4000],
        "pcie": sh(["nvidia-smi", "--query-gpu=pcie.link.gen.current,pcie.link.width.current",
                    "--format=csv,noheader"]).strip(),
        "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", ""),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _rand_bytes(n: int, device: str) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)


def bench_bulk(b: Bench, n_gpu: int, max_bytes: int) -> dict[tuple[str, int], float]:
    """Copy engine vs bulk_copy on every path; returns the CE ceilings {(path, bytes): GB/s}."""
    from fabricsim.kernels.bulk_copy import bulk_copy

    sizes = [s for s in SIZES if s <= max_bytes]
    big = sizes[-1]
    g0 = _rand_bytes(big, "cuda:0")
    d0 = torch.empty(big, dtype=torch.uint8, device="cuda:0")
    h_src = g0.cpu().pin_memory()
    h_dst = torch.empty(big, dtype=torch.uint8).pin_memory()
    d1 = torch.empty(big, dtype=torch.uint8, device="cuda:1") if n_gpu > 1 else None
    # (path, bytes, copy-engine fn, [(variant, bulk fn, device it runs on)], device the CE copy runs on)
    paths: list[tuple[str, int, Callable, list, int]] = []
    for s in sizes:
        src, dst = g0[:s], d0[:s]
        paths.append(("d2d", s, lambda src=src, dst=dst: dst.copy_(src),
                      [("bulk", lambda src=src, dst=dst: bulk_copy(dst, src), 0)], 0))
        hs, hd = h_src[:s], h_dst[:s]
        paths.append(("h2d", s, lambda hs=hs, dst=dst: dst.copy_(hs, non_blocking=True),
                      [("bulk", lambda hs=hs, dst=dst: bulk_copy(dst, hs), 0)], 0))
        paths.append(("d2h", s, lambda hd=hd, src=src: hd.copy_(src, non_blocking=True),
                      [("bulk", lambda hd=hd, src=src: bulk_copy(hd, src, device=torch.device("cuda", 0)), 0)], 0))
        if d1 is not None:
            p = d1[:s]
            paths.append(("p2p", s, lambda p=p, src=src: p.copy_(src, non_blocking=True), [
                ("bulk_pull", lambda p=p, src=src: bulk_copy(p, src, device=torch.device("cuda", 1)), 1),
                ("bulk_push", lambda p=p, src=src: bulk_copy(p, src, device=torch.device("cuda", 0)), 0),
            ], 0))
    ceilings: dict[tuple[str, int], float] = {}
    for path, s, ce, variants, dev in paths:
        if b.time_left() < 0:
            b.skipped.append(f"bulk {path} {s}")
            continue
        t = b.time(ce, dev)
        ceilings[(path, s)] = s / t / 1e9
        b.add(section="bulk", kernel="copy_engine", path=path, bytes=s, time_s=t, frac_of_ce=1.0)
        for name, fn, vdev in variants:
            tv = b.time(fn, vdev)
            b.add(section="bulk", kernel=name, path=path, bytes=s, time_s=tv, frac_of_ce=t / tv)
        if s == big:  # check the big copies really moved the bytes
            torch.cuda.synchronize()
    assert torch.equal(d0[:big], g0[:big])
    return ceilings


def _ceiling(ceilings: dict, path: str, nbytes: int) -> float | None:
    cands = [(abs(s - nbytes), v) for (p, s), v in ceilings.items() if p == path]
    return min(cands)[1] if cands else None


def bench_paged(b: Bench, n_gpu: int, ceilings: dict, total: int) -> None:
    for tokens in PAGE_TOKENS:
        if b.time_left() < 0:
            b.skipped.append(f"paged {tokens}")
            continue
        _paged_case(b, n_gpu, ceilings, total, tokens)
        torch.cuda.empty_cache()


def _paged_case(b: Bench, n_gpu: int, ceilings: dict, total: int, tokens: int) -> None:
    from fabricsim.kernels.paged_kv import gather_pages, gather_ref, scatter_pages

    layers, heads, dim = 4, 8, 128
    page_bytes = tokens * heads * dim * 2
    n = max(1, total // (layers * 2 * page_bytes))
    blocks = 2 * n
    kv = torch.randn(layers, 2, blocks, tokens, heads, dim, device="cuda:0", dtype=torch.bfloat16)
    table = torch.randperm(blocks, device="cuda:0")[:n]
    out = torch.empty(layers, 2, n, tokens, heads, dim, device="cuda:0", dtype=torch.bfloat16)
    nbytes = out.numel() * 2
    host = torch.empty(out.shape, dtype=torch.bfloat16).pin_memory()
    dev0 = torch.device("cuda", 0)
    cases = [
        ("gather", "d2d", lambda: gather_pages(kv, table, out), 0),
        ("gather_torch_ref", "d2d", lambda: gather_ref(kv, table, out), 0),
        ("gather", "d2h", lambda: gather_pages(kv, table, host, device=dev0), 0),
        ("scatter", "h2d", lambda: scatter_pages(host, kv, table, device=dev0), 0),  # host holds real pages
    ]
    planes = [kv[i, j] for i in range(layers) for j in range(2)]
    idx = table.tolist()
    if n * 2 * layers <= 8192:  # what one copy-engine call per page costs (latency-bound for small pages)
        def per_page_ce() -> None:
            for p, o in zip(planes, out.view(layers * 2, n, tokens, heads, dim), strict=True):
                for k, blk in enumerate(idx):
                    o[k].copy_(p[blk])
        cases.append(("copy_engine_per_page", "d2d", per_page_ce, 0))
    if n_gpu > 1:
        kv1 = kv.to("cuda:1")
        cases.append(("gather", "p2p_pull", lambda: gather_pages(kv1, table, out), 0))
    for kernel, path, fn, dev in cases:
        t = b.time(fn, dev, max_reps=20)
        ce = _ceiling(ceilings, "p2p" if path.startswith("p2p") else path, nbytes)
        b.add(section="paged_kv", kernel=kernel, path=path, page_tokens=tokens, page_bytes=page_bytes,
              pages=n, layers=layers, bytes=nbytes, time_s=t,
              frac_of_ce=(nbytes / t / 1e9) / ce if ce else None)
    gather_pages(kv, table, out)
    assert torch.equal(out, gather_ref(kv, table))


def bench_bucket(b: Bench, n_gpu: int, ceilings: dict) -> None:
    from fabricsim.kernels.bucket import BucketLayout, BucketPlan, pack, unpack

    if b.time_left() < 0:
        b.skipped.append("bucket")
        return
    g = torch.Generator().manual_seed(0)
    sizes = [int(4 * KiB * 2 ** (10 * torch.rand(1, generator=g).item())) for _ in range(256)]
    dtypes = [torch.bfloat16, torch.float32]
    ts = [torch.randn(s // 4, device="cuda:0").to(dtypes[i % 2]) for i, s in enumerate(sizes)]
    layout = BucketLayout.of(ts)
    nbytes = sum(e.nbytes for e in layout.entries)
    bucket = torch.empty(layout.nbytes, dtype=torch.uint8, device="cuda:0")
    host = torch.empty(layout.nbytes, dtype=torch.uint8).pin_memory()
    outs = [torch.empty_like(t) for t in ts]
    views = layout.views(bucket)

    def loop_pack() -> None:
        for v, t in zip(views, ts, strict=True):
            v.copy_(t)

    pack_plan, unpack_plan = BucketPlan.build(ts, bucket, layout), BucketPlan.build(outs, bucket, layout)
    cases = [("pack", "d2d", lambda: pack(ts, bucket, layout)), ("unpack", "d2d", lambda: unpack(bucket, layout, outs)),
             ("pack_plan", "d2d", pack_plan.pack), ("unpack_plan", "d2d", unpack_plan.unpack),
             ("copy_engine_per_tensor_pack", "d2d", loop_pack),
             ("pack", "d2h", lambda: pack(ts, host, layout)), ("unpack", "h2d", lambda: unpack(host, layout, outs))]
    for kernel, path, fn in cases:
        t = b.time(fn, 0, max_reps=30)
        ce = _ceiling(ceilings, path, nbytes)
        b.add(section="bucket", kernel=kernel, path=path, tensors=len(ts), bytes=nbytes, time_s=t,
              frac_of_ce=(nbytes / t / 1e9) / ce if ce else None)
    pack(ts, bucket, layout)
    unpack(bucket, layout, outs)
    assert all(torch.equal(o, t) for o, t in zip(outs, ts, strict=True))


def bench_fp8(b: Bench, ceilings: dict, numel: int) -> None:
    from fabricsim.kernels.fp8_cast import dequantize, quantize, quantize_ref

    if b.time_left() < 0:
        b.skipped.append("fp8")
        return
    x = torch.randn(numel, device="cuda:0").to(torch.bfloat16)
    q = torch.empty(numel, dtype=torch.float8_e4m3fn, device="cuda:0")
    qh = torch.empty(numel, dtype=torch.float8_e4m3fn).pin_memory()
    sb = torch.empty(-(-numel // 128), dtype=torch.float32, device="cuda:0")
    st = torch.empty(1, dtype=torch.float32, device="cuda:0")
    y = torch.empty_like(x)
    rw = numel * 3  # bytes read + written (2 in, 1 out)
    ce = _ceiling(ceilings, "d2d", numel * 2)
    cases = [
        ("quantize_block128", "d2d", lambda: quantize(x, 128, out=q, scales=sb), rw),
        ("quantize_tensor", "d2d", lambda: quantize(x, None, out=q, scales=st), rw + numel * 2),
        ("quantize_ref_block128", "d2d", lambda: quantize_ref(x, 128), rw),
        ("dequantize_block128", "d2d", lambda: dequantize(q, sb, 128, out=y), rw),
        ("quantize_block128", "d2h", lambda: quantize(x, 128, out=qh, scales=sb), numel),
    ]
    for kernel, path, fn, nbytes in cases:
        t = b.time(fn, 0, max_reps=20)
        # d2d rows: bytes read + written against the copy engine's read+write rate (2x its copy GB/s);
        # the d2h row: fp8 bytes landed in host memory against the D2H copy ceiling.
        ref = 2 * ce if path == "d2d" and ce else _ceiling(ceilings, "d2h", numel)
        b.add(section="fp8", kernel=kernel, path=path, bytes=nbytes, elements=numel, time_s=t,
              frac_of_ce=(nbytes / t / 1e9) / ref if ref else None)
    qr, sr = quantize_ref(x[: 1 << 22], 128)
    q2, s2 = quantize(x[: 1 << 22].contiguous(), 128)
    assert torch.equal(q2.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s2, sr)


def _observer(handle: Any, device: int, n: int, q: Any, ready: Any) -> None:
    from fabricsim.kernels.weightpool import PoolReader

    torch.cuda.set_device(device)
    r = PoolReader.open(handle, device=device)
    seen: list[tuple[int, int]] = []
    last = r.version()
    polls, t_poll0 = 0, time.perf_counter_ns()
    ready.set()
    quiet_since = time.monotonic()
    while len(seen) < n and time.monotonic() - quiet_since < 5.0:  # stop if the writer went quiet
        v = r.version()
        polls += 1
        if v != last:
            seen.append((v, time.perf_counter_ns()))
            last = v
            quiet_since = time.monotonic()
    q.put({"seen": seen, "poll_us": (time.perf_counter_ns() - t_poll0) / polls / 1e3})


def bench_pool(b: Bench, n_gpu: int, sizes: list[int]) -> None:
    import torch.multiprocessing as mp

    from fabricsim.kernels.weightpool import WeightPool

    if b.time_left() < 0:
        b.skipped.append("weightpool")
        return
    # publish latency: an empty publish (version words only) and one of 256 MiB
    small = WeightPool({"w": ((1024,), torch.float32)}, device=0, double_buffered=True)
    for _ in range(20):
        small.publish(fill=lambda v: None)
    lat = []
    for _ in range(300):
        t0 = time.perf_counter()
        small.publish(fill=lambda v: None)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    b.add(section="weightpool", kernel="publish_empty", path="local", time_s=statistics.median(lat),
          p99_s=lat[int(0.99 * len(lat))], store=small.store_path)
    # observe latency: a reader process on the last GPU polls version()
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(), ctx.Event()
    n_obs = 200
    dev = n_gpu - 1
    p = ctx.Process(target=_observer, args=(small.export(), dev, n_obs, q, ready))
    p.start()
    ready.wait(120)
    starts, flips, ends = {}, {}, {}
    for _ in range(n_obs):
        time.sleep(0.002)
        t0 = time.perf_counter_ns()
        v = small.publish(fill=lambda v: None)
        starts[v], flips[v], ends[v] = t0, small.last_flip_ns, time.perf_counter_ns()
    res = q.get(timeout=120)
    p.join(30)
    # host clocks of both processes are the same CLOCK_MONOTONIC, so differences are meaningful
    for name, ref in (("observe_from_publish_start", starts), ("observe_from_flip_enqueued", flips),
                      ("observe_after_publish_return", ends)):
        d = sorted((t - ref[v]) / 1e9 for v, t in res["seen"] if v in ref)
        if d:
            b.add(section="weightpool", kernel=name, path=f"gpu0->gpu{dev}", time_s=statistics.median(d),
                  p99_s=d[int(0.99 * len(d))], samples=len(d), poll_us=res["poll_us"])
    small.close()
    # read_consistent vs a plain copy of the same bytes (wall clock, both synchronised)
    for size in sizes:
        if b.time_left() < 0:
            b.skipped.append(f"weightpool read {size}")
            continue
        _pool_read_case(b, n_gpu, size)
        torch.cuda.empty_cache()


def _pool_read_case(b: Bench, n_gpu: int, size: int) -> None:
    from fabricsim.kernels.weightpool import PoolReader, WeightPool

    for double in (False, True):
        mode = "double" if double else "single"
        pool = WeightPool({"w": ((size // 4,), torch.int32)}, device=0, double_buffered=double)
        src = torch.randint(0, 1 << 30, (size // 4,), dtype=torch.int32, device="cuda:0")
        publish_t = []
        for _ in range(5):
            t0 = time.perf_counter()
            pool.publish({"w": src})
            publish_t.append(time.perf_counter() - t0)
        b.add(section="weightpool", kernel="publish_full", path="local", mode=mode, bytes=size,
              time_s=statistics.median(publish_t))
        reader = PoolReader.open(pool.export())
        slot = reader.views()["w"].view(torch.uint8)
        stream = torch.cuda.Stream(0)
        loads = []
        for _ in range(200):
            t0 = time.perf_counter()
            reader.version()  # CPU loads of the shared control page
            loads.append(time.perf_counter() - t0)
        b.add(section="weightpool", kernel="reader_version", path="local", mode=mode,
              time_s=statistics.median(loads))
        for dev in range(min(n_gpu, 2)):
            dst = torch.empty(size, dtype=torch.uint8, device=f"cuda:{dev}")

            def plain(dst: torch.Tensor = dst, slot: torch.Tensor = slot, stream: torch.cuda.Stream = stream) -> None:
                with torch.cuda.stream(stream):
                    dst.copy_(slot, non_blocking=True)
                stream.synchronize()

            def consistent(dst: torch.Tensor = dst, reader: PoolReader = reader) -> None:
                reader.read_consistent(dst)

            attempts0 = reader.stats.attempts
            reads0 = reader.stats.reads
            for _ in range(3):
                plain()
                consistent()
            # interleaved, so clock and thermal drift hit both alike; medians of each
            ts: dict[str, list[float]] = {"plain_copy": [], "read_consistent": []}
            for _ in range(max(10, min(100, int(0.6 / max(size / 2e11, 1e-5))))):
                for name, fn in (("plain_copy", plain), ("read_consistent", consistent)):
                    t0 = time.perf_counter()
                    fn()
                    ts[name].append(time.perf_counter() - t0)
            res = {name: statistics.median(v) for name, v in ts.items()}
            path = "local" if dev == 0 else f"gpu0->gpu{dev}"
            tries = (reader.stats.attempts - attempts0) / max(1, reader.stats.reads - reads0)
            for name, t in res.items():
                b.add(section="weightpool", kernel=name, path=path, mode=mode, bytes=size, time_s=t,
                      vs_plain=res["plain_copy"] / t, attempts_per_read=tries if name == "read_consistent" else None)
            assert torch.equal(dst.view(torch.int32), src.to(dst.device))
        pool.close()


def write_results(out_dir: str, facts: dict, b: Bench) -> None:
    os.makedirs(out_dir, exist_ok=True)
    doc = {"facts": facts, "rows": b.rows, "skipped": b.skipped}
    _atomic(os.path.join(out_dir, "kernels-bench.json"), json.dumps(doc, indent=1, default=str))
    keys: list[str] = []
    for r in b.rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["kind", *keys])
    w.writeheader()
    for r in b.rows:
        w.writerow({"kind": facts["kind"], **r})
    _atomic(os.path.join(out_dir, "kernels-bench.csv"), buf.getvalue())


def _atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kernel and WeightPool benchmarks (needs CUDA)")
    ap.add_argument("--out", required=True, help="folder for kernels-bench.json / .csv")
    ap.add_argument("--kind", default=os.environ.get("DEVICE_KIND", "unknown"), help="machine kind label")
    ap.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget; later sections skip")
    ap.add_argument("--rep-budget-s", type=float, default=0.1, help="time spent repeating one measurement")
    ap.add_argument("--max-bytes", type=int, default=GiB)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    n_gpu = torch.cuda.device_count()
    for d in range(n_gpu):  # non-default streams everywhere (legacy default streams serialise copies)
        torch.cuda.set_stream(torch.cuda.Stream(d))
    facts = machine_facts(args.kind)
    print(json.dumps({k: v for k, v in facts.items() if k not in ("topo", "nvlink")}), flush=True)
    print(facts["topo"], flush=True)
    b = Bench(args.budget_s, args.rep_budget_s)
    ceilings: dict = {}

    def section(name: str, fn: Callable[[], Any]) -> Any:
        # One failing section is recorded and the others still run: a device call is precious.
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the results, then the run goes on
            traceback.print_exc()
            b.skipped.append(f"{name} failed: {exc!r}")
            return None
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            write_results(args.out, facts, b)

    ceilings = section("bulk", lambda: bench_bulk(b, n_gpu, args.max_bytes)) or {}
    section("paged_kv", lambda: bench_paged(b, n_gpu, ceilings, total=min(256 * MiB, args.max_bytes)))
    section("bucket", lambda: bench_bucket(b, n_gpu, ceilings))
    section("fp8", lambda: bench_fp8(b, ceilings, numel=min(256 * MiB, args.max_bytes // 2)))
    section("weightpool", lambda: bench_pool(b, n_gpu, [s for s in (64 * MiB, 256 * MiB, GiB) if s <= args.max_bytes]))
    print(f"skipped: {b.skipped}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
