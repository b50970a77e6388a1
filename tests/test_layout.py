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


def module_name(path) -> str:
    """``elmojax/train/step.py`` -> ``elmojax.train.step`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each elmojax module -> the elmojax modules it imports anywhere in the file: at the top, under
    ``TYPE_CHECKING`` or inside a function (``from elmojax import parallel`` names ``elmojax.parallel``)."""
    modules = {module_name(p): p for p in MODULES}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = (found & modules.keys()) - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [{"a", "b", "c"}]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_about():
    """No import cycle among elmojax's modules, even through ``TYPE_CHECKING`` or a function's
    import: the train state and the steps both import StepConfig, neither imports the other."""
    graph = import_graph()
    assert "elmojax.train.state" in graph["elmojax.train.step"]  # the graph sees real imports
    assert "elmojax.train.step" not in graph["elmojax.train.state"]
    cycles = import_cycles(graph)
    assert cycles == [], cycles
