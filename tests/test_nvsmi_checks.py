"""`fabricsim topo import` of `nvidia-smi topo -m` text that used to import wrong without a word (a new-user trial):
an unknown link code (read as "no direct link"), more NVLinks than a GPU has, and a matrix whose two halves
disagree. Each is refused with one line naming the cell (row, column) or the GPU; every matrix in the repository
still imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_topology import HGX_TOPO_M

from fabricsim.cli import main
from fabricsim.errors import TopologyError
from fabricsim.hwmodels.nvsmi import topology_from_topo_m

ROOT = Path(__file__).resolve().parent.parent

HGX = HGX_TOPO_M  # a 4-GPU NVSwitch box with one NIC (tests/test_topology.py)


def _matrix(rows: dict[str, list[str]]) -> str:
    """A GPU-only matrix with the given rows (cells in column order), all on NUMA node 0."""
    names = list(rows)
    head = "\t" + "\t".join(names) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    return head + "".join(f"{r}\t" + "\t".join(c) + "\t0-31\t0\t\tN/A\n" for r, c in rows.items())


def _cell(text: str, row: str, col: int, code: str) -> str:
    """`text` with the cell (row, column number col) replaced by `code`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        parts = line.split("\t")
        if parts[0] == row:
            parts[col + 1] = code
            lines[i] = "\t".join(parts)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, match", [
    (_cell(HGX, "GPU1", 2, "FOO"), r"row GPU1, column GPU2: unknown link code 'FOO' \(known: X, SYS, NODE"),
    (_cell(HGX, "NIC0", 2, "nv18"), r"row NIC0, column GPU2: unknown link code 'nv18'"),
    (_cell(_cell(HGX, "GPU0", 1, "NV99"), "GPU1", 0, "NV99"), r"row GPU0, column GPU1: NV99 says 99 NVLinks; a GPU "
                                                                r"has 1 to 18"),
    (_cell(_cell(HGX, "GPU0", 1, "NV0"), "GPU1", 0, "NV0"), r"row GPU0, column GPU1: NV0 says 0 NVLinks"),
    (_cell(HGX, "GPU0", 3, "SYS"), r"row GPU0, column GPU3: 'SYS', but row GPU3, column GPU0: 'NV18'"),
    (_cell(HGX, "NIC0", 0, "SYS"), r"row GPU0, column NIC0: 'PIX', but row NIC0, column GPU0: 'SYS'"),
    (_cell(HGX, "GPU2", 2, "NV18"), r"row GPU2, column GPU2: expected X \(the device itself\), got 'NV18'"),
    (_cell(_cell(HGX, "GPU2", 3, "X"), "GPU3", 2, "X"), r"row GPU2, column GPU3: X \(self\) belongs on the diagonal"),
    (_cell(_cell(HGX, "GPU0", 4, "NV4"), "NIC0", 0, "NV4"), r"row GPU0, column NIC0: NV4 joins a NIC by NVLink"),
])
def test_a_bad_cell_is_refused_naming_it(text, match):
    with pytest.raises(TopologyError, match=match):
        topology_from_topo_m(text)


def test_direct_nvlinks_beyond_a_gpus_count_are_refused():
    """GPU1 with 12 direct links to each of two peers would have 24 (not every pair has NVLink, so this is no
    NVSwitch box)."""
    text = _matrix({"GPU0": [" X ", "NV12", "SYS"], "GPU1": ["NV12", " X ", "NV12"], "GPU2": ["SYS", "NV12", " X "]})
    with pytest.raises(TopologyError, match=r"row GPU1: 24 NVLinks to its peers in all \(NV12 to GPU0, NV12 to "
                                            r"GPU2\), more than the 18 a GPU has"):
        topology_from_topo_m(text)


def test_an_nvswitch_box_with_a_link_down_imports_as_one():
    """GPU0 has a link down: its whole row and column show NV17, every other pair NV18. Not a direct mesh (more links
    than a GPU has): an NVSwitch box where GPU0 reaches the switch over 17 links and the others over 18 (a pair shows
    the fewer of its two). The check that refuses impossible meshes refused this real machine's matrix."""
    text = HGX
    for col in (1, 2, 3):
        text = _cell(_cell(text, "GPU0", col, "NV17"), f"GPU{col}", 0, "NV17")
    t = topology_from_topo_m(text)
    bw = {g: t.graph.edges[g, "nvswitch"]["bw"][(g, "nvswitch")] for g in ("gpu0", "gpu1", "gpu2", "gpu3")}
    assert bw["gpu0"] == pytest.approx(bw["gpu1"] * 17 / 18) and bw["gpu1"] == bw["gpu2"] == bw["gpu3"]


def test_direct_nvlinks_within_a_gpus_count_import():
    """Four A100-like GPUs, each with 6 links to each of its three peers (18 in all) but one pair with 4: a mesh."""
    cells = {f"GPU{i}": ["NV6" if i != j else " X " for j in range(4)] for i in range(4)}
    cells["GPU0"][1] = cells["GPU1"][0] = "NV4"
    t = topology_from_topo_m(_matrix(cells), gpu="A100")
    assert "nvswitch" not in t.graph and t.path("gpu0", "gpu1").nodes == ("gpu0", "gpu1")


def test_the_cli_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text(_cell(HGX, "GPU3", 0, "SYS"))
    assert main(["topo", "import", "t.txt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "t.txt: row GPU0, column GPU3: 'NV18', but row GPU3, column GPU0: 'SYS'" in err


def _repository_matrices() -> list[tuple[str, str]]:
    """Every `nvidia-smi topo -m` text kept in the repository: files, and the probe's JSON field."""
    files = [*ROOT.glob("validate/data/**/topo_m.txt"), *ROOT.glob("benchmarks/results/*/nvidia-smi.txt")]
    found = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted(files) if "GPU0" in p.read_text()]
    for p in sorted(ROOT.glob("validate/data/**/*.json")):
        doc = json.loads(p.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("nvidia_smi_topo_m"), str):
            found.append((f"{p.relative_to(ROOT)}:nvidia_smi_topo_m", doc["nvidia_smi_topo_m"]))
    return found


def test_every_matrix_in_the_repository_still_imports():
    found = _repository_matrices()
    assert len(found) >= 8
    for where, text in [*found, ("HGX", HGX)]:
        t = topology_from_topo_m(text, gpu="H200", name=where)
        assert t.gpus(), where
