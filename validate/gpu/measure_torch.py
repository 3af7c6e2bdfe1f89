"""The real device layer: times copies, NCCL collectives and CUDA IPC on GPUs with torch (MEASURING.md).

Only torch (and, if present, the Triton bulk-copy kernel) is imported here — never the simulator, which is
not on the GPU image. How each rule of MEASURING.md is kept:

1. every copy runs on a non-default stream of the GPU that issues it, and for a peer copy the destination
   GPU's current stream is a fresh non-default one too, so torch's cross-device barrier never serialises;
2. `CUDA_DEVICE_MAX_CONNECTIONS` is set (to 32 unless the caller set it) before CUDA starts;
3. a `torch.cuda._sleep` gate on GPU 0 holds every stream until all copies are enqueued;
4. each copy's finish is taken on GPU 0's clock: a per-copy clock stream waits for the copy's completion
   event and records its own; gate -> that event is the finish time, less the hop cost measured with empty
   copies; each copy is also timed on its own stream (the figure used for lone copies);
7. sizes 4 KiB..1 GiB, random (never zero) data, medians after warm-up.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
for _var in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
    os.environ[_var] = "0" if _var == "NCCL_NVLS_ENABLE" else "1"

import torch  # noqa: E402  (the environment above must be set before CUDA starts)

from fabricsim.validate.cases import Case, Xfer  # noqa: E402

GATE_CYCLES = 4_000_000  # ~2 ms at boost clock: longer than enqueueing any case
L2_FLUSH_BYTES = 256 << 20
CHILD_TIMEOUT_S = 150.0  # a hung NCCL or IPC child must not take the whole run down with it


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a fact we cannot read is recorded as such
        return f"unavailable: {type(exc).__name__}"


def _ev() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def _dev(endpoint: str) -> torch.device:
    return torch.device(f"cuda:{int(endpoint[3:])}")



def sh(*cmd: str) -> str:
    """A command's output for the machine facts (nvidia-smi and friends), or why it is unavailable."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "absent"
    return triton.__version__

class TorchDevice:
    """Measures on the CUDA GPUs torch sees."""

    name = "torch"

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        self.n = torch.cuda.device_count()
        self._streams: dict[tuple[int, str], torch.cuda.Stream] = {}
        for d in range(self.n):
            torch.ones(1, device=f"cuda:{d}")
        self._rand = torch.randint(0, 256, (1 << 30,), dtype=torch.uint8, device="cuda:0")
        # Written before every gated start so no repetition finds its data in the 50-60 MB L2 (MEASURING 7).
        self._scratch = [torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=f"cuda:{d}") for d in range(self.n)]
        self._bulk_copy, self.sm_note = self._load_bulk_copy()
        self.offsets = {d: self._hop_offset(d) for d in range(self.n)}

    # ---- facts ---------------------------------------------------------------------------------------
    def gpu_count(self) -> int:
        return self.n

    def has_sm_copies(self) -> tuple[bool, str]:
        return self._bulk_copy is not None, self.sm_note

    def facts(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(0)
        triton_v = triton_version()
        peer = {f"{a}->{b}": _try(lambda a=a, b=b: torch.cuda.can_device_access_peer(a, b))
                for a in range(self.n) for b in range(self.n) if a != b}
        return {
            "gpus": self.n,
            "gpu_name": props.name,
            "gpu_memory_bytes": props.total_memory,
            "sms": props.multi_processor_count,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "nccl": _try(lambda: ".".join(map(str, torch.cuda.nccl.version()))),
            "triton": triton_v,
            "peer_access": peer,
            "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
            "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
            "hop_offset_s": self.offsets,
            "topo_m": sh("nvidia-smi", "topo", "-m"),
            "nvlink_status": sh("nvidia-smi", "nvlink", "-s"),
            "query": sh("nvidia-smi", "--format=csv", "--query-gpu=name,pci.bus_id,driver_version,"
                        "pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max,"
                        "memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit"),
            "cpu": sh("sh", "-c", "lscpu | head -20"),
        }

    # ---- copies ----------------------------------------------------------------------------------------
    def _load_bulk_copy(self) -> tuple[Callable | None, str]:
        try:
            from fabricsim.kernels.bulk_copy import bulk_copy
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip SM copies, say why"
            return None, f"kernels.bulk_copy not importable ({type(exc).__name__}: {exc})"
        try:
            a = torch.randint(0, 256, (1 << 16,), dtype=torch.uint8, device="cuda:0")
            b = torch.empty_like(a)
            bulk_copy(b, a)
            torch.cuda.synchronize()
            if not torch.equal(a, b):
                return None, "kernels.bulk_copy gave wrong bytes; SM copies skipped"
        except Exception as exc:  # noqa: BLE001
            return None, f"kernels.bulk_copy failed ({type(exc).__name__}: {exc})"
        return bulk_copy, "kernels.bulk_copy (Triton)"

    def stream(self, dev: int, key: str) -> torch.cuda.Stream:
        s = self._streams.get((dev, key))
        if s is None:
            s = self._streams[(dev, key)] = torch.cuda.Stream(device=dev)
        return s

    def _buffer(self, endpoint: str, nbytes: int, mech: str, fill: bool) -> torch.Tensor:
        if endpoint == "host":
            t = torch.empty(nbytes, dtype=torch.uint8, pin_memory=(mech != "pageable"))
        else:
            t = torch.empty(nbytes, dtype=torch.uint8, device=_dev(endpoint))
        if fill:
            for off in range(0, nbytes, 1 << 30):
                n = min(1 << 30, nbytes - off)
                t[off:off + n].copy_(self._rand[:n])
        return t

    def _launcher(self, x: Xfer) -> tuple[int, Callable[[torch.cuda.Stream], None]]:
        src = self._buffer(x.src, x.bytes, x.mech, fill=True)
        dst = self._buffer(x.dst, x.bytes, x.mech, fill=False)
        issuer = _dev(x.issuer).index
        peer_dst = x.dst.startswith("gpu") and x.src.startswith("gpu") and x.dst != x.src
        sink = self.stream(_dev(x.dst).index, f"sink-{x.id}") if peer_dst else None
        bulk = self._bulk_copy

        def launch(s: torch.cuda.Stream) -> None:
            with contextlib.ExitStack() as stack:
                if sink is not None:
                    stack.enter_context(torch.cuda.stream(sink))
                stack.enter_context(torch.cuda.stream(s))
                if x.mech == "sm":
                    bulk(dst, src, device=torch.device(f"cuda:{issuer}"))
                else:
                    dst.copy_(src, non_blocking=True)

        return issuer, launch

    def _kernel_launcher(self, gpu: str, nbytes: int) -> tuple[int, Callable[[torch.cuda.Stream], None]]:
        d = _dev(gpu)
        a = torch.rand(nbytes // 4, device=d)
        b = torch.empty_like(a)

        def launch(s: torch.cuda.Stream) -> None:
            with torch.cuda.stream(s):
                torch.mul(a, 1.0001, out=b)

        return d.index, launch

    def _gated(self, ops: list[tuple[int, Callable | None]]) -> tuple[list[float], list[float]]:
        """One gated start of `ops` (device, launch); (finish on GPU 0's clock, duration on own stream)."""
        for d in {dev for dev, _ in ops}:
            with torch.cuda.device(d):
                self._scratch[d].fill_(d + 1)
        for d in range(self.n):
            torch.cuda.synchronize(d)
        gate_stream = self.stream(0, "gate")
        with torch.cuda.stream(gate_stream):
            torch.cuda._sleep(GATE_CYCLES)
        gate = _ev()
        gate.record(gate_stream)
        marks = []
        for i, (dev, launch) in enumerate(ops):
            s = self.stream(dev, f"op{i}")
            s.wait_event(gate)
            b, e, c = _ev(), _ev(), _ev()
            b.record(s)
            if launch is not None:
                launch(s)
            e.record(s)
            clk = self.stream(0, f"clk{i}")
            clk.wait_event(e)
            c.record(clk)
            marks.append((b, e, c))
        for d in range(self.n):
            torch.cuda.synchronize(d)
        finish = [gate.elapsed_time(c) / 1e3 for _, _, c in marks]
        own = [b.elapsed_time(e) / 1e3 for b, e, _ in marks]
        return finish, own

    def _hop_offset(self, dev: int) -> float:
        vals = sorted(self._gated([(dev, None)])[0][0] for _ in range(25))
        return vals[len(vals) // 2]

    def run_copies(self, case: Case, reps: int, warmup: int) -> list[dict[str, dict[str, float]]]:
        """Per repetition: {'finish_s': {id: s}, 'own_s': {id: s}} for every copy and kernel of the case."""
        ops, ids = [], []
        for x in case.xfers:
            ops.append(self._launcher(x))
            ids.append(x.id)
        for k in case.kernels:
            ops.append(self._kernel_launcher(k.gpu, k.bytes))
            ids.append(k.id)
        for d in range(self.n):
            torch.cuda.synchronize(d)  # buffer fills ran on default streams; let them end before timing
        out = []
        for r in range(warmup + reps):
            finish, own = self._gated(ops)
            if r >= warmup:
                # Less the clock hop, but never before the copy's own duration (the hop varies by a µs or so).
                fin = {i: max(f - self.offsets[dev], o)
                       for i, f, o, (dev, _) in zip(ids, finish, own, ops, strict=True)}
                out.append({"finish_s": fin, "own_s": dict(zip(ids, own, strict=True))})
        del ops
        return out

    # ---- NCCL and IPC (child processes) ---------------------------------------------------------------
    def run_nccl(self, cases: list[Case], reps: int, warmup: int) -> dict[str, list[float]]:
        """Per case id: the per-op time of each repetition (slowest rank), one process per GPU."""
        if self.n < 2 or not cases:
            return {}
        specs = [(c.id, c.op, c.bytes) for c in cases]
        ctx = mp.get_context("spawn")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "nccl.json")
            port = _free_port()
            procs = [ctx.Process(target=_nccl_worker, args=(r, self.n, specs, reps, warmup, port, path))
                     for r in range(self.n)]
            for p in procs:
                p.start()
            deadline = time.monotonic() + CHILD_TIMEOUT_S
            for p in procs:
                p.join(timeout=max(1.0, deadline - time.monotonic()))
            hung = [p for p in procs if p.is_alive()]
            for p in hung:
                p.kill()
                p.join(timeout=10)
            if hung:
                raise TimeoutError(f"NCCL workers still running after {CHILD_TIMEOUT_S} s; killed")
            if any(p.exitcode for p in procs):
                raise RuntimeError(f"NCCL worker exit codes {[p.exitcode for p in procs]}")
            with open(path) as fh:
                return json.load(fh)

    def run_ipc(self, cases: list[Case], reps: int) -> dict[str, dict[str, list[float]]]:
        """Per case id: seconds to open (map) and close (unmap) a CUDA IPC handle in another process."""
        if not cases:
            return {}
        from torch.multiprocessing.reductions import reduce_tensor

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_ipc_child, args=(child,))
        proc.start()
        out: dict[str, dict[str, list[float]]] = {}
        try:
            _recv(parent)  # child ready (torch imported, CUDA up)
            for c in cases:
                t = torch.randint(0, 256, (c.bytes,), dtype=torch.uint8, device="cuda:0")
                torch.cuda.synchronize()
                _fn, args = reduce_tensor(t)
                parent.send((args, reps))
                out[c.id] = _recv(parent)
                del t
            parent.send(None)
        finally:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        return out


def _recv(conn: Any) -> Any:
    if not conn.poll(CHILD_TIMEOUT_S):
        raise TimeoutError(f"IPC child gave no answer in {CHILD_TIMEOUT_S} s")
    return conn.recv()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, world: int, specs: list[tuple[str, str, int]], reps: int, warmup: int, port: int,
                 path: str) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dev = torch.device(f"cuda:{rank}")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=dev)
    results: dict[str, list[float]] = {}
    try:
        for cid, op, nbytes in specs:
            n = nbytes // 4
            buf = torch.rand(n, device=dev)
            inp = torch.rand(n // world, device=dev) if op == "all_gather" else None
            iters = 10 if nbytes <= (16 << 20) else 2

            def run(op: str = op, buf: torch.Tensor = buf, inp: torch.Tensor | None = inp) -> None:
                if op == "broadcast":
                    dist.broadcast(buf, src=0)
                elif op == "all_gather":
                    dist.all_gather_into_tensor(buf, inp)
                else:
                    dist.all_reduce(buf)

            times = []
            for r in range(warmup + reps):
                dist.barrier(device_ids=[rank])
                torch.cuda.synchronize()
                b, e = _ev(), _ev()
                b.record()
                for _ in range(iters):
                    run()
                e.record()
                torch.cuda.synchronize()
                if r >= warmup:
                    times.append(b.elapsed_time(e) / 1e3 / iters)
            t = torch.tensor(times, device=dev, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            results[cid] = t.tolist()
            del buf, inp
        if rank == 0:
            with open(path, "w") as fh:
                json.dump(results, fh)
    finally:
        dist.destroy_process_group()


def _ipc_child(conn: Any) -> None:
    import gc

    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    torch.ones(1, device="cuda:0")
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        args, reps = msg
        opens, closes = [], []
        for _ in range(reps + 1):
            gc.collect()
            gc.disable()  # a collection inside the timed region would cost more than the unmap itself
            t0 = time.perf_counter()
            t = rebuild_cuda_tensor(*args)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            del t  # the last reference: the storage's deleter unmaps (cudaIpcCloseMemHandle)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            gc.enable()
            opens.append(t1 - t0)
            closes.append(t2 - t1)
        conn.send({"open_s": opens[1:], "close_s": closes[1:]})
