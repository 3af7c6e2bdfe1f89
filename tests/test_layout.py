"""The layout says what the code respects: one import name, layers that import one way, no import circles.

Read from the source with `ast` (nothing is imported), so a new import that breaks a rule fails here with the
file and the line, before anyone sees it in a picture of the house.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder at the repository root -> the package it installs as
LAYERS = {
    "fabricsim": "fabricsim",
    "hwmodels": "fabricsim.hwmodels",
    "simcore": "fabricsim.simcore",
    "workloads": "fabricsim.workloads",
    "harness": "fabricsim.harness",
    "kernels": "fabricsim.kernels",
    "validate": "fabricsim.validate",
    "studies": "fabricsim.studies",
}

# Which layers a layer may import (besides itself and the root error module `fabricsim.errors`).
# validate.gpu runs on GPU machines with torch and without the simulator; validate.fit is the analysis side.
ALLOWED = {
    "fabricsim.hwmodels": set(),
    "fabricsim.simcore": {"fabricsim.hwmodels"},
    "fabricsim.workloads": {"fabricsim.hwmodels", "fabricsim.simcore"},
    "fabricsim.harness": {"fabricsim.hwmodels", "fabricsim.simcore", "fabricsim.workloads"},
    "fabricsim.kernels": set(),
    "fabricsim.validate.gpu": {"fabricsim.kernels", "fabricsim.hwmodels", "fabricsim.validate"},
    "fabricsim.validate.fit": {"fabricsim.hwmodels", "fabricsim.simcore", "fabricsim.workloads",
                               "fabricsim.harness", "fabricsim.validate"},
    "fabricsim.validate": {"fabricsim.validate", "fabricsim.hwmodels"},
}


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    head = LAYERS[parts[0]]
    return ".".join([head, *parts[1:]])


def _sources() -> list[Path]:
    return sorted(p for folder in LAYERS for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported fabricsim module, line, at module level?) for every import in the file."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    # `if TYPE_CHECKING:` imports count too: they never run, but a reader (and `farm-studio look`) sees the tie
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for name in names:
            if name == "fabricsim" or name.startswith("fabricsim."):
                out.append((name, node.lineno, id(node) in top_level))
    return out


def _layer(module: str) -> str:
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return module


def _known(name: str, modules: set[str]) -> str | None:
    """The longest prefix of `name` that is one of our modules (drops `from X import name` of non-modules)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_only_one_top_level_name_is_installed() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    import tomllib

    cfg = tomllib.loads(text)["tool"]["setuptools"]
    assert {p.split(".")[0] for p in cfg["packages"]} == {"fabricsim"}
    assert set(cfg["package-dir"]) == set(LAYERS.values())
    for folder, package in LAYERS.items():
        assert cfg["package-dir"][package] == folder


def test_every_layer_imports_only_what_it_may() -> None:
    bad = []
    for path in _sources():
        mod = _module_of(path)
        mine = _layer(mod)
        if mine not in ALLOWED:  # the root package (CLI) and the bundled studies may import anything
            continue
        for name, line, _ in _imports(path):
            if name == "fabricsim" or name.startswith("fabricsim.errors"):
                continue
            theirs = _layer(name)
            if theirs == mine or (mine.startswith(theirs + ".")):
                continue
            if theirs not in ALLOWED[mine] and not any(theirs.startswith(a + ".") for a in ALLOWED[mine]):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_import_circles_between_modules() -> None:
    """Every import counts, also those inside functions: a circle hidden in a function is still a circle."""
    paths = _sources()
    modules = {_module_of(p) for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in paths:
        mod = _module_of(path)
        for name, _, _ in _imports(path):
            target = _known(name, modules)
            # a package's __init__ importing its own submodules is how packages expose names, not a circle
            if target and target != mod and not target.startswith(mod + "."):
                graph[mod].add(target)
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


@pytest.mark.slow
def test_fabricsim_runs_with_other_packages_named_kernels_and_validate(tmp_path: Path) -> None:
    """Generic names are taken in our users' environments (a `kernels` package ships with LLM tooling):
    with stubs of both first on sys.path, fabricsim still imports its own layers and simulates."""
    for name in ("kernels", "validate"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the other {name} package')\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import fabricsim.kernels.seqlock, fabricsim.validate.cases\n"
        "from fabricsim.cli import main\n"
        f"rc = main(['simulate', {str(ROOT / 'examples/h2d_fanout.yaml')!r}, '--json'])\n"
        "assert rc == 0, rc\n"
        "import kernels\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=240,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    # the last line imports the stub on purpose: it must be the other package, not ours
    assert "the other kernels package" in res.stderr, res.stderr[-2000:]
    assert '"makespan_s"' in res.stdout


@pytest.mark.slow
def test_a_non_editable_install_has_one_name_and_runs_the_bundled_study(tmp_path: Path) -> None:
    """`pip install .` (not editable) run from an empty folder: the wheel installs `fabricsim` alone, ships
    the studies and profiles, and `fabricsim sweep weight_sync` works there (it once said 'no study named')."""
    import importlib.metadata

    isolation = [] if int(importlib.metadata.version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    wheels = tmp_path / "wheels"
    # built from a copy: setuptools writes build/ beside the sources, and a test must not write into the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "results", "plots", "*.egg-info",
                                                             "__pycache__", ".hypothesis", ".*_cache", ".dev*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(src), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("fabricsim-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    top = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    assert top == ["fabricsim"]
    assert {n.split("/")[0] for n in names} == {"fabricsim", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "fabricsim/studies/weight_sync.py" in names and "fabricsim/hwmodels/profiles/h200x2.json" in names
    assert "fabricsim/validate/workload_tensors.json" in names  # the workload suite's GPU side reads it
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", "import fabricsim.simcore as s; print(s.__file__)"], cwd=empty,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.startswith(str(site)), res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "fabricsim.cli", "sweep", "weight_sync", "--limit", "2"], cwd=empty,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert list((empty / "results" / "weight_sync").glob("*.parquet"))
    res = subprocess.run([sys.executable, "-c", "from fabricsim.validate.workload_cases import tensor_list; "
                          "print(len(tensor_list('llama8b')))"], cwd=empty, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and int(res.stdout) > 0, res.stderr[-2000:]
