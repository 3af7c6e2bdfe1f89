"""Topology files that used to load wrong without a word (a new-user trial): a key given twice, a pinned route that
loops, aliases that name nothing or shadow a component, and numbers YAML 1.1 reads as strings (`1e3`). Each is
refused at load with one line naming the problem and where (exit status 2 in the CLI), or, for the numbers, read
as the number meant, as scenario files do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fabricsim.cli import main
from fabricsim.errors import TopologyError
from fabricsim.hwmodels.fileio import read_yaml
from fabricsim.hwmodels.topofile import load_topology_file, topology_from_dict

BOX = """\
name: box
components:
  host0: {kind: host, dram_GBps: 300, dram_GiB: 1024}
  cpu0: {kind: cpu}
  gpu0: {kind: gpu, model: H100}
  gpu1: {kind: gpu, model: H100}
links:
  - {between: [host0, cpu0], kind: dram, GBps: 230}
  - {between: [gpu0, cpu0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu1, cpu0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu0, gpu1], kind: nvlink, gen: 4, links: 18}
"""

# Two sockets: gpu0 and gpu1 on cpu0, host1 on cpu1.
TWO_SOCKETS = {
    "components": {"host0": {"kind": "host"}, "host1": {"kind": "host"}, "cpu0": {"kind": "cpu"},
                   "cpu1": {"kind": "cpu"}, "gpu0": {"kind": "gpu"}, "gpu1": {"kind": "gpu"}},
    "links": [{"between": ["host0", "cpu0"], "kind": "dram", "GBps": 200},
              {"between": ["host1", "cpu1"], "kind": "dram", "GBps": 200},
              {"between": ["cpu0", "cpu1"], "kind": "socket", "GBps": 60},
              {"between": ["gpu0", "cpu0"], "kind": "pcie"}, {"between": ["gpu1", "cpu0"], "kind": "pcie"}],
}


def _show(tmp_path: Path, name: str, text: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`fabricsim topo show` of a file with `text`: its exit status and its stderr."""
    path = tmp_path / name
    path.write_text(text)
    code = main(["topo", "show", str(path)])
    return code, capsys.readouterr().err


def _refused(tmp_path: Path, name: str, text: str, capsys: pytest.CaptureFixture, *expected: str) -> None:
    code, err = _show(tmp_path, name, text, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in (name, *expected):
        assert part in err, f"{part!r} not in {err!r}"


# ---------------------------------------------------------------------------------------- 1. duplicate keys
@pytest.mark.parametrize("text, key, line, first", [
    (BOX.replace("  gpu1: {kind: gpu, model: H100}\n",
                 "  gpu1: {kind: gpu, model: H100}\n  gpu1: {kind: gpu, model: H200}\n"), "gpu1", 7, 6),
    (BOX.replace("gen: 5, lanes: 16}\n  - {between: [gpu1", "gen: 5, lanes: 16, gen: 4}\n  - {between: [gpu1"),
     "gen", 9, 9),
    (BOX + "links: []\n", "links", 12, 7),
    (BOX.replace("name: box\n", "name: box\nname: other\n"), "name", 2, 1),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys, text, key, line, first):
    _refused(tmp_path, "box.yaml", text, capsys, f"duplicate key '{key}' at line {line} (first on line {first})")


def test_a_key_given_twice_in_a_json_file_is_refused(tmp_path, capsys):
    text = BOX.replace("dram_GiB: 1024", "dram_GiB: 1024, dram_GiB: 2048")
    doc = yaml.safe_load(text)
    raw = json.dumps(doc).replace('"dram_GiB": 2048', '"dram_GiB": 1024, "dram_GiB": 2048')
    _refused(tmp_path, "box.json", raw, capsys, "duplicate key 'dram_GiB'", "kind, dram_GBps, dram_GiB")


def test_merge_keys_are_not_duplicates(tmp_path):
    """An explicit key overriding a merged one (`<<: *base`) is what merge keys are for."""
    text = BOX.replace("  gpu0: {kind: gpu, model: H100}\n  gpu1: {kind: gpu, model: H100}\n",
                       "  gpu0: &g {kind: gpu, model: H100}\n  gpu1: {<<: *g, model: H200}\n")
    (tmp_path / "box.yaml").write_text(text)
    t = load_topology_file(tmp_path / "box.yaml")
    assert t.gpu("gpu1").model == "H200" and t.gpu("gpu0").model == "H100"


@pytest.mark.parametrize("text", ["d: &d {b: 1}\na: {m: &m {<<: *d, b: 3}}\np: {<<: *m}\n",
                                  "d: &d {b: 1}\nx: {<<: &m {<<: *d, b: 3}}\ny: {<<: *m}\n"])
def test_a_mapping_merged_before_it_is_read_is_not_a_duplicate(tmp_path, text):
    """PyYAML flattens a merge source in place: an anchored mapping that overrides a key of its own merge, merged
    somewhere before it was read itself, then held that key twice and was refused as 'duplicate key b' (naming a
    line of another mapping). It reads as PyYAML's own loader reads it."""
    (tmp_path / "f.yaml").write_text(text)
    assert read_yaml(tmp_path / "f.yaml", TopologyError, "file") == yaml.safe_load(text)
    (tmp_path / "g.yaml").write_text(text + "d: 2\n")
    with pytest.raises(TopologyError, match=r"duplicate key 'd' at line 4 \(first on line 1\)"):
        read_yaml(tmp_path / "g.yaml", TopologyError, "file")


# ---------------------------------------------------------------------------------------- 2. pinned routes
def test_a_pinned_detour_that_comes_back_is_refused(tmp_path, capsys):
    doc = {**TWO_SOCKETS, "pinned": [{"src": "gpu0", "dst": "gpu1", "via": ["cpu1"]}]}
    _refused(tmp_path, "box.json", json.dumps(doc), capsys,
             "pinned[0] (gpu0->gpu1)", "visits 'cpu0' twice", "gpu0 > cpu0 > cpu1 > cpu0 > gpu1")


@pytest.mark.parametrize("via, twice", [(["host0", "host0"], "host0"), (["gpu0"], "gpu0"), (["gpu1"], "gpu1")])
def test_a_pinned_route_listing_a_stop_twice_is_refused(via, twice):
    doc = {**TWO_SOCKETS, "pinned": [{"src": "gpu0", "dst": "gpu1", "via": via}]}
    with pytest.raises(TopologyError, match=rf"box.yaml: pinned\[0\] \(gpu0->gpu1\): '{twice}' comes twice"):
        topology_from_dict(doc, "box.yaml")


def test_a_pair_pinned_twice_is_refused():
    """The second pin used to replace the first silently; `host` is `host0` here."""
    doc = {**TWO_SOCKETS, "pinned": [{"src": "host0", "dst": "gpu1", "via": []},
                                     {"src": "host", "dst": "gpu1", "via": ["host1"]}]}
    with pytest.raises(TopologyError, match=r"pinned\[1\]: host0->gpu1 is pinned already by pinned\[0\]"):
        topology_from_dict(doc, "box.yaml")


def test_a_pinned_end_that_is_no_name_is_refused():
    doc = {**TWO_SOCKETS, "pinned": [{"src": ["gpu0"], "dst": "gpu1", "via": []}]}
    with pytest.raises(TopologyError, match=r"pinned\[0\]\.src: expected an endpoint name"):
        topology_from_dict(doc, "box.yaml")


def test_staging_through_memory_is_no_loop():
    """What pins are for (P2P staged through host DRAM, or relayed through a third GPU): the copy lands in the
    memory and leaves it again, crossing the CPU or switch it came through in the other direction."""
    doc = {**TWO_SOCKETS, "pinned": [{"src": "gpu0", "dst": "gpu1", "via": ["host0"]},
                                     {"src": "gpu1", "dst": "gpu0", "via": ["host1"]}]}
    t = topology_from_dict(doc, "box.yaml")
    assert t.path("gpu0", "gpu1").nodes == ("gpu0", "cpu0", "host0", "cpu0", "gpu1")
    assert t.path("gpu1", "gpu0").nodes == ("gpu1", "cpu0", "cpu1", "host1", "cpu1", "cpu0", "gpu0")


# ---------------------------------------------------------------------------------------- 3, 4. aliases
def test_an_alias_to_nothing_is_refused_at_load(tmp_path, capsys):
    _refused(tmp_path, "box.yaml", BOX + "aliases: {host: hostZ}\n", capsys,
             "aliases.host: 'hostZ' is not a component of this file")


def test_an_alias_shadowing_a_component_is_refused(tmp_path, capsys):
    _refused(tmp_path, "box.yaml", BOX + "aliases: {gpu0: gpu1}\n", capsys,
             "aliases.gpu0: 'gpu0' is a component of this file")


def test_a_component_named_host_is_not_shadowed_by_the_default_alias():
    """`host` means `host0` only where no component is called `host`."""
    doc = json.loads(json.dumps(TWO_SOCKETS))
    doc["components"]["host"] = {"kind": "nvme"}
    doc["links"].append({"between": ["host", "cpu1"], "kind": "nvme", "GBps": 7})
    t = topology_from_dict(doc, "box.yaml")
    assert t.resolve("host") == "host"


@pytest.mark.parametrize("kind", ["cpu", "nvme", "gpu"])
def test_the_default_host_alias_is_never_to_something_other_than_host_memory(kind):
    """The default `host` -> `host0` was added after the alias checks: with a CPU named host0 a copy from `host`
    failed at run time ("'host0' is a cpu, not an endpoint"), with an NVMe or a GPU of that name it went there
    without a word. Now it is added only for host memory, before the checks; a scenario's `host` is then unknown,
    and the message lists the endpoints the file has."""
    doc = json.loads(json.dumps(TWO_SOCKETS))
    comps = doc["components"]
    comps["mem0"] = comps.pop("host0")
    comps["host0"] = {"kind": kind} if kind != "gpu" else {"kind": "gpu", "model": "H100"}
    doc["links"][0]["between"] = ["mem0", "cpu0"]
    doc["links"].append({"between": ["host0", "cpu1"], "kind": "pcie" if kind != "nvme" else "nvme", "GBps": 7})
    t = topology_from_dict(doc, "box.yaml")
    assert "host" not in t.aliases
    with pytest.raises(TopologyError, match=r"unknown endpoint 'host' in topology 'box' \(it has "):
        t.path("host", "gpu0")
    assert topology_from_dict(TWO_SOCKETS, "box.yaml").resolve("host") == "host0"  # host memory: the default


def test_aliases_to_components_still_load():
    t = topology_from_dict({**TWO_SOCKETS, "aliases": {"host": "host1", "first": "gpu0"}}, "box.yaml")
    assert t.resolve("host") == "host1" and t.resolve("first") == "gpu0"


# ---------------------------------------------------------------------------------------- 5. numbers as strings
def test_a_number_yaml_reads_as_a_string_counts(tmp_path):
    """YAML 1.1 reads `2e2` (no decimal point) as a string; scenario files take it as the number, and so do
    topology files now."""
    (tmp_path / "box.yaml").write_text(BOX.replace("GBps: 230", "GBps: 2e2").replace("dram_GiB: 1024",
                                                                                    "dram_GiB: '1024'"))
    t = load_topology_file(tmp_path / "box.yaml")
    assert t.graph.edges["host0", "cpu0"]["bw"][("host0", "cpu0")] == 200e9
    assert t.graph.nodes["host0"]["spec"].bytes == 1024 * 2**30


@pytest.mark.parametrize("value, why", [("1e30", "1e+30 is beyond 100000 GB/s"), ("-1e2", "must be > 0"),
                                        ("'inf'", "expected a finite number, got 'inf'"),
                                        ("'nan'", "expected a number, got 'nan'"),
                                        ("'fast'", "expected a number, got 'fast'")])
def test_a_number_as_a_string_meets_the_same_bounds(tmp_path, capsys, value, why):
    _refused(tmp_path, "box.yaml", BOX.replace("GBps: 230", f"GBps: {value}"), capsys, "links[0].GBps", why)
