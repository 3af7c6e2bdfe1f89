"""Weight-sync strategies run for real on one GPU: a trainer process and a rollout process share it.

The trainer is this process; the rollout engine is a child process (spawned, a daemon: it dies with its
parent) that holds its own live weights, as colocated RL frameworks (verl, slime, NeMo-RL) run them. Each
mechanism is the real code path, timed end to end on the trainer's wall clock, from "the training step has
ended" to the rollout's reply that its live weights hold the new version (the rollout synchronises its
stream before it replies):

- `ipc-tensor-first`: the trainer exports one CUDA-IPC handle per tensor (torch's reductions), the rollout
  opens each and copies it into its live weights; the opened tensors are kept (steady state follows);
- `ipc-tensor-steady`: the handles are open already; the rollout copies every tensor again;
- `ipc-bucket`: per bucket, `BucketPlan.pack` into one flat buffer, one handle, the rollout opens it, copies
  each tensor's view into its live weights (one `copy_` per tensor, as engines' `load_weights` do), closes it
  and acknowledges; one buffer, buckets in order (slime's flattened buckets);
- `fp8-bucket`: the same, with the bucket cast to fp8 e4m3 (block scales of 128) by `kernels.fp8_cast` before
  the handle goes out: the rollout copies half the bytes into fp8 live weights;
- `host-staged`: the trainer copies every tensor into a pinned host checkpoint (shared memory registered with
  CUDA in both processes), then the rollout brings it back bucket by bucket: one H2D into its GPU bucket,
  one `copy_` per tensor (checkpoint-engine's path with one rank);
- `pool-pull` / `pool-zero-copy`: the trainer's `WeightPool` (double-buffered) is published (the optimizer
  wrote the idle slot in place, so publishing moves no payload); the rollout waits for the version and copies
  it into its live weights with `read_consistent`, or takes zero-copy `views()`;
- `noop`: one message round trip between the two processes (what every mechanism pays at least once).

Every case checks its result (checksums of the rollout's live weights against the trainer's) before its
time counts. Only torch, Triton and `kernels/` are imported: this runs on the GPU image without simpy.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")

import torch  # noqa: E402  (the environment above must be set before CUDA starts)

from fabricsim.kernels.bucket import ALIGN  # noqa: E402
from fabricsim.validate.gpu.measure_torch import sh, triton_version  # noqa: E402
from fabricsim.validate.workload_cases import (  # noqa: E402
    BUCKET_ALIGN,
    WorkloadCase,
    aligned,
    bucket_entries,
    plan_buckets,  # noqa: E402
)

if ALIGN != BUCKET_ALIGN:  # the suite's bucket plans must place tensors where kernels.bucket does
    raise ImportError(f"kernels.bucket.ALIGN is {ALIGN}, workload_cases.BUCKET_ALIGN {BUCKET_ALIGN}")

CHILD_TIMEOUT_S = 180.0
SHM_DIR = "/dev/shm"


def _checksum(ts: list[torch.Tensor]) -> list[float]:
    return [float(t.float().sum().item()) for t in ts]


# ---- the rollout process --------------------------------------------------------------------------------
class _Rollout:
    """State of the rollout engine in its own process; each method answers one command."""

    def __init__(self) -> None:
        self.dev = torch.device("cuda", 0)
        torch.cuda.set_device(self.dev)
        torch.ones(1, device=self.dev)
        self.stream = torch.cuda.Stream(self.dev)
        self.live: list[torch.Tensor] = []
        self.names: list[str] = []
        self.kept: list[torch.Tensor] = []
        self.scales: torch.Tensor | None = None
        self.host: torch.Tensor | None = None
        self.host_path = ""
        self.gbuf: torch.Tensor | None = None
        self.reader: Any = None

    def ping(self) -> str:
        return "pong"

    def setup(self, names: list[str], shapes: list[tuple[int, ...]], dtype: str) -> int:
        self.free()
        dt = torch.float8_e4m3fn if dtype == "fp8" else torch.bfloat16
        self.names = list(names)
        self.live = [torch.randn(s, device=self.dev).to(dt) for s in shapes]
        torch.cuda.synchronize()
        return len(self.live)

    def free(self) -> None:
        self.live, self.kept, self.gbuf, self.scales, self.reader = [], [], None, None, None
        if self.host is not None:
            with contextlib.suppress(Exception):
                torch.cuda.cudart().cudaHostUnregister(self.host.data_ptr())
            self.host = None
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def checksum(self, idx: list[int]) -> list[float]:
        return _checksum([self.live[i] for i in idx])

    def ipc_open_copy(self, handles: list[tuple]) -> float:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        t0 = time.perf_counter()
        with torch.cuda.stream(self.stream):
            for dst, args in zip(self.live, handles, strict=True):
                x = rebuild_cuda_tensor(*args)
                dst.copy_(x, non_blocking=True)
                self.kept.append(x)
        self.stream.synchronize()
        return time.perf_counter() - t0

    def drop_kept(self) -> None:
        self.kept = []
        gc.collect()
        torch.cuda.synchronize()

    def steady(self) -> None:
        with torch.cuda.stream(self.stream):
            for dst, x in zip(self.live, self.kept, strict=True):
                dst.copy_(x, non_blocking=True)
        self.stream.synchronize()

    def bucket(self, args: tuple, entries: list[tuple[int, int, int]], fp8: bool,
               scales: tuple[int, int, int] | None) -> None:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        x = rebuild_cuda_tensor(*args)
        with torch.cuda.stream(self.stream):
            for i, off, nbytes in entries:
                dst = self.live[i]
                if fp8:
                    off, nbytes = off // 2, nbytes // 2
                dst.view(-1).view(torch.uint8).copy_(x[off: off + nbytes], non_blocking=True)
            if scales is not None:  # (offset in the bucket, first scale index, count)
                soff, first, count = scales
                if self.scales is None or self.scales.numel() < first + count:
                    raise RuntimeError("fp8 scales buffer too small")
                self.scales[first: first + count].view(torch.uint8).copy_(x[soff: soff + 4 * count],
                                                                         non_blocking=True)
        self.stream.synchronize()
        del x  # the last reference: the storage's deleter closes the handle
        torch.cuda.synchronize()

    def alloc_scales(self, n: int) -> None:
        self.scales = torch.empty(n, dtype=torch.float32, device=self.dev)

    def host_attach(self, path: str, nbytes: int, bucket_bytes: int) -> None:
        self.host = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        rc = torch.cuda.cudart().cudaHostRegister(self.host.data_ptr(), nbytes, 0)
        if int(rc) != 0:
            self.host = None
            raise RuntimeError(f"cudaHostRegister of the shared checkpoint failed ({rc})")
        self.host_path = path
        self.gbuf = torch.empty(bucket_bytes, dtype=torch.uint8, device=self.dev)

    def host_sync(self, buckets: list[tuple[int, int, list[tuple[int, int, int]]]]) -> None:
        assert self.host is not None and self.gbuf is not None
        with torch.cuda.stream(self.stream):
            for off, nbytes, entries in buckets:
                self.gbuf[:nbytes].copy_(self.host[off: off + nbytes], non_blocking=True)
                for i, toff, tbytes in entries:
                    self.live[i].view(-1).view(torch.uint8).copy_(self.gbuf[toff: toff + tbytes], non_blocking=True)
        self.stream.synchronize()

    def pool_open(self, handle: Any) -> None:
        from fabricsim.kernels.weightpool import PoolReader

        self.reader = PoolReader.open(handle, device=0)

    def pool_pull(self, version: int) -> int:
        self.reader.wait_for(version, timeout=30.0)
        return self.reader.read_consistent(dict(zip(self.names, self.live, strict=True)))

    def pool_zero(self, version: int) -> int:
        v = self.reader.wait_for(version, timeout=30.0)
        views = self.reader.views()
        return v if len(views) == len(self.names) else -1


def _rollout_main(conn: Any) -> None:
    try:
        r = _Rollout()
        conn.send(("ok", "ready"))
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            r.free()
            return
        cmd, args = msg
        try:
            conn.send(("ok", getattr(r, cmd)(*args)))
        except Exception as exc:  # noqa: BLE001 - one failing command must not kill the suite
            conn.send(("error", f"{cmd}: {type(exc).__name__}: {exc}"[:400]))


class RolloutProcess:
    """The trainer's handle on the rollout process: `call(cmd, *args)` returns its answer or raises."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_rollout_main, args=(child,), daemon=True)
        self.proc.start()
        self._answer()

    def _answer(self) -> Any:
        if not self.conn.poll(CHILD_TIMEOUT_S):
            raise TimeoutError(f"rollout process gave no answer in {CHILD_TIMEOUT_S} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"rollout process: {value}")
        return value

    def call(self, cmd: str, *args: Any) -> Any:
        self.conn.send((cmd, args))
        return self._answer()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)


# ---- the trainer side -------------------------------------------------------------------------------------
class SyncRunner:
    """Runs the weight-sync cases of one model: the trainer's weights here, the rollout's in the child."""

    def __init__(self, rollout: RolloutProcess, names: list[str], shapes: list[tuple[int, ...]]) -> None:
        self.r = rollout
        self.dev = torch.device("cuda", 0)
        self.names, self.shapes = names, shapes
        self.w = [torch.randn(s, device=self.dev, dtype=torch.bfloat16) for s in shapes]
        self.sizes = [t.numel() * 2 for t in self.w]
        self.check_idx = sorted({0, len(self.w) // 2, len(self.w) - 1})
        self.r.call("setup", names, shapes, "bf16")
        torch.cuda.synchronize()

    def close(self) -> None:
        self.w = []
        self.r.call("free")
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def _check(self, what: str) -> None:
        want = _checksum([self.w[i] for i in self.check_idx])
        got = self.r.call("checksum", self.check_idx)
        if want != got:
            raise RuntimeError(f"{what}: the rollout's weights differ from the trainer's ({got} != {want})")

    @staticmethod
    def _timed(fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _reset_rollout(self) -> None:
        self.r.call("setup", self.names, self.shapes, "bf16")

    # -- mechanisms
    def noop(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        times = [self._timed(lambda: self.r.call("ping")) for _ in range(reps + 2)][2:]
        return {"times_s": times}

    def handle_facts(self) -> dict[str, Any]:
        """Distinct CUDA-IPC handles behind the tensors and the bytes each maps: torch exports the caching
        allocator's segment, so tensors sharing a segment share one handle, opened once."""
        segs = sorted((s["address"], s["total_size"]) for s in torch.cuda.memory_snapshot())
        starts = [a for a, _ in segs]
        seen: dict[int, int] = {}
        for t in self.w:
            k = bisect.bisect_right(starts, t.data_ptr()) - 1
            if k >= 0:
                seen[segs[k][0]] = int(segs[k][1])
        return {"handles": len(seen), "handle_bytes": sorted(seen.values())}

    def ipc_tensor_first(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        from torch.multiprocessing.reductions import reduce_tensor

        times, rollout_s = [], []
        for rep in range(reps + 1):  # the first opens also warm up the child's code paths
            self._reset_rollout()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            handles = [reduce_tensor(t)[1] for t in self.w]
            rollout_s.append(self.r.call("ipc_open_copy", handles))
            times.append(time.perf_counter() - t0)
            if rep == reps:
                self._check(case.id)
            else:
                self.r.call("drop_kept")
        return {"times_s": times[1:], "rollout_s": rollout_s[1:], **self.handle_facts()}

    def ipc_tensor_steady(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        # runs after ipc_tensor_first, whose last repetition left the handles open in the rollout
        times = [self._timed(lambda: self.r.call("steady")) for _ in range(reps + 1)][1:]
        self._check(case.id)
        self.r.call("drop_kept")
        return {"times_s": times}

    def ipc_bucket(self, case: WorkloadCase, reps: int, fp8: bool = False) -> dict[str, Any]:
        from torch.multiprocessing.reductions import reduce_tensor

        from fabricsim.kernels.bucket import BucketLayout, BucketPlan

        bb = int(case.params["bucket_bytes"])
        buckets = plan_buckets(self.sizes, bb)
        cap = max(sum(aligned(self.sizes[i]) for i in b) for b in buckets)
        buf = torch.empty(cap, dtype=torch.uint8, device=self.dev)
        plans, entries = [], []
        for b in buckets:
            ents = bucket_entries(b, self.sizes)
            layout = BucketLayout.of([self.w[i] for i in b])
            if [e.offset for e in layout.entries] != [o for _, o, _ in ents]:
                raise RuntimeError("bucket offsets differ from kernels.bucket's layout")
            plans.append((BucketPlan.build([self.w[i] for i in b], buf[: layout.nbytes], layout), layout.nbytes))
            entries.append(ents)
        block = int(case.params.get("block", 128))
        wire = scal = None
        if fp8:
            from fabricsim.kernels.fp8_cast import quantize

            max_scales = (cap // 2 + block - 1) // block
            soff = aligned(cap // 2)
            wire = torch.empty(soff + 4 * max_scales, dtype=torch.uint8, device=self.dev)
            total_scales = sum((n // 2 + block - 1) // block for _, n in plans)
            self.r.call("setup", self.names, self.shapes, "fp8")
            self.r.call("alloc_scales", total_scales)
            scal = soff
        stream = torch.cuda.current_stream()

        def one_sync() -> None:
            first = 0
            for (plan, nbytes), ents in zip(plans, entries, strict=True):
                plan.pack()
                if fp8:
                    n = nbytes // 2
                    ns = (n + block - 1) // block
                    quantize(buf[:nbytes].view(torch.bfloat16), block_size=block,
                             out=wire[:n].view(torch.float8_e4m3fn),
                             scales=wire[scal: scal + 4 * ns].view(torch.float32))
                    stream.synchronize()
                    self.r.call("bucket", reduce_tensor(wire)[1], ents, True, (scal, first, ns))
                    first += ns
                else:
                    stream.synchronize()
                    self.r.call("bucket", reduce_tensor(buf)[1], ents, False, None)

        times = [self._timed(one_sync) for _ in range(reps + 1)][1:]
        if fp8:
            self._check_fp8(plans, entries, buf, wire, block)
            self._reset_rollout()
        else:
            self._check(case.id)
        return {"times_s": times, "buffer_bytes": int((wire if fp8 else buf).numel()), "buckets": len(buckets),
                "bucket_tensors": [len(b) for b in buckets],
                "bucket_sizes": [n for _, n in plans]}

    def _check_fp8(self, plans: list, entries: list, buf: torch.Tensor, wire: torch.Tensor, block: int) -> None:
        # The last bucket is still in `wire`: its fp8 bytes must be in the rollout's live fp8 tensors.
        ents = entries[-1]
        want = [float(wire[off // 2: off // 2 + n // 2].view(torch.float8_e4m3fn).float().sum().item())
                for _, off, n in ents[:3]]
        got = self.r.call("checksum", [i for i, _, _ in ents[:3]])
        if want != got:
            raise RuntimeError(f"fp8 bucket: rollout holds other bytes than the trainer cast ({got} != {want})")

    def fp8_bucket(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        return self.ipc_bucket(case, reps, fp8=True)

    def host_staged(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        bb = int(case.params["bucket_bytes"])
        offs, off = [], 0
        for n in self.sizes:
            offs.append(off)
            off += aligned(n)
        total = off
        st = os.statvfs(SHM_DIR)
        if st.f_bavail * st.f_frsize < total + (1 << 30):
            raise RuntimeError(f"{SHM_DIR} has {st.f_bavail * st.f_frsize / 2**30:.1f} GiB free; the pinned "
                               f"checkpoint needs {total / 2**30:.1f} GiB")
        path = os.path.join(SHM_DIR, f"fabricsim-ckpt-{os.getpid()}")
        host = None
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, total)
            os.close(fd)
            host = torch.from_file(path, shared=True, size=total, dtype=torch.uint8)
            rc = torch.cuda.cudart().cudaHostRegister(host.data_ptr(), total, 0)
            if int(rc) != 0:
                raise RuntimeError(f"cudaHostRegister of the checkpoint failed ({rc})")
            buckets = plan_buckets(self.sizes, bb)
            desc = []
            for b in buckets:
                start = offs[b[0]]
                end = offs[b[-1]] + self.sizes[b[-1]]
                desc.append((start, end - start, [(i, offs[i] - start, self.sizes[i]) for i in b]))
            self.r.call("host_attach", path, total, max(n for _, n, _ in desc))
            stream = torch.cuda.current_stream()

            def one_sync() -> None:
                for t, o, n in zip(self.w, offs, self.sizes, strict=True):
                    host[o: o + n].copy_(t.view(-1).view(torch.uint8), non_blocking=True)
                stream.synchronize()
                self.r.call("host_sync", desc)

            times = [self._timed(one_sync) for _ in range(reps + 1)][1:]
            self._check(case.id)
            return {"times_s": times, "buckets": len(buckets), "bucket_tensors": [len(b) for b in buckets],
                    "bucket_sizes": [n for _, n, _ in desc], "host_bytes": total}
        finally:
            self._reset_rollout()  # drops the rollout's mapping and registration
            if host is not None:
                with contextlib.suppress(Exception):
                    torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _pool(self) -> Any:
        from fabricsim.kernels.weightpool import WeightPool

        pool = WeightPool({n: (s, torch.bfloat16) for n, s in zip(self.names, self.shapes, strict=True)},
                          device=0, double_buffered=True)
        for _ in range(2):  # both slots hold the trainer's weights, as after two optimizer steps
            pool.publish(dict(zip(self.names, self.w, strict=True)))
        self.r.call("pool_open", pool.export())
        return pool

    def pool_pull(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        pool = self._pool()
        try:
            def one_sync() -> None:
                with pool.writing():
                    pass  # the optimizer wrote the idle slot in place: publishing moves no payload
                self.r.call("pool_pull", pool.version())

            times = [self._timed(one_sync) for _ in range(reps + 1)][1:]
            self._check(case.id)
            return {"times_s": times}
        finally:
            self._reset_rollout()
            pool.close()

    def pool_zero_copy(self, case: WorkloadCase, reps: int) -> dict[str, Any]:
        pool = self._pool()
        try:
            publish_s: list[float] = []

            def one_sync() -> None:
                t0 = time.perf_counter()
                with pool.writing():
                    pass
                publish_s.append(time.perf_counter() - t0)
                if self.r.call("pool_zero", pool.version()) < 0:
                    raise RuntimeError("zero-copy views miss tensors")

            times = [self._timed(one_sync) for _ in range(reps + 1)][1:]
            return {"times_s": times, "publish_s": publish_s[1:]}
        finally:
            self._reset_rollout()
            pool.close()


MECH_METHODS = {"noop": "noop", "ipc-tensor-first": "ipc_tensor_first", "ipc-tensor-steady": "ipc_tensor_steady",
                "ipc-bucket": "ipc_bucket", "fp8-bucket": "fp8_bucket", "host-staged": "host_staged",
                "pool-pull": "pool_pull", "pool-zero-copy": "pool_zero_copy"}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    times = raw["times_s"]
    return {"reps": len(times), "time_s": float(statistics.median(times)), "spread_s": max(times) - min(times),
            **raw}


# ---- the device layer the suite driver calls --------------------------------------------------------------
class TorchWorkloads:
    """Runs workload cases on GPU 0 of this machine (one rollout process for all weight-sync cases)."""

    name = "torch"

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        torch.ones(1, device="cuda:0")
        self._rollout: RolloutProcess | None = None

    def gpu_count(self) -> int:
        return torch.cuda.device_count()

    def facts(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(0)
        triton_v = triton_version()
        st = os.statvfs(SHM_DIR)
        return {"gpus": torch.cuda.device_count(), "gpu_name": props.name, "gpu_memory_bytes": props.total_memory,
                "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_v,
                "shm_free_bytes": st.f_bavail * st.f_frsize,
                "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
                "query": sh("nvidia-smi", "--format=csv", "--query-gpu=name,driver_version,pcie.link.gen.current,"
                            "pcie.link.width.current,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit"),
                "topo_m": sh("nvidia-smi", "topo", "-m")}

    def rollout(self) -> RolloutProcess:
        if self._rollout is None:
            self._rollout = RolloutProcess()
        return self._rollout

    def run_sync(self, model: str, tensors: list[tuple[str, tuple[int, ...]]], cases: list[WorkloadCase],
                 reps: int, over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        """Per case id: the measured dict, or the reason it did not run (a string)."""
        out: dict[str, dict[str, Any] | str] = {}
        runner = SyncRunner(self.rollout(), [n for n, _ in tensors], [s for _, s in tensors])
        try:
            for c in cases:
                if over_budget():
                    out[c.id] = "time budget spent"
                    continue
                try:
                    out[c.id] = summarise(getattr(runner, MECH_METHODS[c.mech])(c, reps))
                except Exception as exc:  # noqa: BLE001 - listed as skipped; the other cases still run
                    out[c.id] = f"failed: {type(exc).__name__}: {exc}"[:400]
                    with contextlib.suppress(Exception):
                        runner._reset_rollout()
        finally:
            runner.close()
        return out

    def run_kv(self, cases: list[WorkloadCase], reps: int,
               over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        from fabricsim.validate.gpu.kv_torch import KVRunner

        out: dict[str, dict[str, Any] | str] = {}
        runner = KVRunner()
        try:
            for c in cases:
                if over_budget():
                    out[c.id] = "time budget spent"
                    continue
                try:
                    out[c.id] = runner.run(c, reps)
                except Exception as exc:  # noqa: BLE001
                    out[c.id] = f"failed: {type(exc).__name__}: {exc}"[:400]
        finally:
            runner.close()
        return out

    def run_multi(self, cases: list[WorkloadCase], reps: int,
                  over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        """Cases with several readers (`workloads_multi`); the rollout process is not needed for them."""
        from fabricsim.validate.gpu.workloads_multi import run_multi
        from fabricsim.validate.workload_cases import tensor_list

        if self._rollout is not None:
            self._rollout.close()
            self._rollout = None
        out: dict[str, dict[str, Any] | str] = {}
        for c in cases:
            if over_budget():
                out[c.id] = "time budget spent"
                continue
            try:
                out[c.id] = run_multi(c, tensor_list(c.model), reps)
            except Exception as exc:  # noqa: BLE001
                out[c.id] = f"failed: {type(exc).__name__}: {exc}"[:400]
            gc.collect()
            torch.cuda.empty_cache()
        return out

    def close(self) -> None:
        if self._rollout is not None:
            self._rollout.close()
            self._rollout = None
