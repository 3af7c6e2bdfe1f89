"""The measured cases: what validate runs on a GPU machine, as plain data, and each case as a scenario.

A `Case` is a set of copies (and optionally HBM-bound kernels) started together behind one gate; the
device layer measures each copy's finish time on a common clock. The same case, written in the scenario
format of DESIGN.md, is what `report` simulates — so measuring and predicting see exactly the same work.

Every case carries its *split*: `calibration` cases are the only ones `calibrate` may fit on; `held-out`
cases judge the fitted profile. Size sweeps alternate sizes between the two, so held-out sizes test the
size-efficiency interpolation; concurrency cases that expose one mechanism each (engine discipline, host
aggregate, duplex) calibrate, the mixtures (fan-in/out, PCIe beside NVLink, kernels beside copies,
unequal sizes) are held out.

This module imports neither torch nor simpy: it runs on the GPU image and in CI alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
COPY_SIZES = tuple(4 * KiB * 4**i for i in range(10))  # 4 KiB .. 1 GiB, powers of 4
NCCL_SIZES = tuple(MiB * 4**i for i in range(7))  # 1 MiB .. 4 GiB
IPC_SIZES = tuple(MiB * 4**i for i in range(6))  # 1 MiB .. 1 GiB
CONC_BYTES = 256 * MiB
SUITES = ("quick", "full")
CALIBRATION, HELD_OUT = "calibration", "held-out"
NCCL_OPS = ("broadcast", "all_gather", "all_reduce")


@dataclass(frozen=True)
class Xfer:
    """One copy: `src`/`dst` are 'host' or 'gpuN'; `mech` says which hardware does it: 'ce' (copy engine,
    pinned host memory), 'pageable' (copy engine from/to pageable host memory), 'sm' (Triton bulk copy)."""

    id: str
    src: str
    dst: str
    bytes: int
    mech: str = "ce"

    @property
    def issuer(self) -> str:
        """The GPU whose stream issues the copy (H2D: the destination; everything else: the source)."""
        return self.dst if self.src == "host" else self.src


@dataclass(frozen=True)
class Kernel:
    """An HBM-bound elementwise kernel on `gpu` over a buffer of `bytes` (it reads and writes it: 2x)."""

    id: str
    gpu: str
    bytes: int

    @property
    def hbm_bytes(self) -> int:
        return 2 * self.bytes


@dataclass(frozen=True)
class Case:
    """One measured situation. `group` picks the measuring routine: copies, nccl or ipc."""

    id: str
    group: str
    pattern: str
    split: str
    xfers: tuple[Xfer, ...] = ()
    kernels: tuple[Kernel, ...] = ()
    op: str = ""  # nccl: broadcast | all_gather | all_reduce
    bytes: int = 0  # nccl / ipc: the size measured
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)


def _size_split(i: int, n: int) -> str:
    # Both ends and every other size calibrate; the sizes between are held out.
    return CALIBRATION if i % 2 == 0 or i == n - 1 else HELD_OUT


def _sizes(suite: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    return sizes if suite == "full" else sizes[::3] + ((sizes[-1],) if (len(sizes) - 1) % 3 else ())


def _label(nbytes: int) -> str:
    for unit, div in (("G", GiB), ("M", MiB), ("K", KiB)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div}{unit}"
    return str(nbytes)


def build_cases(n_gpus: int, suite: str = "full", *, sm_copies: bool = True) -> list[Case]:
    """Every case for a machine with `n_gpus` GPUs (the quick suite takes fewer sizes and patterns)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    gpus = [f"gpu{i}" for i in range(n_gpus)]
    cases: list[Case] = []
    sizes = _sizes(suite, COPY_SIZES)

    def sweep(pattern: str, src: str, dst: str, mech: str, both: bool = False) -> None:
        for i, n in enumerate(sizes):
            xs = [Xfer("a", src, dst, n, mech)]
            if both:
                xs.append(Xfer("b", dst, src, n, mech))
            cases.append(Case(f"{pattern}-{_label(n)}", "copies", pattern, _size_split(i, len(sizes)), tuple(xs),
                              params={"bytes": n}))

    # Copy-engine sweeps: one flow alone, every class and pinned/pageable host memory.
    sweep("d2d", "gpu0", "gpu0", "ce")
    sweep("h2d", "host", "gpu0", "ce")
    sweep("d2h", "gpu0", "host", "ce")
    sweep("h2d-pageable", "host", "gpu0", "pageable")
    sweep("d2h-pageable", "gpu0", "host", "pageable")
    for a in gpus:
        for b in gpus:
            if a != b:
                sweep(f"p2p-{a}-{b}", a, b, "ce")
    if n_gpus > 1:
        sweep("p2p-bidir", "gpu0", "gpu1", "ce", both=True)
    if sm_copies:
        sweep("sm-d2d", "gpu0", "gpu0", "sm")
        sweep("sm-h2d", "host", "gpu0", "sm")
        sweep("sm-d2h", "gpu0", "host", "sm")
        if n_gpus > 1:
            sweep("sm-p2p", "gpu0", "gpu1", "sm")

    # Concurrency: one mechanism each (calibration), then mixtures (held out).
    S = CONC_BYTES

    def conc(cid: str, pattern: str, split: str, xs: list[tuple[str, str, int]], ks: tuple[Kernel, ...] = (),
             mech: str = "ce") -> None:
        xfers = tuple(Xfer(f"t{i}", s, d, n, mech) for i, (s, d, n) in enumerate(xs))
        cases.append(Case(cid, "copies", pattern, split, xfers, ks, params={"bytes": max(n for _, _, n in xs)}))

    conc("h2d-x2-same-gpu", "engine-h2d", CALIBRATION, [("host", "gpu0", S)] * 2)
    conc("d2h-x2-same-gpu", "engine-d2h", CALIBRATION, [("gpu0", "host", S)] * 2)
    conc("d2d-x2-same-gpu", "engine-d2d", CALIBRATION, [("gpu0", "gpu0", S)] * 2)
    conc("duplex-gpu0", "duplex", CALIBRATION, [("host", "gpu0", S), ("gpu0", "host", S)])
    conc("h2d-x4-same-gpu", "engine-h2d", HELD_OUT, [("host", "gpu0", S // 2)] * 4)
    conc("d2h-x4-same-gpu", "engine-d2h", HELD_OUT, [("gpu0", "host", S // 2)] * 4)
    conc("h2d-unequal", "engine-h2d", HELD_OUT, [("host", "gpu0", S // 4), ("host", "gpu0", S)])
    conc("h2d-x2-4M", "engine-h2d", HELD_OUT, [("host", "gpu0", 4 * MiB)] * 2)
    conc("d2d-beside-h2d", "mixed-engines", HELD_OUT, [("gpu0", "gpu0", 4 * S), ("host", "gpu0", S)])
    conc("d2d-beside-d2h", "mixed-engines", HELD_OUT, [("gpu0", "gpu0", 4 * S), ("gpu0", "host", S)])
    conc("h2d-beside-kernel", "copy+kernel", HELD_OUT, [("host", "gpu0", S)], (Kernel("k0", "gpu0", 4 * S),))
    conc("d2d-beside-kernel", "copy+kernel", HELD_OUT, [("gpu0", "gpu0", 2 * S)], (Kernel("k0", "gpu0", 2 * S),))
    if suite == "full":
        conc("duplex-gpu0-x2", "duplex", HELD_OUT, [("host", "gpu0", S), ("host", "gpu0", S),
                                                    ("gpu0", "host", S), ("gpu0", "host", S)])
    if sm_copies:
        cases.append(Case("sm-h2d-beside-ce-h2d", "copies", "sm+ce", HELD_OUT,
                          (Xfer("t0", "host", "gpu0", S, "ce"), Xfer("t1", "host", "gpu0", S, "sm")),
                          params={"bytes": S}))
    if n_gpus > 1:
        for k in range(2, n_gpus + 1):
            on = gpus[:k]
            split = CALIBRATION if k == n_gpus else HELD_OUT
            conc(f"h2d-{k}gpus", "host-fan", split, [("host", g, S) for g in on])
            conc(f"d2h-{k}gpus", "host-fan", split, [(g, "host", S) for g in on])
            conc(f"h2d+d2h-{k}gpus", "host-both", split if k == n_gpus else HELD_OUT,
                 [("host", g, S) for g in on] + [(g, "host", S) for g in on])
        g0, g1 = gpus[0], gpus[1]
        conc("p2p-x2-same-dir", "engine-p2p", CALIBRATION, [(g0, g1, S)] * 2)
        conc("p2p-x4-same-dir", "engine-p2p", HELD_OUT, [(g0, g1, S // 2)] * 4)
        conc("fan-out-gpu0", "fan-out", HELD_OUT, [(g0, g, S) for g in gpus[1:]] + [(g0, "host", S)])
        conc("fan-in-gpu0", "fan-in", HELD_OUT, [(g, g0, S) for g in gpus[1:]] + [("host", g0, S)])
        conc("ring", "ring", HELD_OUT, [(gpus[i], gpus[(i + 1) % n_gpus], S) for i in range(n_gpus)]
             if n_gpus > 2 else [(g0, g1, S), (g1, g0, S)])
        conc("pairs", "pairs", HELD_OUT, [(gpus[i], gpus[i + 1], S) for i in range(0, n_gpus - 1, 2)]
             + [(gpus[i + 1], gpus[i], S) for i in range(0, n_gpus - 1, 2)])
        conc("all-to-all", "all-to-all", HELD_OUT, [(a, b, S // 2) for a in gpus for b in gpus])
        conc("pcie-beside-nvlink-in", "pcie+nvlink", HELD_OUT, [("host", g1, S), (g0, g1, 4 * S)])
        conc("pcie-beside-nvlink-out", "pcie+nvlink", HELD_OUT, [(g0, "host", S), (g0, g1, 4 * S)])
        conc("p2p-beside-kernel", "copy+kernel", HELD_OUT, [(g0, g1, 2 * S)], (Kernel("k0", g1, 2 * S),))

    # NCCL collectives (one process per GPU): each calibrates at alternate sizes (NCCL tunes channels and
    # protocol per collective, so one collective's rate does not carry over to another).
    if n_gpus > 1:
        nsizes = _sizes(suite, NCCL_SIZES)
        for op in NCCL_OPS:
            for i, n in enumerate(nsizes):
                split = _size_split(i, len(nsizes))
                cases.append(Case(f"nccl-{op}-{_label(n)}", "nccl", f"nccl-{op}", split, op=op, bytes=n,
                                  params={"bytes": n, "gpus": n_gpus}))

    # CUDA IPC handle open/close against allocation size (software cost; measured, not simulated).
    for n in _sizes(suite, IPC_SIZES):
        cases.append(Case(f"ipc-{_label(n)}", "ipc", "ipc-open-close", CALIBRATION, bytes=n, params={"bytes": n}))
    return cases




def to_scenario(case: Case, topology: str, n_gpus: int) -> dict[str, Any] | None:
    """The case in the scenario format of DESIGN.md (None for IPC cases, which move no bytes)."""
    if case.group == "ipc":
        return None
    if case.group == "nccl":
        # The collective as one call: the engine expands it into NCCL's ring schedule (simcore.collectives).
        call = {"id": case.id, "op": case.op, "gpus": [f"gpu{i}" for i in range(n_gpus)], "bytes": case.bytes}
        return {"name": case.id, "topology": topology, "calibration": None, "collectives": [call]}
    transfers = [{"id": x.id, "src": x.src, "dst": x.dst, "bytes": x.bytes, "tag": x.mech}
                 | ({"mechanism": x.mech} if x.mech != "ce" else {}) for x in case.xfers]
    out: dict[str, Any] = {"name": case.id, "topology": topology, "calibration": None, "transfers": transfers}
    if case.kernels:
        out["tasks"] = [{"id": k.id, "gpu": k.gpu, "flops": 0, "bytes": k.hbm_bytes, "dtype": "fp32"}
                        for k in case.kernels]
    return out
