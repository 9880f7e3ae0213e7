"""The GPU scripts (`scripts/gpu/*.py`) run on a machine this suite never reaches, so a renamed or
moved worker name would only fail there: every name they import from the worker must exist here and
be public, and no script may reach into a private member of the worker's own classes."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts" / "gpu").glob("*.py"))
WORKER = ROOT / "worker" / "dynasparse_worker"


def _worker_imports(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, name) of every `from dynasparse_worker... import name` (also inside functions)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dynasparse_worker"):
            found += [(node.module, alias.name) for alias in node.names]
    return found


def _private_members_of_the_worker() -> set[str]:
    """Names of the worker's private methods and attributes (`def _x`, `self._x = ...`)."""
    names: set[str] = set()
    for path in WORKER.rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"\bdef (_[a-z]\w*)\(", text))
        names.update(re.findall(r"\bself\.(_[a-z]\w*)\b", text))
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_gpu_script_imports_only_public_worker_names_that_exist(script):
    for module, name in _worker_imports(ast.parse(script.read_text())):
        assert not name.startswith("_"), f"{script.name} imports the private {module}.{name}"
        assert hasattr(importlib.import_module(module), name), f"{script.name}: {module}.{name} is gone"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_gpu_script_reaches_into_no_private_member_of_the_worker(script):
    private = _private_members_of_the_worker()
    tree = ast.parse(script.read_text())
    reached = {node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr in private}
    assert not reached, f"{script.name} uses private members {sorted(reached)}: add a public method"


def test_the_scan_knows_the_private_members_a_script_could_reach():
    assert {"_pack", "_prefill", "_capture_graphs", "_gates"} <= _private_members_of_the_worker()
