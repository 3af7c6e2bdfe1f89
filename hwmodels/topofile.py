"""Topology files (YAML/JSON): describe a machine no preset covers.

```yaml
name: my-box
components:
  host0: {kind: host, dram_GBps: 300, dram_GiB: 1024}
  cpu0: {kind: cpu}
  gpu0: {kind: gpu, model: H100}
  gpu1: {kind: gpu, model: H100}
  sw0: {kind: net-switch}
links:
  - {between: [host0, cpu0], kind: dram, GBps: 230}
  - {between: [gpu0, cpu0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu1, cpu0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu0, gpu1], kind: nvlink, gen: 4, links: 18}
  - {between: [cpu0, sw0], kind: net, GBps: 50, reverse_GBps: 50, latency_us: 2}
caps:
  - {name: host-h2d, GBps: 100, classes: [h2d]}
pinned:
  - {src: gpu0, dst: gpu1, via: [host0]}   # P2P staged through host memory
aliases: {host: host0}
```
`host` stands for `host0` where host0 is host memory and the file names nothing else `host`, as in the presets.
A NIC may name the GPU whose RDMA traffic it carries (`{kind: nic, Gbps: 400, gpu: node0.gpu3}`, GPUDirect: no
other GPU of its machine sends through it), as the cluster presets pair them. A link gives either `GBps`
(effective, per direction) or the spec fields of its kind (PCIe gen/lanes, NVLink gen/links); `latency_us`
overrides the kind's default latency. HBM and DRAM caps are added automatically, as in the presets: a fraction of
the GPU model's HBM peak and of `dram_GBps` (a peak; `specs.Derating` says how much and why).

What would load wrong without a word is refused, naming where: a key given twice in one mapping, an alias that
names no component, names one that is no endpoint (a CPU, switch or NIC) or is itself a component's name, a pair
pinned twice, and a pinned route that passes a CPU or switch twice other than on either side of a memory it is
staged through (a GPU, host or NVMe in `via`). A number YAML 1.1 reads as a string (`1e3`, no decimal point)
counts as the number, as in scenario files. A rate (`GBps`, `reverse_GBps`, `dram_GBps`, a cap's `GBps`, a NIC's
`Gbps`) from 1 MB/s to 100 TB/s is taken, a number outside it refused as a typo or a wrong unit
(`specs.check_link_rate`, the bounds of a cluster preset's NIC too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fabricsim.errors import TopologyError

from .calibration import LINK_KINDS
from .endpoints import spell_for_message
from .fileio import read_yaml
from .memcaps import add_memory_caps
from .specs import GB, GiB, HostDRAMSpec, NICSpec, NVLinkSpec, NVMeSpec, PCIeSpec, check_link_rate, gpu_model
from .topology import ENDPOINT_KINDS, Topology


def _num(where: str, v: Any, *, allow_zero: bool = False, most: float = math.inf, unit: str = "") -> float:
    """A finite number > 0 (>= 0 with `allow_zero`) and at most `most`: beyond it a value is a typo or a wrong
    unit (a 10^300 GB/s link would make every transfer instant).

    A numeric string counts, as in scenario files: YAML 1.1 reads `1e3` (no decimal point) as the string '1e3',
    and the writer meant the number; the range checks then apply to it like to any other number."""
    shown = v
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise TopologyError(f"{where}: expected a number, got {shown!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        raise TopologyError(f"{where}: expected a number, got {shown!r}")
    if math.isinf(v):
        raise TopologyError(f"{where}: expected a finite number, got {shown!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise TopologyError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    if v > most:
        raise TopologyError(f"{where}: {v!r} is beyond {most:g}{unit}, more than any hardware has (check the unit)")
    return float(v)


def _rate(where: str, v: Any, unit: str = " GB/s", per_GBps: float = 1.0) -> float:
    """A link's, cap's, host memory's or NIC's rate: a number > 0 within `specs.check_link_rate`'s bounds."""
    x = _num(where, v)
    check_link_rate(where, x, unit, per_GBps)
    return x


_TOP_KEYS = {"name", "components", "links", "caps", "pinned", "aliases"}
_COMPONENT_KEYS = {"kind", "model", "dram_GBps", "dram_GiB", "Gbps", "gpu"}
_LINK_KEYS = {"between", "kind", "GBps", "reverse_GBps", "latency_us", "gen", "lanes", "links"}
_CAP_KEYS = {"name", "GBps", "classes", "endpoints"}


def _keys(where: str, d: dict, allowed: set[str]) -> None:
    """Unknown keys are errors: a typo (`modle`, `latncy_us`) must not silently fall back to a default."""
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _whole(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TopologyError(f"{where}: expected a whole number, got {v!r}")
    return v


def _list(where: str, v: Any) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise TopologyError(f"{where}: expected a list, got {v!r}")
    return v


def _located(where: str, fn: Any, *args: Any) -> Any:
    """Call `fn`; a TopologyError that does not yet say where it happened gets `where` in front."""
    try:
        return fn(*args)
    except TopologyError as exc:
        msg = str(exc)
        raise TopologyError(msg if msg.startswith(where.split(":")[0]) else f"{where}: {msg}") from None


def topology_from_dict(d: Any, source: str = "topology") -> Topology:
    if not isinstance(d, dict):
        raise TopologyError(f"{source}: expected a mapping with 'components' and 'links'")
    _keys(source, d, _TOP_KEYS)
    if d.get("aliases") is not None and not isinstance(d["aliases"], dict):
        raise TopologyError(f"{source}: aliases: expected a mapping of alias -> endpoint")
    comps = d.get("components")
    links = d.get("links")
    if not isinstance(comps, dict) or not comps:
        raise TopologyError(f"{source}: components: expected a non-empty mapping of name -> {{kind: ...}}")
    if not isinstance(links, list):
        raise TopologyError(f"{source}: links: expected a list")
    t = Topology(str(d.get("name") or Path(source).stem), aliases=dict(d.get("aliases") or {}))
    try:
        for name, c in comps.items():
            where = f"{source}: components.{name}"
            if not isinstance(c, dict) or "kind" not in c:
                raise TopologyError(f"{where}: expected a mapping with 'kind'")
            _keys(where, c, _COMPONENT_KEYS)
            kind = c["kind"]
            if "gpu" in c and kind != "nic":
                raise TopologyError(f"{where}.gpu: only a NIC is paired with a GPU")
            attrs: dict[str, Any] = {}
            if kind == "gpu":
                attrs["spec"] = _located(f"{where}.model", gpu_model, str(c.get("model", "H100")))
            elif kind == "host":
                # a field not given is the spec's default (its class attribute), written nowhere else
                gib = _num(f"{where}.dram_GiB", c.get("dram_GiB", HostDRAMSpec.bytes / GiB), most=2**30, unit=" GiB")
                peak = _rate(f"{where}.dram_GBps", c.get("dram_GBps", HostDRAMSpec.GBps))
                attrs["spec"] = HostDRAMSpec(bytes=int(gib * GiB), GBps=peak)
            elif kind == "nic":
                gbits = _rate(f"{where}.Gbps", c.get("Gbps", NICSpec.Gbps), " Gb/s", per_GBps=8)
                attrs["spec"] = NICSpec(Gbps=gbits)
                if "gpu" in c:  # the GPU whose RDMA traffic it carries (GPUDirect): routing keeps others off it
                    attrs["gpu"] = str(c["gpu"])
            elif kind == "nvme":
                attrs["spec"] = NVMeSpec()
            t.add_component(str(name), str(kind), **attrs)
        _default_host_alias(t)
        _check_aliases(t, source)
        for name, own in t.graph.nodes(data="gpu"):
            if own is not None and t.graph.nodes.get(own, {}).get("kind") != "gpu":
                raise TopologyError(f"{source}: components.{name}.gpu: '{own}' is not a GPU of this file")
        for i, link in enumerate(links):
            _located(f"{source}: links[{i}]", _add_link, t, link, f"{source}: links[{i}]")
        add_memory_caps(t)
        for i, c in enumerate(_list(f"{source}: caps", d.get("caps"))):
            where = f"{source}: caps[{i}]"
            if not isinstance(c, dict) or "name" not in c:
                raise TopologyError(f"{where}: expected a mapping with 'name' and 'GBps'")
            _keys(where, c, _CAP_KEYS)
            t.add_cap(str(c["name"]), _rate(f"{where}.GBps", c.get("GBps")) * GB,
                      classes=tuple(c.get("classes") or ()), endpoints=tuple(c.get("endpoints") or ()))
        pins: dict[tuple[str, str], tuple[str, list]] = {}  # (src, dst) -> (where it is pinned, via)
        for i, p in enumerate(_list(f"{source}: pinned", d.get("pinned"))):
            where = f"{source}: pinned[{i}]"
            if not isinstance(p, dict) or not {"src", "dst", "via"} <= set(p):
                raise TopologyError(f"{where}: expected a mapping with src, dst and via")
            _keys(where, p, {"src", "dst", "via"})
            for end in ("src", "dst"):
                if not isinstance(p[end], str):
                    raise TopologyError(f"{where}.{end}: expected an endpoint name, got {p[end]!r}")
            ends = (_located(where, t.resolve, p["src"]), _located(where, t.resolve, p["dst"]))
            if ends in pins:  # a second pin would replace the first silently
                raise TopologyError(f"{where}: {ends[0]}->{ends[1]} is pinned already by "
                                    f"{pins[ends][0].removeprefix(f'{source}: ')}")
            pins[ends] = where, _list(f"{where}.via", p["via"])
            _located(where, t.pin_route, *ends, pins[ends][1])
        t.validate()
        for (src, dst), (where, via) in pins.items():  # routes are searched on a whole, connected graph only
            _check_pinned_route(t, src, dst, via, where)
    except TopologyError as exc:
        msg = str(exc)
        raise TopologyError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return t


def _default_host_alias(t: Topology) -> None:
    """`host` stands for `host0`, as in every preset, where the file gives no alias and no component of that name
    and `host0` is host memory. Added before the alias checks, which it then passes as any alias must; it was
    added after them, so a `host0` that was a CPU, NVMe or GPU made `host` an alias no check had seen: a copy from
    `host` failed at run time far from the file, or went to the disk or the GPU of that name without a word. A
    `host0` of another kind gets no default (the user did not write one, so it must not refuse the file): a
    scenario's `host` is then an unknown endpoint, named with the endpoints the file has."""
    if "host" not in t.aliases and "host" not in t.graph and t.graph.nodes.get("host0", {}).get("kind") == "host":
        t.aliases["host"] = "host0"


def _check_aliases(t: Topology, source: str) -> None:
    """An alias must name an endpoint of the file (a GPU, host memory or NVMe) and must not itself be a
    component's name: an alias to nothing would be blamed on whatever scenario uses it, one with a component's
    name silently sends copies meant for that component to another one, and one to a CPU, switch or NIC loads
    fine only to fail at the first copy that uses it ("'cpu0' is a cpu, not an endpoint"), far from the file.
    Aliases are read only where an endpoint is named (a copy's ends, a memory pool, a task's GPU, a cap's
    endpoints); a pinned route's `via` takes component names as they are, so no alias to a transit component
    can be of use."""
    for name, target in t.aliases.items():
        where = f"{source}: aliases.{name}"
        if name in t.graph:
            raise TopologyError(f"{where}: '{name}' is a component of this file; an alias of that name would send "
                                f"its copies to '{target}' (pick another alias name)")
        if not isinstance(target, str) or target not in t.graph:
            raise TopologyError(f"{where}: {target!r} is not a component of this file "
                                f"(it has {spell_for_message(t.endpoints())})")
        if t.kind(target) not in ENDPOINT_KINDS:
            raise TopologyError(f"{where}: '{target}' is a {t.kind(target)}, not an endpoint a copy can start or "
                                f"end at (a GPU, host memory or NVMe: it has {spell_for_message(t.endpoints())})")


def _check_pinned_route(t: Topology, src: str, dst: str, via: list[str], where: str) -> None:
    """A pinned route must not loop: between two stops (its ends and the memories it is staged through, the
    endpoints in `via`) no component may come twice, nor may a stop be listed twice. Staging through host memory goes
    gpu0 > cpu0 > host0 > cpu0 > gpu1 and is no loop (the copy lands in host0's DRAM and is copied out again,
    each link direction used once); a detour through a switch or CPU that comes back (gpu0 > cpu0 > cpu1 >
    cpu0 > gpu1) only loads links the copy does not cross, and is refused."""
    listed = [src, *via, dst]
    twice = next((n for i, n in enumerate(listed) if n in listed[:i]), None)
    if twice is not None:
        raise TopologyError(f"{where} ({src}->{dst}): '{twice}' comes twice in {' > '.join(listed)}")
    nodes = _located(where, t.path, src, dst).nodes
    stops = {src, dst, *(n for n in via if t.kind(n) in ENDPOINT_KINDS)}
    seen: set[str] = set()
    for n in nodes:
        if n in seen:
            raise TopologyError(f"{where} ({src}->{dst}): the route visits '{n}' twice ({' > '.join(nodes)})")
        # a memory the copy lands in: the way out may cross what the way in crossed (endpoints are never transit)
        seen = set() if n in stops else seen | {n}


def _add_link(t: Topology, link: Any, where: str) -> None:
    if not isinstance(link, dict):
        raise TopologyError(f"{where}: expected a mapping")
    _keys(where, link, _LINK_KEYS)
    ends = link.get("between")
    if not isinstance(ends, list) or len(ends) != 2 or ends[0] == ends[1]:
        raise TopologyError(f"{where}.between: expected [a, b] with two different components")
    kind = link.get("kind")
    # the kind first: a misspelled one ('nvlnk') must be named as such, not read as a spec-less link missing GBps
    if kind not in LINK_KINDS:
        raise TopologyError(f"{where}.kind: " + ("missing" if kind is None else f"unknown kind '{kind}'")
                            + f" (known: {', '.join(LINK_KINDS)})")
    a, b = str(ends[0]), str(ends[1])
    latency = None
    if "latency_us" in link:
        latency = _num(f"{where}.latency_us", link["latency_us"], allow_zero=True, most=1e7, unit=" us") * 1e-6
    if "GBps" in link:
        fwd = _rate(f"{where}.GBps", link["GBps"]) * GB
        rev = _rate(f"{where}.reverse_GBps", link.get("reverse_GBps", link["GBps"])) * GB
        t.add_link(a, b, str(kind), fwd, latency if latency is not None else 1e-6, Bps_reverse=rev)
        return
    if kind == "pcie":
        spec = PCIeSpec(_whole(f"{where}.gen", link.get("gen", 5)), _whole(f"{where}.lanes", link.get("lanes", 16)))
        t.add_link(a, b, "pcie", spec.Bps, spec.latency_s if latency is None else latency)
    elif kind == "nvlink":
        spec = NVLinkSpec(_whole(f"{where}.gen", link.get("gen", 4)), _whole(f"{where}.links", link.get("links", 18)))
        t.add_link(a, b, "nvlink", spec.Bps, spec.latency_s if latency is None else latency)
    else:
        raise TopologyError(f"{where}: a '{kind}' link needs GBps (only pcie and nvlink links derive it from a spec)")


def load_topology_file(path: str | Path) -> Topology:
    """A topology file as a `Topology`; a key given twice is an error, like an unknown one (the last would win)."""
    return topology_from_dict(read_yaml(path, TopologyError, "topology file"), str(path))


def topology_to_dict(t: Topology) -> dict[str, Any]:
    """The file form of a topology (links as effective GB/s), so presets and imports can be saved and edited."""
    comps: dict[str, Any] = {}
    for n, data in t.graph.nodes(data=True):
        c: dict[str, Any] = {"kind": data["kind"]}
        spec = data.get("spec")
        if data["kind"] == "gpu":
            c["model"] = spec.model
        elif data["kind"] == "host":
            c["dram_GBps"] = spec.GBps
            c["dram_GiB"] = spec.bytes // GiB
        elif data["kind"] == "nic":
            c["Gbps"] = spec.Gbps
            if data.get("gpu") is not None:  # the NIC's GPU: without it the file routes RDMA over any NIC
                c["gpu"] = data["gpu"]
        comps[n] = c
    links = []
    for a, b, d in t.graph.edges(data=True):
        link = {"between": [a, b], "kind": d["kind"], "GBps": round(d["bw"][(a, b)] / GB, 6),
                "latency_us": round(d["latency_s"] * 1e6, 6)}
        if d["bw"][(b, a)] != d["bw"][(a, b)]:
            link["reverse_GBps"] = round(d["bw"][(b, a)] / GB, 6)
        links.append(link)
    caps = [{"name": c.name, "GBps": c.Bps / GB, "classes": sorted(c.classes), "endpoints": sorted(c.endpoints)}
            for c in t.caps.values() if not c.edges]  # memory caps (edge-based) are rebuilt on load
    out: dict[str, Any] = {"name": t.name, "components": comps, "links": links}
    if caps:
        out["caps"] = caps
    if t.aliases:
        out["aliases"] = dict(t.aliases)
    return out
