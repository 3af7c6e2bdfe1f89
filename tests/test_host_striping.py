"""Host memory reaching another machine stripes over its socket's NICs (`Topology._equal_routes`): ECMP's fluid limit,
as a transfer engine spreads a large copy over the NICs near the memory. GPUs keep their own NIC (GPUDirect)."""

from __future__ import annotations

import pytest

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.topology import path_bandwidth_Bps
from fabricsim.simcore import Simulation

RAIL = presets.get("cluster-2x8", calibration=None)
LEAF = presets.get("cluster-2x8-leaf-spine", calibration=None)


def _bw(topo, u: str, v: str) -> float:
    return topo.graph.edges[u, v]["bw"][(u, v)]


def test_a_lone_host_to_host_copy_runs_at_its_sockets_pcie_uplinks_not_one_nic():
    """node0.host0 -> node1.host0: four NICs of socket 0 at each end, behind two PCIe switches; the copy is
    bound by the two CPU -> switch links, closed form latency + bytes / (2 x link), against one NIC before."""
    nbytes = 8 * 2**30
    uplinks = _bw(RAIL, "node0.cpu0", "node0.pcisw0") + _bw(RAIL, "node0.cpu0", "node0.pcisw1")
    nic = _bw(RAIL, "node0.nic0", "rail0")
    assert uplinks < 4 * nic and uplinks > nic  # the PCIe side binds, and striping beats one NIC
    sim = Simulation(RAIL, record_load=False)
    sim.transfer("h2h", "node0.host0", "node1.host0", nbytes)
    res = sim.run()
    path = RAIL.path("node0.host0", "node1.host0")
    assert res["h2h"].finish_s == pytest.approx(path.latency_s + nbytes / uplinks, rel=1e-12)
    assert path_bandwidth_Bps(RAIL, "node0.host0", "node1.host0") == pytest.approx(uplinks, rel=1e-12)


@pytest.mark.parametrize(("topo", "src", "dst"), [(RAIL, "node0.host0", "node1.host0"),
                                                  (RAIL, "node0.host0", "node1.host1"),
                                                  (LEAF, "node1.host1", "node0.gpu3"),
                                                  (LEAF, "node0.gpu3", "node1.host1")])
def test_every_byte_crosses_the_network_once_however_it_is_striped(topo, src, dst):
    """The stripes' coefficients on the links into the network sum to one (bytes conserved), and on the host's
    own memory link the copy draws in full. (A GPU end keeps its NIC; on a leaf-spine the host end has a choice.)"""
    path = topo.path(src, dst)
    host = src if topo.kind(src) == "host" else dst
    machine = host.split(".")[0]
    # the links between the host's machine's NICs and the network, in the copy's direction
    edge = [c for r, c in path.resources if "->" in r and {topo.kind(x) for x in r.split("->")} == {"nic", "net-switch"}
            and any(x.startswith(f"{machine}.") for x in r.split("->"))]
    assert len(edge) > 1 and sum(edge) == pytest.approx(1.0, rel=1e-12)
    assert max(c for r, c in path.resources if r.startswith(f"{host}->") or r.endswith(f"->{host}")) == 1.0


def test_gpus_keep_their_own_nic_and_machine_local_copies_their_route():
    for src, dst in [("node0.gpu2", "node1.gpu5"), ("node0.gpu2", "node0.host0"), ("node0.host1", "node0.gpu7")]:
        path = RAIL.path(src, dst)
        assert all(c == 1.0 for r, c in path.resources if "->" in r), (src, dst)
    gpu_to_host = RAIL.path("node0.gpu2", "node1.host0")
    assert [r for r, _ in gpu_to_host.resources if r.startswith("node0.nic")] == ["node0.nic2->rail2"]


def test_many_host_copies_share_the_nics_without_exceeding_any():
    """Every host of node0 sends to every host of node1 at once: no link or cap over its capacity (the engine's
    invariant), every NIC busy."""
    sim = Simulation(RAIL, record_load=True)
    for a in ("node0.host0", "node0.host1"):
        for b in ("node1.host0", "node1.host1"):
            sim.transfer(f"{a}>{b}", a, b, 2**30)
    res = sim.run()
    util = res.utilisation()
    assert util["utilisation"].max() <= 1 + 1e-9
    nics = util[util.resource.str.match(r"node0\.nic\d->rail")]
    assert nics.resource.nunique() == 8 and (nics.load_Bps > 0).any()


def test_a_mechanism_without_a_fit_scales_the_striped_copys_own_rate():
    """A mechanism the profile lacks scales the copy's slowest hop: for a striped copy that is the tightest of all
    its routes' links at their share (the first route's slowest link alone gave 46 GB/s, not 109.6)."""
    topo = presets.get("cluster-2x8", calibration=None)
    topo.unfitted_mechanism_scale = {"pageable": (1.0, 1.0)}
    uplinks = _bw(topo, "node0.cpu0", "node0.pcisw0") + _bw(topo, "node0.cpu0", "node0.pcisw1")
    assert topo.path("node0.host0", "node1.host0", 2**30, "pageable").rate_cap_Bps == pytest.approx(uplinks)
