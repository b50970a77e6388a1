"""The house rules of the package layout, checked on the source so that they cannot drift."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "elmojax"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imported(path) -> set[str]:
    """The top-level names of every module ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_parallel_builds_meshes_and_partition_specs():
    for path in MODULES:
        text = path.read_text()
        if path.name != "parallel.py":
            assert "Mesh(" not in text and "PartitionSpec" not in text, path
    assert "Mesh(" in (PACKAGE / "parallel.py").read_text()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 600, f"{path}: split it by responsibility"


def test_the_host_side_imports_no_jax():
    """``elmojax/data`` is numpy only: the host pipeline runs in threads next to the devices."""
    for path in sorted((PACKAGE / "data").glob("*.py")):
        heavy = {n for n in imported(path) if n.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax")}
        assert not heavy, f"{path} imports {heavy}"


def test_the_library_never_imports_experiments_or_tests():
    for path in MODULES:
        roots = {n.split(".")[0] for n in imported(path)}
        assert not roots & {"experiments", "tests"}, path
