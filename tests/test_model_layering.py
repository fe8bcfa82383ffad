"""models/ and baselines/ stay plain PyTorch, and functions stay short everywhere.

models/ and baselines/ import torch, numpy, the standard library and each other, never the harness
(which imports them); and no function in harness/, models/, baselines/ or search_spaces/ is longer
than 60 lines (from its `def` line to its last line): a longer one is a driver calling named steps.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for package in ("models", "baselines") for p in (ROOT / package).rglob("*.py"))
SHORT_FUNCTIONS = sorted(p for package in ("harness", "models", "baselines", "search_spaces")
                         for p in (ROOT / package).rglob("*.py"))
ALLOWED = {"torch", "numpy", "models", "baselines", "__future__"}
MAX_LINES = 60


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_imports_only_torch_numpy_and_the_standard_library(path):
    roots = imported_roots(ast.parse(path.read_text(), str(path)))
    foreign = {r for r in roots if r not in ALLOWED and r not in sys.stdlib_module_names}
    assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


@pytest.mark.parametrize("path", SHORT_FUNCTIONS, ids=[str(p.relative_to(ROOT)) for p in SHORT_FUNCTIONS])
def test_no_function_over_60_lines(path):
    tree = ast.parse(path.read_text(), str(path))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, f"{path.relative_to(ROOT)}: {long}"
