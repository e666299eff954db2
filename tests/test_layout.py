"""The code's shape: import layers, no cycles, ruff clean, small files and functions.

The contracts are in pyproject.toml ([tool.importlinter]); import-linter checks them on
the real import graph (grimp's, function-level imports included).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "zephyr_local"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = [c for c in config["contracts"] if c["type"] == "layers"]
    return [m.strip() for c in layered for layer in c["layers"]
            for m in layer.replace("|", ":").split(":") if m.strip()]


def test_import_contracts_are_kept():
    from importlinter.application.use_cases import lint_imports
    from importlinter.configuration import configure

    configure()  # what the lint-imports command does first: readers, printer, graph builder
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None,
                        no_logo=True), "an import breaks a layer or makes a cycle (see above)"


def test_every_module_has_a_layer():
    """A new top-level module or package must be placed in a layer, or nothing checks it."""
    placed = set(_layers())
    top = {f"zephyr_local.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    top |= {f"zephyr_local.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert sorted(top - placed) == []
    assert sorted(placed - top) == []  # no stale names either


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                             "zephyr_local", "tests"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:]


def test_no_source_file_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_is_too_long():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert long == {}
