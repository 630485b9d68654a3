"""The package's import graph, read from the source (every import, those inside functions included):
no module reaches itself through imports, and the library never imports the application."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "peftkit"
# the application: command line, server, run configs and their pipeline, the model catalogue, the
# main job, metrics and plots (the layers are listed in peftkit/__init__.py). Everything else is the
# library, which may not import any of these.
APPLICATION = (
    "peftkit.cli",
    "peftkit.serve",
    "peftkit.pipeline",
    "peftkit.run_config",
    "peftkit.evaluation",
    "peftkit.plotting",
    "peftkit.models",
    "peftkit.demo",
    "peftkit.__main__",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path) -> set[str]:
    """The peftkit modules ``name`` imports (a ``from X import y`` of a submodule ``y`` counts as y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def is_application(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in APPLICATION)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert "peftkit.layer" in GRAPH["peftkit.methods.lora.layer"]
    assert "peftkit.data.cloze" in GRAPH["peftkit.data"]  # package re-exports count
    assert "peftkit.pipeline" in GRAPH["peftkit.cli.train"]  # imports inside functions count
    assert all(is_application(m) or m in MODULES for m in APPLICATION)


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_library_never_imports_the_application():
    bad = {m: sorted(filter(is_application, deps)) for m, deps in GRAPH.items() if not is_application(m)}
    assert {m: deps for m, deps in bad.items() if deps} == {}


def test_packages_re_exporting_submodules_are_not_cycles():
    """A package ``__init__`` importing its own submodules, which import siblings through the package's
    modules (never the package itself), is what the layout relies on."""
    parents = [m for m in GRAPH if MODULES[m].name == "__init__.py"]
    children_importing_parent = [
        (child, parent)
        for parent in parents
        for child in GRAPH
        if child.startswith(parent + ".") and parent in GRAPH[child] and parent != "peftkit"
    ]
    assert children_importing_parent == []


@pytest.mark.parametrize("graph", [{"a": {"b"}, "b": {"a"}, "c": set()}])
def test_a_cycle_is_found(graph):
    assert cycles(graph) == [["a", "b"]]
