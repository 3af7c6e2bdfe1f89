"""A fake workload device: the interface of `workloads_torch.TorchWorkloads`, answered by arithmetic.

It lets CI run the workload suite's bookkeeping (case grouping, budget, skipping, the file, publishing)
without a GPU. Times follow a deliberately plain formula (bytes over a rate plus per-tensor and per-bucket
constants, with a small deterministic wobble); nothing is fitted on it and no number from it is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fabricsim.validate.workload_cases import WorkloadCase, aligned, plan_buckets

_D2D, _PCIE = 2.0e12, 52e9
_PER_TENSOR, _PER_BUCKET, _OPEN = 12e-6, 150e-6, 300e-6


class FakeWorkloads:
    name = "fake"

    def __init__(self, n_gpus: int = 1, gpu_name: str = "NVIDIA H200", *, fail: tuple[str, ...] = ()) -> None:
        self.n = n_gpus
        self.gpu_name = gpu_name
        self.fail = fail
        self.closed = False

    def gpu_count(self) -> int:
        return self.n

    def facts(self) -> dict[str, Any]:
        return {"gpus": self.n, "gpu_name": self.gpu_name, "torch": "fake", "cuda": "fake"}

    @staticmethod
    def _row(t: float, reps: int, **extra: Any) -> dict[str, Any]:
        """A measured row as the GPU side writes one: `reps` times spread +-0.6% around `t`, and their median."""
        times = [t * (1.0 + 0.003 * ((r * 7919) % 5 - 2)) for r in range(reps)]
        return {"reps": reps, "time_s": sorted(times)[reps // 2], "times_s": times, **extra}

    def _sync_time(self, c: WorkloadCase, sizes: list[int]) -> tuple[float, dict[str, Any]]:
        total, n = sum(sizes), len(sizes)
        extra: dict[str, Any] = {}
        if c.mech == "noop":
            return 60e-6, extra
        if c.mech in ("ipc-tensor-first", "ipc-tensor-steady"):
            t = total / _D2D + n * _PER_TENSOR
            if c.mech == "ipc-tensor-first":
                t += n * _OPEN
                extra = {"handles": n, "handle_bytes": sorted(sizes)}
            return t, extra
        if c.mech in ("ipc-bucket", "fp8-bucket", "host-staged"):
            buckets = plan_buckets(sizes, int(c.params["bucket_bytes"]))
            rate = _PCIE / 2 if c.mech == "host-staged" else _D2D / 2
            t = total / rate + n * _PER_TENSOR + len(buckets) * (_PER_BUCKET + _OPEN)
            extra = {"buckets": len(buckets), "bucket_tensors": [len(b) for b in buckets],
                     "bucket_sizes": [sum(aligned(sizes[i]) for i in b) for b in buckets]}
            return t, extra
        if c.mech == "pool-pull":
            return total / _D2D + n * _PER_TENSOR + 100e-6, extra
        return 100e-6, {"publish_s": [70e-6]}

    def run_sync(self, model: str, tensors: list[tuple[str, tuple[int, ...]]], cases: list[WorkloadCase],
                 reps: int, over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        sizes = []
        for _, shape in tensors:
            n = 2
            for d in shape:
                n *= d
            sizes.append(n)
        out: dict[str, dict[str, Any] | str] = {}
        for c in cases:
            if over_budget():
                out[c.id] = "time budget spent"
            elif c.id in self.fail:
                out[c.id] = "failed: RuntimeError: fake failure"
            else:
                t, extra = self._sync_time(c, sizes)
                out[c.id] = self._row(t, reps, **extra)
        return out

    def run_kv(self, cases: list[WorkloadCase], reps: int,
               over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        out: dict[str, dict[str, Any] | str] = {}
        for c in cases:
            if over_budget():
                out[c.id] = "time budget spent"
                continue
            nbytes = int(c.params["pages"]) * int(c.params["page_bytes"])
            t = nbytes / (_D2D / 2 if c.mech == "kv-prefix-copy" else _PCIE) * (2 if c.mech == "kv-swap" else 1)
            if "steps" in c.params:
                t = max(t, int(c.params["steps"]) * 2 * int(c.params["decode_bytes"]) / 4.3e12)
            out[c.id] = self._row(t, reps)
        return out

    def run_multi(self, cases: list[WorkloadCase], reps: int,
                  over_budget: Callable[[], bool]) -> dict[str, dict[str, Any] | str]:
        out: dict[str, dict[str, Any] | str] = {}
        for c in cases:
            if over_budget():
                out[c.id] = "time budget spent"
                continue
            k = int(c.params["readers"])
            t = 2e-3 * (k if c.mech == "ipc-pull-readers" else 1.2)
            out[c.id] = self._row(t, reps, slot_bytes=1 << 30)
        return out

    def close(self) -> None:
        self.closed = True
