"""Topologies: routing (incl. P2P through the host without NVLink), presets, files, nvidia-smi import, calibration."""

from __future__ import annotations

import itertools
import json

import pytest

from fabricsim.errors import CalibrationError, TopologyError
from fabricsim.hwmodels import presets
from fabricsim.hwmodels.calibration import profile_from_dict
from fabricsim.hwmodels.nvsmi import topology_from_topo_m
from fabricsim.hwmodels.topofile import topology_from_dict, topology_to_dict
from fabricsim.simcore import Simulation


@pytest.mark.parametrize("name", ["h100-1", "h200-2", "hgx-h100-8", "hgx-h200-8", "pcie-4gpu", "cluster-2x8",
                                  "cluster-4x8-leaf-spine-h200"])
def test_presets_build_and_every_endpoint_reaches_every_gpu(name):
    t = presets.get(name, calibration=None)
    for src in t.endpoints():
        for dst in t.gpus()[:3]:
            p = t.path(src, dst)
            assert p.resources and p.latency_s >= 0


def test_hgx_peer_traffic_uses_nvlink_not_pcie():
    t = presets.hgx_h200(8)
    p = t.path("gpu0", "gpu1")
    assert p.path_class == "p2p-nvlink" and "nvswitch" in p.nodes


def test_pcie_box_routes_p2p_through_the_host_and_shares_its_links():
    t = presets.pcie_4gpu()
    p = t.path("gpu0", "gpu1")
    assert p.path_class == "p2p-pcie" and "cpu0" in p.nodes
    # A P2P copy into gpu1 and an H2D copy into gpu1 share the cpu0->gpu1 link: each gets half.
    sim = Simulation(t)
    sim.transfer("p2p", "gpu0", "gpu1", 2**30)
    sim.transfer("h2d", "host", "gpu1", 2**30)
    r = sim.run()
    link = t.resources()["cpu0->gpu1"]
    # Latencies differ by ~1 us, so both end within a few us of 2S/B, the time to push both through the link.
    for rid in ("p2p", "h2d"):
        assert r[rid].finish_s == pytest.approx(2 * 2**30 / link, abs=5e-6)


def test_unknown_things_are_named():
    with pytest.raises(TopologyError, match="unknown topology preset 'dgx-9000'"):
        presets.get("dgx-9000")
    with pytest.raises(TopologyError, match="unknown endpoint 'gpu9'"):
        presets.h100_1().path("host", "gpu9")
    with pytest.raises(TopologyError, match="not an endpoint"):
        presets.h100_1().path("cpu0", "gpu0")


def test_topology_file_round_trip_gives_same_paths():
    t = presets.hgx_h100(8)
    t2 = topology_from_dict(topology_to_dict(t), "roundtrip.yaml")
    for s, d in [("host0", "gpu3"), ("gpu1", "gpu6"), ("gpu4", "host1"), ("gpu2", "gpu2")]:
        a, b = t.path(s, d), t2.path(s, d)
        assert a.nodes == b.nodes and a.latency_s == pytest.approx(b.latency_s)
        caps, caps2 = t.resources(), t2.resources()
        assert [caps[r] for r, _ in a.resources] == pytest.approx([caps2[r] for r, _ in b.resources])


@pytest.mark.parametrize("name", ["cluster-3x8-h200", "cluster-5x4-leaf-spine"])
def test_a_cluster_written_to_a_file_and_read_back_routes_as_the_preset(name):
    """A NIC's GPU (GPUDirect pairing) travels in the file: without it, routes took any equally short NIC and two
    GPUs shared one (an exported cluster synced at half speed)."""
    t = presets.get(name, calibration=None)
    t2 = topology_from_dict(topology_to_dict(t), "roundtrip.yaml")
    eps = t.endpoints()
    for s in eps:
        for d in eps:
            if s == d and t.kind(s) == "nvme":
                continue  # no copy: an NVMe drive has no memory cap to copy within
            a, b = t.path(s, d), t2.path(s, d)
            assert (a.nodes, a.path_class, a.resources, a.engine) == (b.nodes, b.path_class, b.resources, b.engine)
            assert a.latency_s == pytest.approx(b.latency_s)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["components"]["node0.gpu0"].update(gpu="node0.gpu1"), "only a NIC is paired with a GPU"),
    (lambda d: d["components"]["node0.nic0"].update(gpu="node0.host0"), "'node0.host0' is not a GPU of this file"),
    (lambda d: d["components"]["node0.nic0"].update(gpu="node9.gpu0"), "'node9.gpu0' is not a GPU of this file"),
])
def test_a_nic_paired_with_something_else_than_a_gpu_is_named(mutate, match):
    d = topology_to_dict(presets.get("cluster-2x8", calibration=None))
    mutate(d)
    with pytest.raises(TopologyError, match=match):
        topology_from_dict(d, "bad.yaml")


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["links"][0].update(GBps=-5), "must be > 0"),
    (lambda d: d["components"].update(x={"kind": "warp-drive"}), "unknown kind 'warp-drive'"),
    (lambda d: d["links"].append({"between": ["gpu0", "nowhere"], "kind": "pcie"}), "unknown component 'nowhere'"),
    (lambda d: d["components"].update(lonely={"kind": "gpu", "model": "H100"}), "not connected"),
])
def test_bad_topology_files_are_named(mutate, match):
    d = topology_to_dict(presets.h100_1())
    mutate(d)
    with pytest.raises(TopologyError, match=match):
        topology_from_dict(d, "box.yaml")


@pytest.mark.parametrize("fields", [{"gen": 4, "links": 18}, {"GBps": 400}])
def test_a_misspelled_link_kind_is_named_as_unknown_whatever_else_the_link_gives(fields):
    """Without GBps a misspelled kind used to read as a missing field ("a 'nvlnk' link needs GBps")."""
    d = topology_to_dict(presets.h100_1())
    d["links"].append({"between": ["gpu0", "host0"], "kind": "nvlnk", **fields})
    with pytest.raises(TopologyError, match=r"links\[\d+\]\.kind: unknown kind 'nvlnk' \(known: pcie, nvlink, dram"):
        topology_from_dict(d, "box.yaml")
    del d["links"][-1]["kind"]
    with pytest.raises(TopologyError, match=r"\.kind: missing \(known: pcie"):
        topology_from_dict(d, "box.yaml")


def test_a_file_component_without_its_figures_gets_the_specs_defaults():
    """The defaults of `dram_GiB`, `dram_GBps` and a NIC's `Gbps` are the specs' (the file had its own copies)."""
    from fabricsim.hwmodels.specs import HostDRAMSpec, NICSpec

    t = topology_from_dict({"components": {"host0": {"kind": "host"}, "cpu0": {"kind": "cpu"}, "nic0": {"kind": "nic"}},
                            "links": [{"between": ["host0", "cpu0"], "kind": "dram", "GBps": 200},
                                      {"between": ["nic0", "cpu0"], "kind": "pcie"}]}, "box.yaml")
    assert t.graph.nodes["host0"]["spec"] == HostDRAMSpec() and t.graph.nodes["nic0"]["spec"] == NICSpec()


HGX_TOPO_M = """\
\tGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID
GPU0\t X \tNV18\tNV18\tNV18\tPIX\t0-47\t0\t\tN/A
GPU1\tNV18\t X \tNV18\tNV18\tPIX\t0-47\t0\t\tN/A
GPU2\tNV18\tNV18\t X \tNV18\tSYS\t48-95\t1\t\tN/A
GPU3\tNV18\tNV18\tNV18\t X \tSYS\t48-95\t1\t\tN/A
NIC0\tPIX\tPIX\tSYS\tSYS\t X

Legend:

  X    = Self
  NV#  = Connection traversing a bonded set of # NVLinks
"""

PAIR_TOPO_M = """\
        GPU0    GPU1    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      NV18    0-31    0               N/A
GPU1    NV18     X      0-31    0               N/A
"""


def test_nvidia_smi_import_builds_switch_and_sockets():
    t = topology_from_topo_m(HGX_TOPO_M, gpu="H100")
    assert sorted(t.gpus()) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert "nvswitch" in t.path("gpu0", "gpu3").nodes
    assert t.path("host0", "gpu2").nodes[-2] in ("cpu1",)
    assert "pcisw0" in t.path("gpu0", "nic0".replace("nic0", "host0")).nodes  # GPU0 sits behind the PIX switch
    pair = topology_from_topo_m(PAIR_TOPO_M, gpu="H200")
    assert pair.path("gpu0", "gpu1").nodes == ("gpu0", "gpu1")


def test_nvidia_smi_import_rejects_garbage():
    with pytest.raises(TopologyError, match="GPU0"):
        topology_from_topo_m("hello world")


def _profile(**over):
    d = {"format_version": 1, "id": "test-h100x1", "machine": "nvidia-h100-x1", "gpu_model": "H100", "gpus": 1,
         "paths": {"h2d": {"latency_s": 8e-6, "bandwidth_Bps": 50e9, "discipline": "fifo",
                           "size_efficiency": [[4096, 0.5], [1 << 20, 1.0]]}},
         "caps": [{"name": "host-d2h", "Bps": 20e9, "classes": ["d2h"]}]}
    d.update(over)
    return d


def test_calibration_sets_latency_cap_discipline_and_caps():
    t = presets.h100_1().with_calibration(profile_from_dict(_profile()))
    p = t.path("host", "gpu0", 1 << 30)
    assert p.latency_s == 8e-6 and p.rate_cap_Bps == 50e9 and p.engine == "gpu0.ce.h2d"
    assert t.path("host", "gpu0", 4096).rate_cap_Bps == pytest.approx(25e9)
    sim = Simulation(t)
    sim.transfer("a", "host", "gpu0", 1e9)
    sim.transfer("b", "host", "gpu0", 1e9)
    sim.transfer("c", "gpu0", "host", 1e9)
    r = sim.run()
    assert r["a"].finish_s == pytest.approx(8e-6 + 1e9 / 50e9)
    assert r["b"].finish_s == pytest.approx(2 * (8e-6 + 1e9 / 50e9))  # fifo: in turn
    assert r["c"].finish_s == pytest.approx(t.path("gpu0", "host").latency_s + 1e9 / 20e9)


def test_calibrated_link_capacity_raises_every_link_of_its_kind():
    base = presets.get("h200-2", calibration=None)
    pcie = base.resources()["cpu0->gpu0"]
    prof = profile_from_dict({**_profile(gpu_model="H200", gpus=2, paths={}, caps=[]),
                              "links": {"pcie": pcie * 1.02, "nvlink": 400e9, "net": 1e9}})
    t = base.with_calibration(prof)
    res = t.resources()
    for a, b in (("cpu0", "gpu0"), ("gpu0", "cpu0"), ("cpu0", "gpu1"), ("gpu1", "cpu0")):
        assert res[f"{a}->{b}"] == pytest.approx(pcie * 1.02)
    assert res["gpu0->gpu1"] == res["gpu1->gpu0"] == pytest.approx(400e9)
    assert res["host0->cpu0"] == base.resources()["host0->cpu0"]  # other kinds untouched; 'net' absent: ignored
    assert base.resources()["cpu0->gpu0"] == pcie  # the preset itself is not changed
    sim = Simulation(t)
    sim.transfer("a", "host", "gpu0", 1e9)
    assert sim.run()["a"].finish_s == pytest.approx(t.path("host", "gpu0").latency_s + 1e9 / (pcie * 1.02))


def test_calibrated_link_capacity_scales_narrower_links_of_the_kind():
    base = presets.get("hgx-h200-8", calibration=None)
    res = base.resources()
    pcie = [(k, v) for k, v in res.items() if "->" in k and base.graph.edges[tuple(k.split("->"))]["kind"] == "pcie"]
    widest = max(v for _, v in pcie)
    prof = profile_from_dict({**_profile(gpu_model="H200", gpus=8, paths={}, caps=[]), "links": {"pcie": widest * 1.1}})
    got = base.with_calibration(prof).resources()
    for k, v in pcie:
        assert got[k] == pytest.approx(v * 1.1)


def test_profile_optional_fields_round_trip_and_legacy_files_still_read(tmp_path):
    from fabricsim.hwmodels.calibration import CollectiveParams, SoftwareCost, load_profile

    d = {**_profile(), "links": {"pcie": 56e9},
         "collectives": {"broadcast": {"bus_Bps": 370e9, "fixed_s": 1e-5, "size_efficiency": [[1 << 20, 0.5],
                                                                                              [1 << 30, 1.0]],
                                       "fitted_on": ["nccl-broadcast-1M"]}},
         "software_costs": {"cuda_ipc": {"open": {"fixed_s": 3e-4, "per_byte_s": 1e-13}}}}
    p = profile_from_dict(d)
    assert p.links == {"pcie": 56e9}
    assert p.collective("broadcast") == CollectiveParams(370e9, 1e-5, ((1 << 20, 0.5), (1 << 30, 1.0)),
                                                         ("nccl-broadcast-1M",))
    assert p.collective("broadcast").rate_cap(1 << 25) == pytest.approx(370e9 * 0.75)
    assert p.collective("all_gather") is None
    assert p.software_costs["cuda_ipc"]["open"] == SoftwareCost(3e-4, 1e-13)
    p.save(tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == p
    # version 1 without the optional fields: empty, and not written back
    plain = profile_from_dict(_profile())
    assert not plain.links and not plain.collectives and not plain.software_costs
    assert not {"links", "collectives", "software_costs"} & set(plain.to_dict())
    # files written before the fields existed kept NCCL and IPC fits under provenance
    legacy = profile_from_dict({**_profile(), "provenance": {
        "collectives": {"nccl": {"fixed_cost_s": 2e-5, "rate_cap_Bps": 380e9, "fitted_on": ["b1"],
                                 "per_op": {"all_gather": {"fixed_cost_s": 3e-5, "rate_cap_Bps": 280e9}}}},
        "software_costs": {"cuda_ipc": {"open": {"fixed_s": 4e-4, "per_byte_s": 0.0}}}}})
    assert legacy.collective("broadcast") == CollectiveParams(380e9, 2e-5, (), ("b1",))
    assert legacy.collective("all_reduce").bus_Bps == 380e9
    assert legacy.collective("all_gather") == CollectiveParams(280e9, 3e-5)
    assert legacy.software_costs["cuda_ipc"]["open"].cost(1 << 30) == 4e-4


@pytest.mark.parametrize("over,match", [
    ({"format_version": 99}, "unknown profile format_version 99"),
    ({"gpu_model": "H200"}, "made for 1x H200"),
    ({"paths": {"warp": {}}}, "unknown path class"),
    ({"paths": {"h2d": {"bandwidth_Bps": -1}}}, "must be > 0"),
    ({"links": {"warp": 1e9}}, r"links\.warp: unknown link kind"),
    ({"links": {"pcie": 0}}, r"links\.pcie: must be > 0"),
    ({"links": {"pcie": float("inf")}}, r"links\.pcie: expected a number"),
    ({"links": [1e9]}, "links: expected a mapping"),
    ({"collectives": {"gossip": {"bus_Bps": 1e9}}}, r"collectives\.gossip: unknown collective"),
    ({"collectives": {"broadcast": {"fixed_s": 1e-5}}}, r"collectives\.broadcast: expected a mapping with 'bus_Bps'"),
    ({"collectives": {"broadcast": {"bus_Bps": 1e9, "fixed_s": -1}}}, r"broadcast\.fixed_s: must be >= 0"),
    ({"collectives": {"broadcast": {"bus_Bps": 1e9, "size_efficiency": [[2, 1], [1, 1]]}}}, "sorted by size"),
    ({"software_costs": {"cuda_ipc": {"open": {"per_byte_s": 1e-13}}}}, r"cuda_ipc\.open: expected a mapping"),
    ({"software_costs": {"cuda_ipc": {"open": {"fixed_s": -1e-3}}}}, "costs must be >= 0"),
])
def test_bad_profiles_are_named(over, match):
    with pytest.raises(CalibrationError, match=match):
        presets.h100_1().with_calibration(profile_from_dict(_profile(**over)))


@pytest.mark.parametrize("machine,preset,gpu", [("h100x1", "h100-1", "H100"), ("h200x2", "h200-2", "H200")])
def test_import_of_the_measured_machines_matches_their_presets(machine, preset, gpu):
    """The real `nvidia-smi topo -m` text (with its terminal escape codes) committed by validate."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "validate" / "data" / machine / "topo_m.txt").read_text()
    imported = topology_from_topo_m(text, gpu=gpu)
    ref = presets.get(preset, calibration=None)
    assert sorted(imported.gpus()) == sorted(ref.gpus())
    for a in ref.gpus():
        for b in ref.gpus():
            assert imported.path(a, b).path_class == ref.path(a, b).path_class
        assert imported.path("host0", a).path_class == "h2d"


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["components"]["gpu0"].update(modle="H200"), "components.gpu0: unknown key 'modle'"),
    (lambda d: d["links"][0].update(latncy_us=5), r"links\[0\]: unknown key 'latncy_us'"),
    (lambda d: d.update(capz=[]), "unknown key 'capz'"),
    (lambda d: d["links"].append({"between": ["gpu0", "gpu0"], "kind": "pcie"}), "two different components"),
    (lambda d: d["links"].append({"between": ["gpu0", "cpu0"], "kind": "pcie", "gen": "five"}),
     r"links\[\d+\]\.gen: expected a whole number"),
    (lambda d: d["links"].append({"between": ["gpu0", "nvme0"], "kind": "pcie", "gen": 9}),
     r"links\[\d+\]: unknown PCIe generation 9"),
    (lambda d: d["components"]["gpu0"].update(model="B900"), "components.gpu0.model: unknown GPU model 'B900'"),
    (lambda d: d.update(aliases=["host"]), "aliases: expected a mapping"),
    (lambda d: d.update(caps=5), "caps: expected a list"),
    (lambda d: d.update(pinned=[{"src": "gpu0", "dst": "host0", "via": "cpu0"}]), r"pinned\[0\]\.via: expected a list"),
])
def test_typos_and_bad_values_in_topology_files_are_named(mutate, match):
    d = topology_to_dict(presets.h100_1())
    mutate(d)
    with pytest.raises(TopologyError, match=match):
        topology_from_dict(d, "box.yaml")


# Ends with no fitted rate of their own (a calibrated d2d copy has one, so the scale applies to that instead).
@pytest.mark.parametrize(("calibrated", "endpoint"), [(False, "gpu0"), (False, "host0"), (True, "host0")])
@pytest.mark.parametrize("mechanism", ["pageable", "sm"])
def test_a_local_copy_by_an_unfitted_mechanism_scales_its_memory_copy_rate(calibrated, endpoint, mechanism):
    """A local copy crosses no link, so the unfitted-mechanism scale applies to the rate its memory allows (the
    HBM/DRAM cap over the 2 it draws): it once took min() of no links and raised a bare ValueError."""
    from fabricsim.hwmodels.intervals import corner_topology

    slow = corner_topology(presets.get("h200-2") if calibrated else presets.get("h200-2", calibration=None), "slow")
    _, rate_f = slow.unfitted_mechanism_scale[mechanism]
    (mem, coeff), = slow.path(endpoint, endpoint).resources
    assert slow.path(endpoint, endpoint).rate_cap_Bps is None  # no fitted rate: the scale has only memory to act on
    want = slow.resources()[mem] / coeff * rate_f
    for got in (slow.path(endpoint, endpoint, 1 << 20, mechanism),
                slow.path_shape(endpoint, endpoint, mechanism).path(1 << 20)):
        assert got.rate_cap_Bps == pytest.approx(want)
        assert got.nodes == (slow.resolve(endpoint),)
    assert not slow.fits(mechanism, endpoint, endpoint)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"nodes": 2.5}, "nodes: expected a whole number"),
    ({"nodes": float("nan")}, "nodes: expected a whole number"),
    ({"nodes": True}, "nodes: expected a whole number"),
    ({"oversubscription": float("inf")}, "oversubscription must be a finite number"),
    ({"fabric": "leaf-spine", "nodes_per_leaf": 0}, "at least 1 node per leaf, got 0"),
    ({"fabric": "leaf-spine", "spines": 0}, "needs 1 to 32 spines, got 0"),
    ({"fabric": "leaf-spine", "spines": 10**9}, "needs 1 to 32 spines, got 1000000000"),
])
def test_cluster_arguments_are_checked_before_building(kwargs, match):
    """The API takes what the preset names cannot spell: each once ended in TypeError or ZeroDivisionError, or
    (10^9 spines) in building until memory ran out."""
    with pytest.raises(TopologyError, match=match):
        presets.cluster(**kwargs)


@pytest.mark.parametrize("spines, oversubscription", [(2, 1.0), (4, 1.0), (2, 2.0)])
def test_a_leaf_spine_fabric_carries_cross_leaf_traffic_at_its_whole_uplink(spines, oversubscription):
    """Every GPU of leaf 0 writes to its twin on leaf 1 at once: with ECMP spreading the 32 flows over the spines,
    each gets its NIC's rate (over the oversubscription): the closed form latency + bytes / rate. Drawn as separate
    spines, every route took the first one and each flow got half (a quarter with 4 spines)."""
    topo = presets.cluster(8, 8, fabric="leaf-spine", nodes_per_leaf=4, spines=spines,
                           oversubscription=oversubscription)
    sim = Simulation(topo, record_load=False)
    nbytes = 1 << 30
    for k in range(4):
        for g in range(8):
            sim.transfer(f"n{k}g{g}", f"node{k}.gpu{g}", f"node{k + 4}.gpu{g}", nbytes)
    res = sim.run()
    path = topo.path("node0.gpu0", "node4.gpu0")
    nic = topo.resources()["node0.nic0->leaf0"]
    assert ("leaf0->spine", 1.0) in path.resources
    for rec in res.records:
        assert rec.finish_s == pytest.approx(path.latency_s + nbytes / (nic / oversubscription), rel=1e-9)


def _cap_line(text: str, cap: str) -> str:
    return next(line for line in text.splitlines() if line.split()[:1] == [cap])


def test_topo_show_says_a_memory_cap_is_a_fraction_of_the_peak_given_and_why():
    """A host given `dram_GBps: 300` showed a 225 GB/s cap, and an H200 4800 GB/s of HBM beside a 4320 cap, with no
    word of the 75% and 90% the model uses (what copies reach in practice): the figures read like a bug."""
    d = topology_to_dict(presets.h200_1())
    d["components"]["host0"]["dram_GBps"] = 300
    d["components"]["gpu1"] = {"kind": "gpu", "model": "H200"}
    d["links"].append({"between": ["gpu1", "cpu0"], "kind": "pcie"})
    text = topology_from_dict(d, "box.yaml").describe()
    assert "[H200, 140 GiB HBM, 4800 GB/s peak]" in text
    assert _cap_line(text, "host0.dram").endswith(
        "225.0 GB/s  (all classes; 75% of the 300 GB/s peak: what STREAM-like copies reach)")
    assert _cap_line(text, "gpu0.hbm").endswith(
        "4320.0 GB/s  (all classes; 90% of the 4800 GB/s peak: what large device-to-device copies reach)")
    assert _cap_line(text, "gpu1.hbm").endswith("4320.0 GB/s  (all classes; 90% of the 4800 GB/s peak)")  # once


def test_a_cap_no_longer_at_its_derated_rate_does_not_claim_the_fraction():
    """A perturbed copy (hwmodels.intervals) scales its caps: its HBM is no longer 90% of the peak."""
    t = presets.h200_1()
    t.caps["gpu0.hbm"].Bps *= 0.8
    assert _cap_line(t.describe(), "gpu0.hbm").endswith("(all classes)")


def test_readme_states_the_memory_fractions_the_specs_use():
    """The README's "Topology files" section says what fraction of `dram_GBps` and of the HBM peak the caps are;
    the fractions live in hwmodels/specs.py, and the README must follow them."""
    from pathlib import Path

    from fabricsim.hwmodels.specs import GPU_MODELS, GPUSpec, HostDRAMSpec

    text = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "`dram_GBps` is its socket's peak" in text
    assert f"is {HostDRAMSpec.efficiency:.0%} of it, {HostDRAMSpec.efficiency_why};" in text
    (hbm,) = {spec.hbm_efficiency for spec in GPU_MODELS.values()}  # one fraction for every model, as README says
    assert f"{hbm:.0%} of its model's datasheet figure, {GPUSpec.hbm_efficiency_why}." in text


def _network_section(text: str) -> dict[str, str]:
    """`describe`'s network lines by switch name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("network"))
    end = next(i for i, line in enumerate(lines) if line.startswith("links"))
    return {line.split()[0]: line for line in lines[start + 1:end]}


def test_topo_show_says_which_nodes_share_a_leaf_and_how_oversubscribed_it_is():
    """The fabric's facts are sums over thousands of links: `describe` states them per switch, from the graph
    (so a file written from the preset says the same); 6 nodes in leaves of 4 leave the last leaf half full."""
    topo = presets.cluster(6, 8, fabric="leaf-spine", nodes_per_leaf=4, oversubscription=2.0)
    nic = topo.graph.edges["node0.nic0", "leaf0"]["bw"][("node0.nic0", "leaf0")]
    net = _network_section(topo.describe())
    assert "32 NICs of node0-3" in net["leaf0"] and "16 NICs of node4-5" in net["leaf1"]
    assert f"{32 * nic / 1e9:.1f} in; {16 * nic / 1e9:.1f} to spine; 2.00:1" in net["leaf0"]
    assert f"{8 * nic / 1e9:.1f} to spine; 2.00:1" in net["leaf1"] and net["spine"].endswith("to leaf0-1")
    assert _network_section(topology_from_dict(topology_to_dict(topo), "round-trip").describe()) == net
    assert "network" not in presets.get("hgx-h200-8").describe()  # one machine: no network switch


@pytest.mark.parametrize(("name", "machines"), [("cluster-4x8-leaf-spine", "node0-3"),
                                              ("cluster-4x8-leaf-spine-os2", "node0-3"),
                                              ("cluster-1x8-leaf-spine", "node0"), ("cluster-1x1-leaf-spine", "node0")])
def test_topo_show_of_one_leaf_gives_its_spine_no_uplinks_or_ratio(name, machines):
    """With every NIC on one leaf nothing crosses the spine: a leaf's uplink bandwidth and its 2.00:1 meant nothing
    there, so the leaf's line has neither and the spine's says it carries nothing (a file written from the preset
    says the same)."""
    topo = presets.get(name, calibration=None)
    nics = sum(1 for n, k in topo.graph.nodes(data="kind") if k == "nic")
    nic = topo.graph.edges["node0.nic0", "leaf0"]["bw"][("node0.nic0", "leaf0")]
    net = _network_section(topo.describe())
    assert set(net) == {"leaf0", "spine"}
    assert net["leaf0"].split(None, 1)[1] == \
        f"{nics} NIC{'' if nics == 1 else 's'} of {machines}, {nics * nic / 1e9:.1f} in; " \
        "nothing crosses to spine (no other machine's NIC beyond)"
    assert net["spine"].split(None, 1)[1] == "carries nothing: every NIC reaches every other without it"
    assert _network_section(topology_from_dict(topology_to_dict(topo), "round-trip").describe()) == net
    two = _network_section(presets.get("cluster-5x8-leaf-spine-os2", calibration=None).describe())
    assert two["leaf1"].endswith("to spine; 2.00:1") and two["spine"].split()[2:] == ["to", "leaf0-1"]


def test_topo_show_of_one_node_gives_its_rails_no_uplinks_or_ratio():
    """One node's GPUs and memories reach each other without the network: its rails' uplinks to the spine carry
    nothing (they showed '46.0 to spine; 1.00:1'); two nodes' do."""
    net = _network_section(presets.get("cluster-1x8", calibration=None).describe())
    assert net["rail0"].split(None, 1)[1] == "1 NIC of node0, 46.0 in; nothing crosses to spine (no other machine's " \
        "NIC beyond)"
    assert net["spine"].split(None, 1)[1] == "carries nothing: every NIC reaches every other without it"
    two = _network_section(presets.get("cluster-2x8", calibration=None).describe())
    assert two["rail0"].endswith("to spine; 1.00:1")


def _alias_section(text: str) -> list[str]:
    """`describe`'s alias lines (the section is absent where the topology has none)."""
    lines = text.splitlines()
    if "aliases (names a scenario may use for an endpoint):" not in lines:
        return []
    start = lines.index("aliases (names a scenario may use for an endpoint):") + 1
    return [line.strip() for line in itertools.takewhile(lambda line: line.startswith("  "), lines[start:])]


def test_topo_show_lists_a_files_aliases_and_its_default_host(tmp_path, capsys):
    """`topo show FILE` listed components and links but not the names a scenario may use instead (`host`, an
    alias the file wrote): a user could not see what `host` stood for without reading the file or the code."""
    from fabricsim.cli import main

    d = topology_to_dict(presets.get("hgx-h200-8", calibration=None))
    d["aliases"] = {"disk": "nvme0", "fast": "gpu0"}  # no `host`: the file's default one is host0
    (tmp_path / "box.json").write_text(json.dumps(d))
    assert main(["topo", "show", str(tmp_path / "box.json")]) == 0
    assert _alias_section(capsys.readouterr().out) == ["disk -> nvme0", "fast -> gpu0", "host -> host0"]
    # a cluster's per-node aliases are one line of node ranges, not one per node
    assert _alias_section(presets.get("cluster-64x8", calibration=None).describe()) == \
        ["node0-63.host -> node0-63.host0"]
    assert _alias_section(presets.get("hgx-h200-8", calibration=None).describe()) == ["host -> host0", "host1 -> host0"]


def test_topo_show_gives_each_gpu_model_its_own_line():
    """A machine of H100s and H200s was listed as all H100s (the first GPU's model), while its caps said 4800 GB/s
    of HBM for the H200: a user checking a hand-written machine was told the wrong GPU."""
    d = topology_to_dict(presets.get("hgx-h200-8", calibration=None))
    for g in ("gpu0", "gpu1"):
        d["components"][g]["model"] = "H100"
    lines = [line for line in topology_from_dict(d, "mixed").describe().splitlines() if line.startswith("  gpu ")]
    assert lines == ["  gpu          gpu0, gpu1  [H100, 80 GiB HBM, 3350 GB/s peak]",
                     "  gpu          gpu2, gpu3, gpu4, gpu5, gpu6, gpu7  [H200, 140 GiB HBM, 4800 GB/s peak]"]


def test_topo_show_gives_a_slow_link_two_significant_digits_not_zero():
    """A 0.01 Gb/s NIC moves 1.25 MB/s (0.001 Gb/s, 125 kB/s, is now refused: below any real link): one decimal
    of GB/s printed it, its leaf's sum and its link as 0.0, a link that carries nothing; fast links keep one
    decimal."""
    topo = presets.get("cluster-2x8-leaf-spine-nic0.01g", calibration=None)
    text = topo.describe()
    nic = topo.graph.edges["node0.nic0", "leaf0"]["bw"][("node0.nic0", "leaf0")]
    assert 0 < nic / 1e9 < 0.01
    assert f" {nic / 1e9:.2g} GB/s " in next(line for line in text.splitlines() if "node0.nic0 <-> leaf0" in line)
    assert f"{16 * nic / 1e9:.2g} in" in _network_section(text)["leaf0"]
    assert " 0.0 GB/s" not in text and " 46.0 GB/s " in presets.get("cluster-2x8", calibration=None).describe()


@pytest.mark.parametrize("rate", [0, -400.0, float("nan"), float("inf"), "400", True])
def test_a_nic_of_no_usable_rate_is_refused_as_a_nic_not_as_a_link(rate):
    """A cluster of 0 Gb/s NICs was refused by the first link built on one ('link node0.nic0<->rail0: bandwidth
    must be > 0'), a name the user never wrote; an infinite rate built a fabric that took no time, and a string a
    bare TypeError."""
    from fabricsim.hwmodels.specs import NICSpec

    for build in (lambda: presets.cluster(2, 8, nic_Gbps=rate), lambda: NICSpec(Gbps=rate)):
        with pytest.raises(TopologyError, match=r"^a NIC's rate must be a finite number of Gb/s > 0, got ") as exc:
            build()
        assert "link" not in str(exc.value)


def test_a_cluster_built_in_python_is_named_after_what_it_is():
    """Its name once ignored model, NIC rate, leaf size and oversubscription: an H200 cluster with 2:1 leaves was
    'cluster-6x8-leaf-spine', the name of another machine, in results and traces."""
    h200 = presets.cluster(4, 8, model="H200")
    assert h200.name == "cluster-4x8-h200"  # the preset's name, spelt as it usually is (rail, H100: unsaid)
    assert presets.get(h200.name).describe() == h200.describe()  # where the settings are a preset's, its name
    assert presets.cluster(4, 8).name == "cluster-4x8" == presets.get("cluster-4x8").name
    odd = presets.cluster(6, 8, fabric="leaf-spine", nodes_per_leaf=2, oversubscription=2.0, nic_Gbps=200.0)
    assert odd.name == "cluster-6x8-leaf-spine-nic200g-leaf2-os2"
    assert presets.cluster(2, 8, name="mine").name == "mine"


@pytest.mark.parametrize("kwargs", [dict(fabric="leaf-spine", nodes_per_leaf=2, oversubscription=2.0, nic_Gbps=200.0),
                                    dict(model="H200", oversubscription=1.5),
                                    dict(fabric="leaf-spine", nodes_per_leaf=3), dict(nic_Gbps=800.0)])
def test_a_cluster_s_name_builds_it_again(kwargs):
    """The name a cluster gets is a preset name: --topology takes it (a trial could not ask the CLI for an
    oversubscribed leaf-spine: only the Python API built one)."""
    built = presets.cluster(6, 8, **kwargs)
    again = presets.get(built.name, calibration=None)
    assert again.name == built.name and again.describe() == built.describe()


def _spellings() -> list[str]:
    """Names `presets.get` accepts for 2x2 clusters: every part said or left unsaid, defaults spelt out, numbers
    written more than one way."""
    out = []
    for fabric in ("", "-rail", "-leaf-spine"):
        leaves = ("", "-leaf4", "-leaf04", "-leaf1", "-leaf2", "-leaf8") if fabric == "-leaf-spine" else ("",)
        for model in ("", "-h100", "-h200"):
            for nic in ("", "-nic400g", "-nic400.0g", "-nic200g", "-nic400.1234567g"):
                for leaf in leaves:
                    for over in ("", "-os1", "-os1.0", "-os2", "-os2.5", "-os02.50"):
                        out.append(f"cluster-2x2{fabric}{model}{nic}{leaf}{over}")
    return [*out, "cluster-02x02", "cluster-2x02-rail"]


def test_every_spelling_of_a_cluster_gets_the_name_of_its_shortest():
    """Results are stored by topology name: 'cluster-4x8-rail-h200' and 'cluster-4x8-h200' are one machine, so
    they get one name, the shortest spelling of that machine (as `presets.cluster` names it), and that name builds
    the same machine again; a NIC rate the name spells exactly (400.1234567, not rounded to 400.123: another
    machine)."""
    machines: dict[str, set[str]] = {}  # a machine (what describe says after its name) -> the names it was given
    spelt: dict[str, str] = {}
    for name in _spellings():
        topo = presets.get(name, calibration=None)
        machine = topo.describe().split("\n", 1)[1] + repr(sorted(  # describe rounds rates to 0.1 GB/s
            (a, b, sorted(d["bw"].items())) for a, b, d in topo.graph.edges(data=True)))
        machines.setdefault(machine, set()).add(name)
        spelt[name] = topo.name
        assert presets.canonical_name(name) == topo.name, name  # the name without building the machine
        again = presets.get(topo.name, calibration=None)
        assert again.name == topo.name and again.describe() == topo.describe(), name
        assert sorted(again.graph.edges(data="bw")) == sorted(topo.graph.edges(data="bw")), name
    for names in machines.values():
        assert {spelt[n] for n in names} == {min(names, key=lambda n: (len(n), n))}, sorted(names)
    assert spelt["cluster-2x2-rail-h200"] == presets.get("cluster-2x2-h200").name == "cluster-2x2-h200"
    assert spelt["cluster-2x2-rail-h100-nic400.0g-os1.0"] == "cluster-2x2"
    assert spelt["cluster-2x2-leaf-spine-h200-nic400.1234567g-leaf1-os02.50"] == \
        "cluster-2x2-leaf-spine-h200-nic400.1234567g-leaf1-os2.5"


def test_a_leaf_size_on_a_rail_fabric_is_refused():
    with pytest.raises(TopologyError, match="leaf-spine"):
        presets.get("cluster-4x8-rail-leaf2")
