"""The floors of the house (DESIGN.md) as a contract that import-linter checks: nothing imports upward.

The contract lives in pyproject.toml (``[tool.importlinter]``); the second test proves it bites, by adding an
upward import to a copy of the package and watching the check fail.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(config: Path, package_parent: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT), "--no-cache", str(config)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_nothing_imports_upward():
    result = lint(ROOT / "pyproject.toml", ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "glassformer", copy / "glassformer", ignore=shutil.ignore_patterns("__pycache__"))
    attention = copy / "glassformer" / "nn" / "attention.py"
    attention.write_text(attention.read_text() + "\nfrom glassformer.generation import search  # upward\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = lint(tmp_path / "pyproject.toml", copy, tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "glassformer.nn.attention -> glassformer.generation.search" in result.stdout


@pytest.mark.parametrize("depth", [None, 2, 3])  # modules; glassformer.<floor>; glassformer.<floor>.<module>
def test_the_import_graph_has_no_cycle(depth):
    """No two modules — nor two floors, nor two sub-packages — import each other, directly or around a loop (the
    modules that kept old import paths working made two such loops; they are gone)."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[dev]')")
    import networkx

    graph = grimp.build_graph("glassformer")

    def node(module: str) -> str:
        return module if depth is None else ".".join(module.split(".")[:depth])

    imports = networkx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if node(module) != node(imported):
                imports.add_edge(node(module), node(imported))
    loops = [sorted(c) for c in networkx.strongly_connected_components(imports) if len(c) > 1]
    assert loops == [], f"import cycles: {loops}"


def test_nn_holds_the_parts_and_no_backend():
    """nn/ is the reference parts: no C or C++ source, no ctypes, no kernel table (those are glassformer.backends)."""
    nn = ROOT / "src" / "glassformer" / "nn"
    assert not [p.name for p in nn.rglob("*") if p.suffix in (".c", ".h", ".cpp", ".so")]
    for path in nn.rglob("*.py"):
        text = path.read_text()
        assert "ctypes" not in text and "register_kernel" not in text and "KERNELS" not in text, path.name
