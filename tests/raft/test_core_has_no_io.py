"""The Raft core does no I/O: no trio, sockets, files, clocks or global randomness.

DESIGN.md: ``boutique/raft`` is sans-I/O, so a whole cluster can run inside the
deterministic simulator. This test reads the source, so the rule cannot rot quietly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import boutique.raft

RAFT_DIR = Path(boutique.raft.__file__).parent
ALLOWED_MODULES = {
    "__future__",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "heapq",
    "itertools",
    "random",  # only for the type of the injected generator; see below
    "typing",
}


def _sources() -> list[Path]:
    files = sorted(RAFT_DIR.glob("*.py"))
    assert len(files) >= 8, files
    return files


def test_core_imports_only_pure_modules() -> None:
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside boutique.raft
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in ALLOWED_MODULES, f"{path.name} imports {name}"


def test_core_uses_no_global_randomness() -> None:
    """``random.Random`` may be named (the injected generator's type), nothing else."""
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{path.name} uses random.{node.attr}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                if isinstance(func.value, ast.Name) and func.value.id == "random":
                    raise AssertionError(f"{path.name} calls random.{func.attr}()")


def test_checker_itself_can_fail(tmp_path: Path) -> None:
    bad = "import socket\nimport time\n"
    tree = ast.parse(bad)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported - ALLOWED_MODULES == {"socket", "time"}
