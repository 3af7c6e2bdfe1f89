"""Weight-sync cases with several readers: IPC pull by 1..N readers, the relay chain, NCCL broadcasts.

Written for machines with two or more GPUs (the trainer on GPU 0, reader k on GPU k); the pool cases also run
*colocated* (every reader a separate process on GPU 0), which is how they are tested on a one-GPU machine.
Each case: the trainer publishes a new version of its `WeightPool` (double-buffered; the optimizer wrote the
idle slot in place) and the readers, already attached, are told the version at once:

- `ipc-pull-readers`: every reader copies the whole slot into its own buffer (`read_consistent`, one flat
  copy): N readers of one trainer GPU share its egress;
- `relay`: readers form a chain of `kernels.relay.Relay` hops (hop 1 reads the trainer's pool, hop k hop k-1),
  chunked and pipelined;
- `nccl-flat` / `nccl-tensor` / `nccl-bucket` (two or more GPUs only: NCCL refuses two ranks on one GPU):
  rank 0 broadcasts one flat buffer, one tensor at a time, or packed buckets (`BucketPlan`) unpacked by every
  receiver.

Time: the trainer's wall clock from the publish (or rank 0's barrier) to the last reader's reply; each reader
also reports its own read (`reader_s`). After the timed repetitions one more version is published and every
reader checks its copy against the trainer's bytes (a checksum), outside any timed region.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import time
from typing import Any

import torch

from fabricsim.validate.workload_cases import WorkloadCase, plan_buckets

TIMEOUT_S = 180.0


def _sum(t: torch.Tensor) -> float:
    return float(t.view(torch.int32).to(torch.int64).sum().item()) if t.numel() >= 4 else 0.0


def _reader_main(conn: Any, device: int, handle: Any, mode: str, chunk_bytes: int) -> None:
    """A reader process: attaches once, then answers ('go', version) with the seconds its read took."""
    try:
        torch.cuda.set_device(device)
        from fabricsim.kernels.relay import Relay
        from fabricsim.kernels.weightpool import PoolReader

        if mode == "relay":
            up = PoolReader.open(handle, device=device) if not hasattr(handle, "progress_path") else handle
            hop = Relay(up, device=device, chunk_bytes=chunk_bytes)
            conn.send(("ok", hop.export()))
        else:
            reader = PoolReader.open(handle, device=device)
            dst = torch.empty(reader.layout.slot_bytes, dtype=torch.uint8, device=f"cuda:{device}")
            conn.send(("ok", None))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            _cmd, version = msg
            t0 = time.perf_counter()
            if mode == "relay":
                v = hop.pull(version, timeout=60.0)
                flat = hop.pool.mem[4096 + (hop.pool.words.load()[0] & 1) * hop.pool.layout.slot_bytes:][
                    : hop.pool.layout.slot_bytes]
            else:
                v = reader.read_consistent(dst, timeout=60.0)
                flat = dst
            took = time.perf_counter() - t0
            conn.send(("ok", (took, v)))  # the checksum is asked for separately, outside the timed region
            if conn.recv() == "sum":
                conn.send(("ok", _sum(flat)))
    except Exception as exc:  # noqa: BLE001 - reported to the trainer
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:400]))


class _Readers:
    def __init__(self, devices: list[int], handle: Any, mode: str, chunk_bytes: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        up = handle
        for d in devices:  # a relay hop reads the previous one: started in chain order
            a, b = ctx.Pipe()
            p = ctx.Process(target=_reader_main, args=(b, d, up, mode, chunk_bytes), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
            out = self._answer(a)
            if mode == "relay":
                up = out

    @staticmethod
    def _answer(conn: Any) -> Any:
        if not conn.poll(TIMEOUT_S):
            raise TimeoutError("a reader process gave no answer")
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"reader: {value}")
        return value

    def go(self, version: int, checksum: bool = False) -> list[Any]:
        """Tell every reader the version; their (seconds, version) answers. With `checksum` each reader then
        also sends the sum of its copy (after the timed part)."""
        for c in self.conns:
            c.send(("go", version))
        out = [self._answer(c) for c in self.conns]
        for c in self.conns:
            c.send("sum" if checksum else "skip")
        if checksum:
            out = [(*o, self._answer(c)) for o, c in zip(out, self.conns, strict=True)]
        return out

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send(None)
        for p in self.procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()


def run_pool_case(case: WorkloadCase, tensors: list[tuple[str, tuple[int, ...]]], reps: int,
                  colocated: bool) -> dict[str, Any]:
    """`ipc-pull-readers` or `relay` with `case.params['readers']` readers."""
    from fabricsim.kernels.weightpool import WeightPool

    n = int(case.params["readers"])
    devices = [0] * n if colocated else [1 + k % max(1, torch.cuda.device_count() - 1) for k in range(n)]
    pool = WeightPool({name: (shape, torch.bfloat16) for name, shape in tensors}, device=0, double_buffered=True)
    w = {name: torch.randn(shape, device="cuda:0").to(torch.bfloat16) for name, shape in tensors}
    for _ in range(2):
        pool.publish(w)
    mode = "relay" if case.mech == "relay" else "pull"
    readers = _Readers(devices, pool.export(), mode, int(case.params.get("chunk_bytes", 64 << 20)))
    try:
        times, parts = [], []
        for _ in range(reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with pool.writing():
                pass
            out = readers.go(pool.version())
            times.append(time.perf_counter() - t0)
            parts.append([o[0] for o in out])
        with pool.writing():  # one more version, untimed, whose copies every reader checksums
            pass
        out = readers.go(pool.version(), checksum=True)
        slot = (pool.words.load()[0] & 1)
        want = _sum(pool.mem[4096 + slot * pool.layout.slot_bytes:][: pool.layout.slot_bytes])
        bad = [k for k, o in enumerate(out) if o[1] != pool.version() or o[2] != want]
        if bad:
            raise RuntimeError(f"readers {bad} hold other bytes than the trainer's version {pool.version()}")
        return {"times_s": times[1:], "reader_s": parts[1:], "slot_bytes": pool.layout.slot_bytes,
                "devices": devices, "colocated": colocated}
    finally:
        readers.close()
        pool.close()


def _nccl_rank(rank: int, world: int, port: int, tensors: list[tuple[str, tuple[int, ...]]], mech: str,
               bucket_bytes: int, reps: int, q: Any) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=dev)
    try:
        ws = [torch.randn(s, device=dev).to(torch.bfloat16) for _, s in tensors]
        sizes = [t.numel() * 2 for t in ws]
        flat = torch.empty(sum(sizes), dtype=torch.uint8, device=dev)
        plans = []
        if mech == "nccl-bucket":
            from fabricsim.kernels.bucket import BucketLayout, BucketPlan

            groups = plan_buckets(sizes, bucket_bytes)
            cap = max(BucketLayout.of([ws[i] for i in g]).nbytes for g in groups)
            buf = torch.empty(cap, dtype=torch.uint8, device=dev)
            for g in groups:
                lay = BucketLayout.of([ws[i] for i in g])
                plans.append((BucketPlan.build([ws[i] for i in g], buf[: lay.nbytes], lay), buf[: lay.nbytes]))

        def once() -> None:
            if mech == "nccl-flat":
                dist.broadcast(flat, src=0)
            elif mech == "nccl-tensor":
                for t in ws:
                    dist.broadcast(t, src=0)
            else:
                for plan, b in plans:
                    if rank == 0:
                        plan.pack()
                    dist.broadcast(b, src=0)
                    if rank != 0:
                        plan.unpack()
            torch.cuda.synchronize()

        times = []
        for _ in range(reps + 1):
            dist.barrier(device_ids=[rank])
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            once()
            dist.barrier(device_ids=[rank])
            times.append(time.perf_counter() - t0)
        if rank == 0:
            q.put({"times_s": times[1:], "world": world})
    finally:
        dist.destroy_process_group()


def run_nccl_case(case: WorkloadCase, tensors: list[tuple[str, tuple[int, ...]]], reps: int) -> dict[str, Any]:
    world = int(case.params["readers"]) + 1
    if torch.cuda.device_count() < world:
        raise RuntimeError(f"needs {world} GPUs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    procs = [ctx.Process(target=_nccl_rank, args=(r, world, port, tensors, case.mech,
                                                  int(case.params.get("bucket_bytes", 256 << 20)), reps, q),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        return q.get(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def run_multi(case: WorkloadCase, tensors: list[tuple[str, tuple[int, ...]]], reps: int) -> dict[str, Any]:
    colocated = bool(case.params.get("colocated", False))
    raw = (run_nccl_case(case, tensors, reps) if case.mech.startswith("nccl")
           else run_pool_case(case, tensors, reps, colocated))
    t = raw["times_s"]
    return {"reps": len(t), "time_s": float(statistics.median(t)), "spread_s": max(t) - min(t), **raw}
