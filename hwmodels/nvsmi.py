"""Build a `Topology` from the text of `nvidia-smi topo -m`, so users can model the box in front of them.

The matrix says, for each GPU pair, how they connect: `NV#` (# NVLinks, direct or through NVSwitch),
`PIX`/`PXB` (behind the same PCIe switch / switches), `PHB` (same host bridge), `NODE` (same NUMA node, different
host bridges), `SYS` (across sockets). The CPU/NUMA affinity columns place each GPU on a socket. We build:
one host+CPU per NUMA node, one PCIe switch per group of GPUs that are PIX/PXB to each other (else a root port on
the CPU), NVLink per pair (or an NVSwitch when every pair of 3+ GPUs has the same NV#), NICs behind the switch
of the GPU they are PIX/PXB to.
"""

from __future__ import annotations

import re

from fabricsim.errors import TopologyError

from .memcaps import add_memory_caps
from .specs import HostDRAMSpec, NICSpec, NVLinkSpec, NVSwitchSpec, PCIeSpec, SocketLinkSpec, gpu_model
from .topology import Topology

_NV = re.compile(r"^NV(\d+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The legend's PCIe relations (no direct link); SOC is what drivers before SYS existed printed for it.
_PCIE_CODES = ("SYS", "NODE", "PHB", "PXB", "PIX", "SOC")
_KNOWN_CODES = "X, SYS, NODE, PHB, PXB, PIX, NV#"
# NVLinks per GPU: H100 and H200 have 18, A100 12; none has more. One peer gets at most all of them, and so do
# all peers together where the links are direct (through an NVSwitch every pair shows the GPU's full count).
MAX_NVLINKS = 18


def parse_topo_matrix(text: str) -> tuple[list[str], dict[tuple[str, str], str], dict[str, int]]:
    """Device names, the pairwise link labels, and each GPU's NUMA node."""
    text = _ANSI.sub("", text)  # nvidia-smi underlines the header with terminal escape codes
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    header_idx = next((i for i, ln in enumerate(lines) if re.search(r"\bGPU0\b", ln) and "Legend" not in ln), None)
    if header_idx is None:
        raise TopologyError("no 'GPU0' header found: paste the output of `nvidia-smi topo -m`")
    header = lines[header_idx].split()
    devs = [h for h in header if re.match(r"^(GPU|NIC|mlx)\w*\d+$", h)]
    if not devs:
        raise TopologyError("the topology matrix names no devices")
    rest = header[len(devs):]
    numa_col = None
    joined = " ".join(rest)
    if "NUMA Affinity" in joined:
        # Columns after the devices: "CPU Affinity", "NUMA Affinity", ["GPU NUMA ID"]
        numa_col = len(devs) + 1
    labels: dict[tuple[str, str], str] = {}
    numa: dict[str, int] = {}
    for ln in lines[header_idx + 1:]:
        if ln.startswith("Legend"):
            break
        parts = ln.split()
        if not parts or parts[0] not in devs:
            continue
        row, cells = parts[0], parts[1:]
        if len(cells) < len(devs):
            raise TopologyError(f"row '{row}' has {len(cells)} cells, expected {len(devs)}")
        for col, cell in zip(devs, cells[:len(devs)], strict=True):
            labels[(row, col)] = cell
        if numa_col is not None and len(cells) > numa_col and cells[numa_col].isdigit():
            numa[row] = int(cells[numa_col])
    gpus = [d for d in devs if d.startswith("GPU")]
    missing = [g for g in gpus if (g, g) not in labels]
    if missing:
        raise TopologyError(f"no matrix row for {missing[0]}")
    _check_cells(labels)
    return devs, labels, numa


def _check_cells(labels: dict[tuple[str, str], str]) -> None:
    """Every cell a code of the legend, X on the diagonal only, at most `MAX_NVLINKS` to one peer, NVLink between
    GPUs only, and the matrix symmetric: a typo or a damaged paste must not silently become "no direct link" (an
    unknown code, which the builder would read as PCIe) or a link the hardware cannot have."""
    for (row, col), cell in labels.items():
        where = f"row {row}, column {col}"
        if (row == col) != (cell == "X"):
            raise TopologyError(f"{where}: " + (f"expected X (the device itself), got '{cell}'" if row == col
                                                else "X (self) belongs on the diagonal only"))
        m = _NV.match(cell)
        if m and not 1 <= int(m[1]) <= MAX_NVLINKS:
            raise TopologyError(f"{where}: {cell} says {int(m[1])} NVLinks; a GPU has 1 to {MAX_NVLINKS}")
        if m and not (row.startswith("GPU") and col.startswith("GPU")):
            raise TopologyError(f"{where}: {cell} joins a NIC by NVLink; NVLink joins GPUs only")
        if not m and cell != "X" and cell not in _PCIE_CODES:
            raise TopologyError(f"{where}: unknown link code '{cell}' (known: {_KNOWN_CODES})")
    for (row, col), cell in labels.items():  # each cell read, so a typo is named as one, not as a mismatch
        other = labels.get((col, row))
        if other is not None and other != cell:
            raise TopologyError(f"row {row}, column {col}: '{cell}', but row {col}, column {row}: '{other}' "
                                "(the matrix is symmetric: each pair is connected one way)")


def _direct_totals_exceed(nv: dict[tuple[str, str], int]) -> bool:
    """Whether some GPU's NVLinks, read as direct links to its peers, would add up to more than it has."""
    total: dict[str, int] = {}
    for (a, b), n in nv.items():
        total[a], total[b] = total.get(a, 0) + n, total.get(b, 0) + n
    return any(n > MAX_NVLINKS for n in total.values())


def _check_nvlink_totals(nv: dict[tuple[str, str], int]) -> None:
    """Direct NVLinks of each GPU, summed over its peers, within `MAX_NVLINKS`: more would build links the GPU
    does not have (a matrix where every pair has NVLink is an NVSwitch box instead, a link down or not)."""
    peers: dict[str, list[tuple[str, int]]] = {}
    for (a, b), n in nv.items():
        peers.setdefault(a, []).append((b, n))
        peers.setdefault(b, []).append((a, n))
    for g, links in peers.items():
        count = sum(n for _, n in links)
        if count > MAX_NVLINKS:
            shown = ", ".join(f"NV{n} to {p}" for p, n in links)
            raise TopologyError(f"row {g}: {count} NVLinks to its peers in all ({shown}), more than the "
                                f"{MAX_NVLINKS} a GPU has; behind an NVSwitch every pair shows the same NV#")


def topology_from_topo_m(text: str, gpu: str = "H100", name: str = "imported") -> Topology:
    """The machine `nvidia-smi topo -m` describes (see the module docstring), with GPUs of model `gpu`; a matrix
    it cannot be (an unknown code, more NVLinks than a GPU has, two halves that disagree) is a `TopologyError`
    naming the cell, since guessing would model another machine than the one in front of the user."""
    devs, labels, numa = parse_topo_matrix(text)
    gpus = [d for d in devs if d.startswith("GPU")]
    spec = gpu_model(gpu)
    t = Topology(name, aliases={"host": "host0"})
    sockets = sorted(set(numa.values()) or {0})
    for s in sockets:
        t.add_component(f"host{s}", "host", spec=HostDRAMSpec())
        t.add_component(f"cpu{s}", "cpu")
        t.add_link(f"host{s}", f"cpu{s}", "dram", HostDRAMSpec().Bps, 0.1e-6)
    for a, b in zip(sockets, sockets[1:], strict=False):
        t.add_link(f"cpu{a}", f"cpu{b}", "socket", SocketLinkSpec().Bps, SocketLinkSpec().latency_s)
    pcie = PCIeSpec(5, 16)
    # Group devices behind shared PCIe switches (PIX/PXB relations, transitively).
    group: dict[str, int] = {}
    for d in devs:
        if d in group:
            continue
        group[d] = len(set(group.values()))
        stack = [d]
        while stack:
            x = stack.pop()
            for y in devs:
                if y not in group and labels.get((x, y)) in ("PIX", "PXB"):
                    group[y] = group[d]
                    stack.append(y)
    members: dict[int, list[str]] = {}
    for d, g in group.items():
        members.setdefault(g, []).append(d)
    for g, ds in members.items():
        socket = numa.get(next((x for x in ds if x in numa), ds[0]), sockets[0])
        parent = f"cpu{socket}"
        if len(ds) > 1:
            parent = f"pcisw{g}"
            t.add_component(parent, "pcie-switch")
            t.add_link(parent, f"cpu{socket}", "pcie", pcie.Bps, pcie.latency_s)
        for d in ds:
            node = _node_name(d)
            if d.startswith("GPU"):
                t.add_component(node, "gpu", spec=spec)
            else:
                t.add_component(node, "nic", spec=NICSpec())
            t.add_link(node, parent, "pcie", pcie.Bps, pcie.latency_s)
    nv = {(a, b): int(m[1]) for (a, b), lab in labels.items()
          if a in gpus and b in gpus and a < b and (m := _NV.match(lab))}
    pairs = [(a, b) for i, a in enumerate(gpus) for b in gpus[i + 1:]]
    if len(gpus) >= 3 and pairs and all(p in nv for p in pairs) and (len(set(nv.values())) == 1
                                                                      or _direct_totals_exceed(nv)):
        # Behind an NVSwitch a pair shows the fewer of its two GPUs' links to the switch: a GPU with a link down
        # shows it in its whole row, the others keep their most (it cannot be a direct mesh of more than 18 a GPU)
        t.add_component("nvswitch", "nvswitch", spec=NVSwitchSpec())
        for g in gpus:
            link = NVLinkSpec(4, max(n for pair, n in nv.items() if g in pair))
            t.add_link(_node_name(g), "nvswitch", "nvlink", link.Bps, link.latency_s / 2)
    else:
        _check_nvlink_totals(nv)
        for (a, b), n in nv.items():
            link = NVLinkSpec(4, n)
            t.add_link(_node_name(a), _node_name(b), "nvlink", link.Bps, link.latency_s)
    if not any(len(ds) > 1 for ds in members.values()):
        add_host_ceilings(t, spec.model)
    add_memory_caps(t)
    t.validate()
    return t


def add_host_ceilings(t: Topology, model: str) -> str | None:
    """Without PCIe switches the links alone put no ceiling on the host side: every GPU has its own link, yet
    eight of them at once do not reach eight times one (host-aggregate and duplex limits of the root complex and
    memory). Those ceilings come from the bundled profile of this GPU model and count, when there is one; returns
    its id (recorded in the topology's name-independent `caps`, which a profile applied later overrides)."""
    from .calibration import bundled_profile_path, load_profile
    from .presets import DEFAULT_PROFILES, PRESET_FOR

    name = DEFAULT_PROFILES.get(PRESET_FOR.get((model, len(t.gpus()))) or "")
    if name is None or not bundled_profile_path(name).exists():
        return None
    profile = load_profile(bundled_profile_path(name))
    for c in profile.caps:
        if all(e in t.graph for e in c.endpoints):
            t.add_cap(c.name, c.Bps, classes=c.classes, endpoints=c.endpoints)
    return profile.id


def _node_name(dev: str) -> str:
    m = re.match(r"^GPU(\d+)$", dev)
    if m:
        return f"gpu{m[1]}"
    m = re.match(r"^(?:NIC|mlx\w*_)(\d+)$", dev)
    return f"nic{m[1]}" if m else dev.lower()
