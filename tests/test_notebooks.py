"""Documentation that runs: every notebook in examples/ and every ```python block of README.md.

Notebooks execute headless through nbclient from the repository root (where they expect to run); README
blocks are exec'd in order, in one namespace, inside a temporary directory so they cannot litter the tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def readme_blocks(text: str) -> list[str]:
    """The bodies of ```python fenced blocks, in order."""
    return [m.group(1) for m in FENCE.finditer(text)]


def test_fence_parser_finds_only_python_blocks() -> None:
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python title\nb = a + 1\n```\n"
    assert readme_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkout", "copied-out"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, where: str, tmp_path: Path) -> None:
    """From the checkout, and copied into an empty folder as a user would (no studies/ or examples/ around)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    # The kernel draws with matplotlib's inline backend, which needs no display.
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT if where == "checkout" else tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "examples/ should hold at least one notebook"


# Pages whose ```python blocks run on the CPU in seconds (docs/weight_sync.md's runs in its own test; the
# kernel and KV pages need GPUs or long runs).
DOC_PAGES = ["README.md", "docs/studies.md"]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = readme_blocks((ROOT / page).read_text())
    assert blocks, f"{page} has no ```python blocks"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page} python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - name the block that broke
            pytest.fail(f"{page} python block {i + 1} failed: {type(exc).__name__}: {exc}")


def test_readme_topology_file_example_loads() -> None:
    import re

    import yaml

    from fabricsim.hwmodels.topofile import topology_from_dict

    (block,) = re.findall(r"```yaml\n(name: my-box.*?)```", (ROOT / "README.md").read_text(), re.S)
    topo = topology_from_dict(yaml.safe_load(block), "README.md topology example")
    assert topo.path("gpu0", "gpu1").path_class == "p2p-nvlink"
    assert "host-h2d" in topo.resources()
