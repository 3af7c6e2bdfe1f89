"""Component specifications: what each piece of hardware can do, as frozen dataclasses.

Defaults come from vendor datasheets; where a datasheet figure is known to be unreachable in practice the
docstring says what public measurements show instead. A calibration profile (see `calibration.py`) replaces
these numbers with ones fitted on a real machine, so the datasheet values only matter for machines nobody
has measured yet.

Units: bytes, seconds, bytes per second unless the name says otherwise (`_GBps` = 1e9 bytes/s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from fabricsim.errors import TopologyError

GB = 1e9
GiB = 1 << 30

# The rates a link, a shared cap or a NIC may have, wherever it is given (a topology file, a cluster preset's
# `-nicRg`, `NICSpec`): outside them a number is a typo or a wrong unit, not hardware. Above MAX_GBps every
# transfer is instant (a 10^300 GB/s link); below MIN_GBps, 1 MB/s, slower than any link a GPU machine has (a
# 1 Gb/s management port is 125 MB/s), 1 GiB takes a quarter of an hour and 1e-30 GB/s ages.
MIN_GBps = 1e-3
MAX_GBps = 1e5  # 100 TB/s: twenty times a 2026 GPU's HBM


def check_link_rate(where: str, value: float, unit: str = " GB/s", per_GBps: float = 1.0) -> None:
    """Refuse a rate (a finite number > 0, in `unit`, `per_GBps` of which make 1 GB/s) outside
    [MIN_GBps, MAX_GBps], naming `where` and the bound in the user's unit."""
    least, most = MIN_GBps * per_GBps, MAX_GBps * per_GBps
    if value > most:
        raise TopologyError(f"{where}: {value!r} is beyond {most:g}{unit}, more than any hardware has (check the unit)")
    if value < least:
        raise TopologyError(f"{where}: {value!r} is below {least:g}{unit} ({MIN_GBps * 1e3:g} MB/s), slower than "
                            "any real link (check the unit)")


class Derating(NamedTuple):
    """A bandwidth the model uses below the peak it was given: the fraction reached in practice and why. Kept as
    data so that `fabricsim topo show` can say so beside the derated figure (a user who wrote `dram_GBps: 300`
    otherwise sees 225 and no reason)."""

    peak_GBps: float
    fraction: float
    why: str

    @property
    def Bps(self) -> float:
        return self.peak_GBps * GB * self.fraction

    def note(self, with_why: bool = True) -> str:
        """'75% of the 300 GB/s peak: <why>' (less the why, where a line above gave it), to print beside the
        derated figure."""
        note = f"{self.fraction:.0%} of the {self.peak_GBps:g} GB/s peak"
        return f"{note}: {self.why}" if with_why else note


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: HBM, SMs, copy engines and dense peak throughput per dtype (TFLOP/s, no sparsity).

    HBM capacity is what `nvidia-smi` reports on the lent device machines (81559 MiB on H100, rounded to
    80 GiB; 143771 MiB on H200). Datasheets (H100 SXM5, H200 SXM): 3.35 / 4.8 TB/s HBM, 989 TFLOP/s bf16
    dense, 1979 fp8. Large device-to-device copies reach about 90% of the HBM figure counting bytes read
    plus written (public nvbandwidth results; our own measurements live in the calibration profiles), so
    `hbm_efficiency` defaults to 0.9.
    """

    model: str
    hbm_bytes: int
    hbm_GBps: float
    sms: int
    copy_engines: int
    peak_tflops: dict[str, float] = field(default_factory=dict)
    hbm_efficiency: float = 0.9
    hbm_efficiency_why: ClassVar[str] = "what large device-to-device copies reach"

    @property
    def hbm_derating(self) -> Derating:
        return Derating(self.hbm_GBps, self.hbm_efficiency, self.hbm_efficiency_why)

    @property
    def hbm_Bps(self) -> float:
        """Usable HBM bandwidth (read + write bytes per second)."""
        return self.hbm_derating.Bps

    def flops_per_s(self, dtype: str) -> float:
        try:
            return self.peak_tflops[dtype] * 1e12
        except KeyError:
            known = ", ".join(sorted(self.peak_tflops))
            raise TopologyError(f"GPU {self.model} has no peak FLOP/s for dtype '{dtype}' (known: {known})") from None


_HOPPER_TFLOPS = {"fp64": 67.0, "fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0, "fp8": 1979.0,
                  "int8": 1979.0}

GPU_MODELS: dict[str, GPUSpec] = {
    "H100": GPUSpec("H100", 80 * GiB, 3350.0, 132, 3, dict(_HOPPER_TFLOPS)),
    "H200": GPUSpec("H200", 143771 * 2**20, 4800.0, 132, 3, dict(_HOPPER_TFLOPS)),
    "H100-PCIE": GPUSpec("H100-PCIE", 80 * GiB, 2000.0, 114, 2,
                         {k: v * 756 / 989 for k, v in _HOPPER_TFLOPS.items()}),
    "A100": GPUSpec("A100", 80 * GiB, 2039.0, 108, 3,
                    {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0, "int8": 624.0}),
    "L40S": GPUSpec("L40S", 48 * GiB, 864.0, 142, 2,
                    {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0, "fp8": 733.0, "int8": 733.0}),
}


def gpu_model(name: str) -> GPUSpec:
    """Look a GPU model up by a loose name ('H100', 'NVIDIA H100 80GB HBM3', 'h200')."""
    upper = name.upper().replace(" ", "-")
    if "H100" in upper and "PCIE" in upper:
        return GPU_MODELS["H100-PCIE"]
    for key, spec in GPU_MODELS.items():
        if key in upper:
            return spec
    raise TopologyError(f"unknown GPU model '{name}' (known: {', '.join(GPU_MODELS)})")


# PCIe: per-lane signalling rate (GT/s) and line encoding per generation.
_PCIE_GTPS = {3: (8.0, 128 / 130), 4: (16.0, 128 / 130), 5: (32.0, 128 / 130), 6: (64.0, 242 / 256)}


@dataclass(frozen=True)
class PCIeSpec:
    """A PCIe link. Bandwidth per direction = lanes x GT/s x encoding / 8, less TLP/DLLP overhead.

    Gen5 x16 raw is 63 GB/s per direction; public nvbandwidth runs on HGX H100 measure ~55 GB/s pinned H2D/D2H,
    i.e. ~87% protocol efficiency, which is the default `efficiency`.
    """

    gen: int = 5
    lanes: int = 16
    latency_s: float = 1.0e-6
    efficiency: float = 0.87

    def __post_init__(self) -> None:
        if self.gen not in _PCIE_GTPS:
            raise TopologyError(f"unknown PCIe generation {self.gen} (known: {sorted(_PCIE_GTPS)})")
        if self.lanes not in (1, 2, 4, 8, 16, 32):
            raise TopologyError(f"PCIe width x{self.lanes} is not a valid link width")

    @property
    def raw_Bps(self) -> float:
        gtps, enc = _PCIE_GTPS[self.gen]
        return self.lanes * gtps * 1e9 * enc / 8

    @property
    def Bps(self) -> float:
        return self.raw_Bps * self.efficiency


# NVLink: GB/s per link per direction by generation (NVLink 3: 25, NVLink 4: 25 with 18 links on H100).
_NVLINK_GBPS_PER_LINK = {2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}


@dataclass(frozen=True)
class NVLinkSpec:
    """NVLink bundle between a GPU and an NVSwitch (or a peer GPU).

    NVLink 4 on H100/H200: 18 links x 25 GB/s = 450 GB/s per direction. Public p2pBandwidthLatencyTest and
    nvbandwidth runs on HGX H100 reach ~390 GB/s one way (~87%) and 2-3 us write latency.
    """

    gen: int = 4
    links: int = 18
    latency_s: float = 2.5e-6
    efficiency: float = 0.87

    def __post_init__(self) -> None:
        if self.gen not in _NVLINK_GBPS_PER_LINK:
            raise TopologyError(f"unknown NVLink generation {self.gen} (known: {sorted(_NVLINK_GBPS_PER_LINK)})")
        if self.links <= 0:
            raise TopologyError(f"NVLink bundle needs at least one link, got {self.links}")

    @property
    def raw_Bps(self) -> float:
        return self.links * _NVLINK_GBPS_PER_LINK[self.gen] * 1e9

    @property
    def Bps(self) -> float:
        return self.raw_Bps * self.efficiency


@dataclass(frozen=True)
class NVSwitchSpec:
    """The NVSwitch fabric of one HGX baseboard, modelled as a non-blocking crossbar (it is, for 8 GPUs)."""

    gen: int = 3
    latency_s: float = 0.5e-6


@dataclass(frozen=True)
class HostDRAMSpec:
    """One CPU socket's DRAM. Read and write share the channels, so it is one cap drawn by both directions.

    8 channels of DDR5-4800 (Sapphire Rapids): 307 GB/s peak; STREAM-like copies reach ~70-80%.
    """

    bytes: int = 1024 * GiB
    GBps: float = 307.0
    efficiency: float = 0.75
    efficiency_why: ClassVar[str] = "what STREAM-like copies reach"

    @property
    def derating(self) -> Derating:
        return Derating(self.GBps, self.efficiency, self.efficiency_why)

    @property
    def Bps(self) -> float:
        return self.derating.Bps


@dataclass(frozen=True)
class SocketLinkSpec:
    """Cross-socket link (UPI / Infinity Fabric): Sapphire Rapids has 4 UPI 2.0 links at 16 GT/s, ~64 GB/s/dir."""

    GBps: float = 64.0
    latency_s: float = 0.3e-6

    @property
    def Bps(self) -> float:
        return self.GBps * GB


@dataclass(frozen=True)
class NICSpec:
    """RDMA NIC. ConnectX-7: 400 Gb/s = 50 GB/s per direction; GPUDirect RDMA reads/writes HBM over PCIe."""

    Gbps: float = 400.0
    gpudirect: bool = True
    latency_s: float = 2.0e-6
    efficiency: float = 0.92

    def __post_init__(self) -> None:
        # Checked here, for every builder (a cluster's `-nic0g`, a file, nvidia-smi): a NIC of no rate carries
        # nothing, and left to the first link built on it the error named that link ('node0.nic0<->rail0').
        g = self.Gbps
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g < math.inf:
            raise TopologyError(f"a NIC's rate must be a finite number of Gb/s > 0, got {g!r}")
        check_link_rate("a NIC's rate", g, " Gb/s", per_GBps=8)  # the bounds of a topology file's NIC, too

    @property
    def Bps(self) -> float:
        return self.Gbps / 8 * 1e9 * self.efficiency


@dataclass(frozen=True)
class NVMeSpec:
    """NVMe SSD (PCIe Gen4 x4 class): ~7 GB/s sequential read, ~5 GB/s write, ~80 us access latency."""

    read_GBps: float = 7.0
    write_GBps: float = 5.0
    latency_s: float = 80e-6
    capacity_bytes: int = 4 * 10**12


@dataclass(frozen=True)
class NetSwitchSpec:
    """An Ethernet/InfiniBand switch port: line rate per port and per-hop latency (Quantum-2: 400 Gb/s)."""

    port_Gbps: float = 400.0
    latency_s: float = 0.6e-6

    @property
    def Bps(self) -> float:
        return self.port_Gbps / 8 * 1e9
