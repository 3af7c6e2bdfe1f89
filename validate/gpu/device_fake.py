"""A fake device layer: the interface of `measure_torch.TorchDevice`, answered by arithmetic on the CPU.

It exists so validate's own code paths (case lists, gating bookkeeping, medians, skipping, the file
format, atomic output) run in CI without a GPU. Its timings follow a deliberately simple model — copies
of one class issued on one GPU share that class's bandwidth equally, everything else is independent — with
a small deterministic per-repetition wobble so medians have something to do. Nothing fits on it.
"""

from __future__ import annotations

from typing import Any

from fabricsim.validate.cases import Case, Xfer

# bytes/s and seconds per class: loosely an H200 box
_RATE = {"h2d": 52e9, "d2h": 48e9, "d2d": 1.5e12, "p2p": 360e9}
_LAT = {"h2d": 9e-6, "d2h": 9e-6, "d2d": 6e-6, "p2p": 10e-6}
_MECH_FACTOR = {"ce": 1.0, "pageable": 0.3, "sm": 0.85}


def _cls(x: Xfer) -> str:
    if x.src == "host":
        return "h2d"
    if x.dst == "host":
        return "d2h"
    return "d2d" if x.src == x.dst else "p2p"


class FakeDevice:
    """`n_gpus` fake GPUs of `gpu_name`; `fail_after` raises after that many cases (interruption tests)."""

    name = "fake"

    def __init__(self, n_gpus: int = 2, gpu_name: str = "NVIDIA H200", *, sm_copies: bool = True,
                 fail_after: int | None = None) -> None:
        self.n = n_gpus
        self.gpu_name = gpu_name
        self.sm = sm_copies
        self.fail_after = fail_after
        self.calls = 0

    def gpu_count(self) -> int:
        return self.n

    def has_sm_copies(self) -> tuple[bool, str]:
        return (True, "fake SM copies") if self.sm else (False, "kernels.bulk_copy not importable (fake)")

    def facts(self) -> dict[str, Any]:
        header = "\t" + "\t".join(f"GPU{i}" for i in range(self.n)) + "\tCPU Affinity\tNUMA Affinity"
        rows = [f"GPU{i}\t" + "\t".join("X" if i == j else "NV18" for j in range(self.n)) + "\t0-15\t0"
                for i in range(self.n)]
        return {"gpus": self.n, "gpu_name": self.gpu_name, "torch": "fake", "cuda": "fake",
                "CUDA_DEVICE_MAX_CONNECTIONS": "32", "topo_m": "\n".join([header, *rows]) + "\n",
                "hop_offset_s": {str(i): 3e-6 for i in range(self.n)}}

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("fake device interrupted")

    @staticmethod
    def _wobble(r: int) -> float:
        return 1.0 + 0.004 * ((r * 7919) % 5 - 2)

    def run_copies(self, case: Case, reps: int, warmup: int) -> list[dict[str, dict[str, float]]]:
        self._tick()
        groups: dict[tuple[str, str], list[Xfer]] = {}
        for x in case.xfers:
            groups.setdefault((_cls(x), x.issuer), []).append(x)
        finish: dict[str, float] = {}
        for (cls, _gpu), xs in groups.items():
            # Equal processor sharing among the group: closed form over sizes in increasing order.
            xs = sorted(xs, key=lambda x: x.bytes)
            rate = _RATE[cls] * min(_MECH_FACTOR[x.mech] for x in xs)
            t, done, n = 0.0, 0, len(xs)
            for k, x in enumerate(xs):
                t += (x.bytes - done) * (n - k) / rate
                done = x.bytes
                finish[x.id] = _LAT[cls] + t
        for k in case.kernels:
            finish[k.id] = 2 * k.bytes / 4.0e12
        out = []
        for r in range(reps):
            w = self._wobble(r)
            fin = {i: v * w for i, v in finish.items()}
            out.append({"finish_s": fin, "own_s": dict(fin)})
        return out

    def run_nccl(self, cases: list[Case], reps: int, warmup: int) -> dict[str, list[float]]:
        self._tick()
        factor = {"broadcast": 1.0, "all_gather": 0.5, "all_reduce": 1.0}
        return {c.id: [(15e-6 + factor[c.op] * c.bytes / 330e9) * self._wobble(r) for r in range(reps)]
                for c in cases}

    def run_ipc(self, cases: list[Case], reps: int) -> dict[str, dict[str, list[float]]]:
        self._tick()
        return {c.id: {"open_s": [40e-6 + c.bytes * 2e-15] * reps, "close_s": [25e-6] * reps} for c in cases}
