"""The package's shape, checked as CI checks behaviour: no import circles, the layers of
pyproject.toml's import-linter contracts kept, settings readable without torch, modules and
functions small enough to read, and ruff and mypy clean."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "taskvec"
BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _literal_table(node: ast.stmt) -> bool:
    """A module-level constant whose value is a literal table (class names, file layouts)."""
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    if value is None or not isinstance(value, (ast.Tuple, ast.List, ast.Dict, ast.Set)):
        return False
    try:
        ast.literal_eval(value)
    except ValueError:
        return False
    return True


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        tables = sum(node.end_lineno - node.lineno + 1 for node in tree.body if _literal_table(node))
        name = str(path.relative_to(ROOT))
        modules[name] = len(text.splitlines()) - tables
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{name}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return modules, functions


def test_no_module_over_400_lines_and_no_function_over_80():
    modules, functions = _sizes()
    assert {m: n for m, n in modules.items() if n > MAX_MODULE_LINES} == {}
    assert {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES} == {}
    assert len(modules) > 60 and max(functions.values()) > 40  # the walk saw the package


def test_the_size_check_sees_long_code_and_leaves_data_tables_aside(tmp_path):
    long = "def f():\n" + "    x = 1\n" * 90
    assert max(n.end_lineno - n.lineno + 1 for n in ast.walk(ast.parse(long)) if isinstance(n, ast.FunctionDef)) > MAX_FUNCTION_LINES
    table = ast.parse("NAMES = (\n" + '    "a",\n' * 50 + ")\n").body[0]
    code = ast.parse("NAMES = tuple(range(3))\n").body[0]
    assert _literal_table(table) and not _literal_table(code)


def _import_graph():
    grimp = pytest.importorskip("grimp", reason="import-linter (the test extra) brings grimp")
    return grimp.build_graph("taskvec")  # every import: inside functions and under TYPE_CHECKING too


def test_the_import_graph_has_no_circles():
    graph = _import_graph()
    modules = sorted(graph.modules)
    assert len(modules) > 60
    circles = []
    for module in modules:
        for other in graph.find_modules_directly_imported_by(module):
            if other != module and graph.chain_exists(importer=other, imported=module):
                circles.append((module, other, graph.find_shortest_chain(importer=other, imported=module)))
    assert circles == []


def _tool(*args: str) -> subprocess.CompletedProcess:
    executable = BIN / args[0]
    if not executable.exists():
        pytest.fail(f"{args[0]} is not installed in {BIN}: scripts/install.sh --test installs it")
    return subprocess.run([str(executable), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_layers_of_the_import_contracts_hold():
    """pyproject.toml [tool.importlinter]: the layers, top to bottom, and what may not import what."""
    result = _tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_are_clean():
    lint = _tool("ruff", "check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _tool("ruff", "format", "--check", "--no-cache", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_mypy_is_clean_on_the_package():
    result = _tool("mypy", "--cache-dir", os.devnull)
    assert result.returncode == 0, result.stdout + result.stderr


TORCH_BLOCKED = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip", "transformers"):
            raise ImportError(f"{name} is not importable here")

sys.meta_path.insert(0, NoTorch())
from pathlib import Path
import taskvec.config as config
for path in sorted(Path("configs").glob("*.toml")):
    config.load_config(path)
cfg = config.quick(config.with_analyses(config.load_config(None)))
print(len(list(Path("configs").glob("*.toml"))), cfg.train.modes["nonlinear"].lr)
"""


def test_settings_are_read_and_checked_without_torch():
    """`import taskvec.config` and validating every shipped config import no torch (nor the
    model libraries): the settings layer sits below the compute layer."""
    result = subprocess.run([sys.executable, "-c", TORCH_BLOCKED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, lr = result.stdout.split()
    assert int(count) >= 8 and float(lr) == 3e-4
