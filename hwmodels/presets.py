"""Topology presets: the machines people actually run, by name and as functions for notebooks.

Numbers are datasheet values scaled by the efficiencies in `specs.py` (public nvbandwidth /
p2pBandwidthLatencyTest results on HGX H100: ~55 GB/s pinned H2D/D2H per GPU, ~390 GB/s NVLink P2P one way).
A preset loads its bundled calibration profile (fitted by `validate` on the device machines) when one
exists; pass `calibration=None` for datasheet-only behaviour or a profile, its path or a bundled profile's name
(`h200x2`) to use another.

Layout assumptions, stated because they decide contention:
- `hgx-h100-8`: two CPU sockets; four PCIe Gen5 switches, two GPUs and two RDMA NICs behind each, each switch
  with one Gen5 x16 uplink to its socket (so two GPUs share 55 GB/s to host memory; `uplink_lanes` changes it);
  all eight GPUs on one NVSwitch fabric (non-blocking crossbar: only each GPU's port limits, both ways).
- `hgx-h200-8`: the 8x H200 machines this project measures (`nvidia-smi topo -m`: NV18 between every pair, no
  PCIe switches, one NUMA node): one host memory (`host1` names the same memory as `host0`, for scenarios
  written for two sockets), each GPU and NIC on its own Gen5 x16 link to the CPU, the NVSwitch fabric as above.
  What the links alone do not say (the host's aggregate ceiling per direction, duplex limits) comes from its
  bundled profile `h200x8` (fitted on 17 concurrent-copy cases; see its provenance).
- `h200-2`: two H200 on one socket, each on its own Gen5 x16 root port, joined by an NVLink bridge (18 links).
- `pcie-4gpu`: four H100 PCIe cards on one socket's root ports, no NVLink: peer copies cross the root complex
  and share the GPUs' PCIe links with host traffic.
- clusters: N HGX nodes, one 400 Gb/s NIC per GPU (GPUDirect RDMA), rail-optimised (NIC k of every node on
  rail switch k, rails joined by a non-blocking spine) or leaf-spine (`nodes_per_leaf` nodes per leaf,
  `spines` spines, optional oversubscription). ECMP spreads a leaf's flows over its spines evenly (its fluid
  limit, no hash collisions), so the spines are drawn as one switch `spine` whose link to each leaf sums that
  leaf's uplinks; how many spines there are then changes nothing (`spines` is still checked, and kept so that
  existing calls and names still work). A GPU's copies across machines use its own NIC (GPUDirect); host
  memory's are spread evenly over every equally short route, so over its socket's NICs (`Topology._equal_routes`).
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
from collections.abc import Callable
from pathlib import Path

from fabricsim.errors import TopologyError

from .calibration import CalibrationProfile, bundled_profile_path, load_profile
from .memcaps import add_memory_caps
from .specs import (
    HostDRAMSpec,
    NetSwitchSpec,
    NICSpec,
    NVLinkSpec,
    NVMeSpec,
    NVSwitchSpec,
    PCIeSpec,
    SocketLinkSpec,
    gpu_model,
)
from .topology import Topology

CalibrationArg = str | Path | CalibrationProfile | None
NO_CALIBRATION = "none"  # a calibration argument that asks for none: the datasheet figures (`apply_calibration`)

# The machines validate measures: (GPU model, GPU count) -> preset name. The one table of which preset is which
# machine; the GPU side (validate/gpu) reads it from here.
PRESET_FOR = {("H100", 1): "h100-1", ("H200", 1): "h200-1", ("H200", 2): "h200-2", ("H200", 8): "hgx-h200-8",
              ("H100", 8): "hgx-h100-8"}
# Which bundled profile each preset loads by default (hwmodels/profiles/NAME.json), when the file exists.
DEFAULT_PROFILES = {"h100-1": "h100x1", "h200-1": "h200x1", "h200-2": "h200x2", "hgx-h200-8": "h200x8",
                    "hgx-h100-8": "h100x8"}


def _host(t: Topology, p: str, socket: int, dram: HostDRAMSpec) -> str:
    host, cpu = f"{p}host{socket}", f"{p}cpu{socket}"
    t.add_component(host, "host", spec=dram)
    t.add_component(cpu, "cpu")
    t.add_link(host, cpu, "dram", dram.Bps, 0.1e-6)
    return cpu


def _nvme(t: Topology, p: str, idx: int, cpu: str, spec: NVMeSpec | None = None) -> None:
    spec = spec or NVMeSpec()
    name = f"{p}nvme{idx}"
    t.add_component(name, "nvme", spec=spec)
    t.add_link(name, cpu, "nvme", spec.read_GBps * 1e9, spec.latency_s, Bps_reverse=spec.write_GBps * 1e9)




def _hgx_node(t: Topology, p: str, model: str, n_gpus: int, uplink_lanes: int, nics: bool,
              pcie_switches: bool = True) -> None:
    """One baseboard. `pcie_switches`: GPU pairs share a switch uplink per socket (two sockets); without, every
    GPU and NIC has its own link to the one socket's CPU (what `topo -m` shows on the 8x H200 machines)."""
    spec = gpu_model(model)
    pcie, nvl = PCIeSpec(5, 16), NVLinkSpec(4, 18)
    nvsw = f"{p}nvswitch"
    t.add_component(nvsw, "nvswitch", spec=NVSwitchSpec())
    if pcie_switches:
        uplink = PCIeSpec(5, uplink_lanes)
        cpus = [_host(t, p, s, HostDRAMSpec()) for s in (0, 1)]
        t.add_link(cpus[0], cpus[1], "socket", SocketLinkSpec().Bps, SocketLinkSpec().latency_s)
        n_switches = max(1, (n_gpus + 1) // 2)
        for s in range(n_switches):
            sw = f"{p}pcisw{s}"
            t.add_component(sw, "pcie-switch")
            t.add_link(sw, cpus[0 if s < n_switches / 2 else 1], "pcie", uplink.Bps, uplink.latency_s)
        parent = [f"{p}pcisw{g // 2}" for g in range(n_gpus)]
    else:
        cpus = [_host(t, p, 0, HostDRAMSpec())]
        parent = [cpus[0]] * n_gpus
    for g in range(n_gpus):
        gpu = f"{p}gpu{g}"
        t.add_component(gpu, "gpu", spec=spec)
        t.add_link(gpu, parent[g], "pcie", pcie.Bps, pcie.latency_s)
        t.add_link(gpu, nvsw, "nvlink", nvl.Bps, nvl.latency_s / 2)
        if nics:
            nic = NICSpec()
            t.add_component(f"{p}nic{g}", "nic", spec=nic, gpu=gpu)  # GPUDirect pairing, see Topology._shortest
            t.add_link(f"{p}nic{g}", parent[g], "pcie", pcie.Bps, pcie.latency_s)
    for i, cpu in enumerate(cpus):
        _nvme(t, p, i, cpu)


def hgx(model: str = "H200", gpus: int = 8, *, uplink_lanes: int = 16, name: str | None = None,
        pcie_switches: bool = True) -> Topology:
    """One HGX baseboard: `gpus` SXM GPUs on NVSwitch; two sockets with PCIe switches shared by GPU pairs, or
    (`pcie_switches=False`) one socket with a PCIe link per GPU."""
    _check_count("hgx gpus", gpus)
    if not 1 <= gpus <= 8:
        raise TopologyError(f"an HGX board holds 1..8 GPUs, not {gpus}")
    aliases = {"host": "host0"} if pcie_switches else {"host": "host0", "host1": "host0"}
    t = Topology(name or f"hgx-{model.lower()}-{gpus}", aliases=aliases)
    _hgx_node(t, "", model, gpus, uplink_lanes, nics=True, pcie_switches=pcie_switches)
    add_memory_caps(t)
    t.validate()
    return t


def hgx_h100(gpus: int = 8) -> Topology:
    """The `hgx-h100-8` preset (or fewer GPUs): two sockets, GPU pairs behind shared PCIe switches, as HGX H100
    boards are usually built (see the module docstring for why that layout decides host-copy contention)."""
    return hgx("H100", gpus)


def hgx_h200(gpus: int = 8) -> Topology:
    """The `hgx-h200-8` preset (or fewer GPUs): the 8x H200 machines this project measures, one socket with a
    PCIe link per GPU and NIC (what their `nvidia-smi topo -m` shows), not the H100 boards' shared switches."""
    return hgx("H200", gpus, pcie_switches=False)


def _check_count(what: str, v: object) -> None:
    """A count of GPUs, nodes, ... is a whole number: the comparisons and range() after it would raise a bare
    TypeError for '8', and a bool is no count (cluster-Truex8)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TopologyError(f"{what}: expected a whole number, got {v!r}")


def _pcie_box(name: str, model: str, n_gpus: int, nvlink_pairs: bool) -> Topology:
    t = Topology(name, aliases={"host": "host0"})
    cpu = _host(t, "", 0, HostDRAMSpec())
    spec, pcie = gpu_model(model), PCIeSpec(5, 16)
    for g in range(n_gpus):
        t.add_component(f"gpu{g}", "gpu", spec=spec)
        t.add_link(f"gpu{g}", cpu, "pcie", pcie.Bps, pcie.latency_s)
    if nvlink_pairs:
        nvl = NVLinkSpec(4, 18)
        for g in range(0, n_gpus - 1, 2):
            t.add_link(f"gpu{g}", f"gpu{g + 1}", "nvlink", nvl.Bps, nvl.latency_s)
    _nvme(t, "", 0, cpu)
    add_memory_caps(t)
    t.validate()
    return t


def h100_1() -> Topology:
    """One H100 SXM on a Gen5 x16 root port of one socket (the `nvidia-h100-x1` device machine)."""
    return _pcie_box("h100-1", "H100", 1, nvlink_pairs=False)


def h200_1() -> Topology:
    """One H200 SXM on a Gen5 x16 root port of one socket (the `nvidia-h200` device machine)."""
    return _pcie_box("h200-1", "H200", 1, nvlink_pairs=False)


def h200_2() -> Topology:
    """Two H200 joined by NVLink, each on its own Gen5 x16 root port (the `nvidia-h200-x2` device machine)."""
    return _pcie_box("h200-2", "H200", 2, nvlink_pairs=True)


def pcie_4gpu(model: str = "H100-PCIE") -> Topology:
    """Four PCIe GPUs without NVLink: peer copies go through the host's root complex."""
    return _pcie_box("pcie-4gpu", model, 4, nvlink_pairs=False)


# Refused before anything is built: a cluster graph costs about 0.2 ms per GPU to build on a 2-core VM, so
# this bound keeps `fabricsim topo show cluster-NxG` under about a second, and turns cluster-100000x8 into a
# one-line error instead of minutes of graph building.
MAX_CLUSTER_GPUS = 4096
# a cluster's defaults, which its name leaves unsaid (`_cluster_name`), in one place for both signatures
FABRIC, GPU_MODEL, NIC_GBPS, NODES_PER_LEAF, OVERSUBSCRIPTION = "rail", "H100", 400.0, 4, 1.0


def _cluster_name(nodes: int, gpus_per_node: int, fabric: str = FABRIC, model: str = GPU_MODEL,
                  nic_Gbps: float = NIC_GBPS, nodes_per_leaf: int = NODES_PER_LEAF,
                  oversubscription: float = OVERSUBSCRIPTION) -> str:
    """The name of a cluster built without one: the preset's shortest spelling (`cluster-4x8-h200`, as
    `presets.get` is usually asked: the rail fabric and H100 are the defaults and go unsaid) where the settings are a
    preset's, with what differs from it appended (`-nic200g`, `-leaf8`, `-os2`), so that results and traces of a
    cluster built in Python never carry the name of another machine. (`spines` changes nothing simulated: the
    spines are one switch with the summed uplinks.)"""
    out = (f"cluster-{nodes}x{gpus_per_node}" + ("" if fabric == FABRIC else f"-{fabric}")
           + ("" if model.upper() == GPU_MODEL else f"-{model.lower()}"))
    if nic_Gbps != NIC_GBPS:
        out += f"-nic{_spelt(nic_Gbps)}g"
    leaf = min(nodes_per_leaf, nodes)  # a leaf of more nodes than there are holds them all: the same machine
    if fabric == "leaf-spine" and leaf != min(NODES_PER_LEAF, nodes):
        out += f"-leaf{leaf}"
    if oversubscription != OVERSUBSCRIPTION:
        out += f"-os{_spelt(oversubscription)}"
    return out


def _spelt(x: float) -> str:
    """`x` as a cluster's name writes it: the shortest decimal that reads back as `x`, with no exponent (the name's
    pattern has none) and no trailing '.0'. (`:g` rounds to six digits: a 400.1234567 Gb/s NIC was named 400.123,
    another machine.)"""
    text = format(decimal.Decimal(repr(float(x))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def cluster(nodes: int = 2, gpus_per_node: int = 8, *, fabric: str = FABRIC, model: str = GPU_MODEL,
            nic_Gbps: float = NIC_GBPS, nodes_per_leaf: int = NODES_PER_LEAF, spines: int = 2,
            oversubscription: float = OVERSUBSCRIPTION,
            name: str | None = None) -> Topology:
    """N HGX nodes with one RDMA NIC per GPU on a rail-optimised or leaf-spine network.

    Endpoints are `nodeK.gpuN`, `nodeK.host0`, ...; `nodeK.host` aliases `nodeK.host0`.
    """
    for what, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("nodes_per_leaf", nodes_per_leaf),
                    ("spines", spines)):
        _check_count(f"cluster {what}", v)
    if nodes < 1:
        raise TopologyError(f"a cluster needs at least one node, not {nodes}")
    if not 1 <= gpus_per_node <= 8:  # each node is built as one HGX board, which `hgx` bounds the same way
        raise TopologyError(f"a cluster node is one HGX board of 1..8 GPUs, not {gpus_per_node}")
    if nodes * gpus_per_node > MAX_CLUSTER_GPUS:
        raise TopologyError(f"cluster of {nodes:,} nodes x {gpus_per_node} GPUs: {nodes * gpus_per_node:,} GPUs is "
                            f"more than the {MAX_CLUSTER_GPUS:,} a preset builds (simulate the part of the cluster "
                            "the question needs)")
    if fabric not in ("rail", "leaf-spine"):
        raise TopologyError(f"unknown cluster fabric '{fabric}' (known: rail, leaf-spine)")
    if not 1 <= oversubscription < math.inf:
        raise TopologyError(f"oversubscription must be a finite number >= 1, got {oversubscription}")
    if fabric == "leaf-spine" and not nodes_per_leaf >= 1:
        raise TopologyError(f"a leaf-spine fabric needs at least 1 node per leaf, got {nodes_per_leaf}")
    if fabric == "leaf-spine" and not 1 <= spines <= nodes_per_leaf * gpus_per_node:
        # A leaf has at most as many uplinks (one per spine) as GPU ports; none divides by zero.
        raise TopologyError(f"a leaf-spine fabric of {nodes_per_leaf} x {gpus_per_node} GPUs per leaf needs 1 to "
                            f"{nodes_per_leaf * gpus_per_node} spines, got {spines}")
    t = Topology(name or _cluster_name(nodes, gpus_per_node, fabric, model, nic_Gbps, nodes_per_leaf,
                                       oversubscription))
    nic = NICSpec(Gbps=nic_Gbps)
    sw = NetSwitchSpec(port_Gbps=nic_Gbps)
    for k in range(nodes):
        _hgx_node(t, f"node{k}.", model, gpus_per_node, 16, nics=True)
        t.aliases[f"node{k}.host"] = f"node{k}.host0"
    if fabric == "rail":
        for r in range(gpus_per_node):
            t.add_component(f"rail{r}", "net-switch", spec=sw)
            for k in range(nodes):
                t.add_link(f"node{k}.nic{r}", f"rail{r}", "net", nic.Bps, nic.latency_s / 2 + sw.latency_s)
        if gpus_per_node > 1:
            t.add_component("spine", "net-switch", spec=sw)
            for r in range(gpus_per_node):
                t.add_link(f"rail{r}", "spine", "net", nodes * nic.Bps / oversubscription, sw.latency_s)
    else:
        # The spines as one switch whose link to each leaf sums the leaf's uplinks to all of them: ECMP spreads
        # flows over the spines, and in the fluid limit (many flows, no hash collisions) evenly. Drawn as separate
        # equal-cost spines, every route search picks the same one (the first it reaches) and a cross-leaf copy
        # got 1/spines of the fabric.
        n_leaves = -(-nodes // nodes_per_leaf)
        t.add_component("spine", "net-switch", spec=sw)
        for leaf in range(n_leaves):
            t.add_component(f"leaf{leaf}", "net-switch", spec=sw)
            members = range(leaf * nodes_per_leaf, min(nodes, (leaf + 1) * nodes_per_leaf))
            for k in members:
                for g in range(gpus_per_node):
                    t.add_link(f"node{k}.nic{g}", f"leaf{leaf}", "net", nic.Bps, nic.latency_s / 2 + sw.latency_s)
            uplinks = len(members) * gpus_per_node * nic.Bps / oversubscription
            t.add_link(f"leaf{leaf}", "spine", "net", uplinks, sw.latency_s)
    add_memory_caps(t)
    t.validate()
    return t


PRESETS: dict[str, Callable[[], Topology]] = {
    "h100-1": h100_1,
    "h200-1": h200_1,
    "h200-2": h200_2,
    "hgx-h100-8": hgx_h100,
    "hgx-h200-8": hgx_h200,
    "pcie-4gpu": pcie_4gpu,
}

_CLUSTER_RE = re.compile(r"^cluster-(\d+)x(\d+)(?:-(rail|leaf-spine))?(?:-(h100|h200))?"
                         r"(?:-nic(\d+(?:\.\d+)?)g)?(?:-leaf(\d+))?(?:-os(\d+(?:\.\d+)?))?$")


# how a cluster's name is spelt (what `_CLUSTER_RE` reads), for help texts and lists of names
CLUSTER_PATTERN = "cluster-NxG[-rail|-leaf-spine][-h100|-h200][-nicRg][-leafL][-osX]"


def names() -> list[str]:
    """Every preset name `get` accepts, clusters as their pattern: for help texts and 'known: ...' in errors."""
    return [*PRESETS, CLUSTER_PATTERN]


def get(name: str, calibration: CalibrationArg | str = "default") -> Topology:
    """A preset by name, with its calibration: 'default' (the bundled profile, if any), None, a path or a profile.
    A cluster is named by its shortest spelling whichever was asked (`cluster-4x8-rail-h200` is `cluster-4x8-h200`)."""
    if not isinstance(name, str):  # (the name pattern would raise a bare TypeError)
        raise TopologyError(f"preset name: expected a string such as 'h200-2', got {name!r} (known: "
                            f"{', '.join(names())})")
    if name in PRESETS:
        topo = PRESETS[name]()
    else:
        args = _cluster_args(name)
        try:  # named by `cluster` (its shortest spelling), not as asked: one machine has one name in results
            topo = cluster(**args)
        except TopologyError as exc:
            raise TopologyError(f"preset '{name}': {exc}") from None
    return apply_calibration(topo, calibration, preset=name)


def canonical_name(name: str) -> str:
    """The name a preset's topology carries (`get(name).name`) without building it: a cluster's shortest spelling
    for any accepted one; anything else (another preset, a file path, an unknown name) as given. Study rows name
    their machine by it, so a grid that says `cluster-4x8-rail` stores the rows of `cluster-4x8`."""
    if name in PRESETS or not _CLUSTER_RE.match(name):
        return name
    try:
        args = _cluster_args(name)
    except TopologyError:
        return name
    return _cluster_name(**args)  # the settings the name leaves out: `cluster`'s defaults, which it shares


def _cluster_args(name: str) -> dict:
    """`cluster`'s arguments for a cluster preset's name (the settings it does not say are `cluster`'s defaults)."""
    m = _CLUSTER_RE.match(name)
    if not m:
        raise TopologyError(f"unknown topology preset '{name}' (known: {', '.join(names())})")
    fabric = m[3] or "rail"
    if m[6] and fabric != "leaf-spine":
        raise TopologyError(f"preset '{name}': -leafN sets the nodes per leaf of a leaf-spine fabric")
    given = {k: f(v) for k, f, v in (("nic_Gbps", float, m[5]), ("nodes_per_leaf", int, m[6]),
                                     ("oversubscription", float, m[7])) if v}
    return {"nodes": int(m[1]), "gpus_per_node": int(m[2]), "fabric": fabric, "model": (m[4] or "h100").upper(),
            **given}


def load(ref: str, calibration: CalibrationArg | str = "default", base_dir: str | Path | None = None) -> Topology:
    """A preset name or a topology file path (relative to `base_dir`): the one way every entry point resolves a
    topology. 'default' calibration means the preset's bundled profile; a topology file gets none unless one
    is named, since the file describes a machine the bundled profiles were not measured on."""
    if not isinstance(ref, str):  # (a bare TypeError or AttributeError below)
        raise TopologyError(f"topology: expected a preset name or a topology file's path, got {ref!r}")
    path = Path(base_dir or ".") / ref
    if ref.endswith((".yaml", ".yml", ".json")) or path.exists():
        if path.is_dir():
            raise TopologyError(f"topology '{path}' is a folder; give a topology file or a preset name")
        if not path.is_file():
            raise TopologyError(f"topology file '{path}' not found")
        from .topofile import load_topology_file

        return apply_calibration(load_topology_file(path), None if calibration == "default" else calibration)
    return get(ref, calibration=calibration)


def apply_calibration(topo: Topology, calibration: CalibrationArg | str, preset: str | None = None) -> Topology:
    """`topo` with a calibration: 'default' (the preset's bundled profile, where it has one), None or 'none' (the
    datasheet figures: the word as every CLI's --calibration and a scenario's `calibration:` spell it), a profile, a
    profile's path, or a bundled profile's name (`h200x2`; `calibration.profile_file`)."""
    if calibration is None or calibration == NO_CALIBRATION:
        return topo
    if isinstance(calibration, CalibrationProfile):
        return topo.with_calibration(calibration)
    if calibration == "default":
        bundled = DEFAULT_PROFILES.get(preset or topo.name)
        if bundled is None or not bundled_profile_path(bundled).exists():
            return topo
        return topo.with_calibration(load_profile(bundled_profile_path(bundled)))
    return topo.with_calibration(load_profile(calibration))
