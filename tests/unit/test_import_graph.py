"""The import graph of src/: no cycle, and the layers stay apart.

Read from the source with :mod:`ast`, not by importing: every ``import`` and ``from ... import`` anywhere in a
module counts, at module level, inside functions or under ``TYPE_CHECKING``. A function-level import still ties
the two modules together; it only hides the cycle until a refactoring moves it to the top. Layers:
``sensor_scoring`` runs where Airflow is not installed (the scorer image, a Batch node), so it never imports
``airflow`` or ``sensor_scoring_airflow``; nothing installed imports ``dev`` or ``tests``, which are not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PROJECT = ("sensor_scoring", "sensor_scoring_airflow")


def module_files() -> dict[str, Path]:
    """Every module under src/ by dotted name (a package by the name of its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = module_files()


def imported_names(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """The absolute names a module imports, with their line: ``from a import b`` names ``a.b`` where that is a
    module of src/ (the import runs it), else ``a``; relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield (child if child in MODULES else base), node.lineno


def top(name: str) -> str:
    return name.split(".")[0]


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name of a package means its ``__init__``)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {target for target, _ in imported_names(name, path) if top(target) in PROJECT}
        unknown = sorted(t for t in targets if t not in MODULES)
        assert not unknown, f"{name} imports {unknown}, which are no modules of src/"
        graph[name] = targets - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [cycle_through(graph, set(component)) for component in components]


def cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle inside a strongly connected component, from its first module back to it (breadth-first)."""
    start = min(component)
    paths = {succ: [start, succ] for succ in sorted(graph[start] & component)}
    queue = list(paths)
    while queue:
        node = queue.pop(0)
        if start in graph[node]:
            return [*paths[node], start]
        for succ in sorted(graph[node] & component):
            if succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError(f"no cycle in {sorted(component)}")  # unreachable for a real component


def forbidden_imports(layer: str, banned: tuple[str, ...]) -> list[str]:
    """``module:line -> name`` for every import from a module of ``layer`` of a name under ``banned``."""
    return [
        f"{name}:{line} -> {target}"
        for name, path in MODULES.items()
        if top(name) == layer
        for target, line in imported_names(name, path)
        if top(target) in banned
    ]


def test_the_graph_is_read_from_src() -> None:
    graph = project_graph()
    assert {"sensor_scoring.cli", "sensor_scoring.storage", "sensor_scoring_airflow.dag"} <= set(graph)
    assert "sensor_scoring.settings" in graph["sensor_scoring.storage"]
    assert "sensor_scoring_airflow.links" in graph["sensor_scoring_airflow.plugin"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_in_src() -> None:
    cycles = find_cycles(project_graph())
    assert not cycles, "import cycles in src/:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


def test_sensor_scoring_never_imports_airflow() -> None:
    found = forbidden_imports("sensor_scoring", ("airflow", "sensor_scoring_airflow"))
    assert not found, "sensor_scoring must run without Airflow, yet:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("layer", PROJECT)
def test_nothing_installed_imports_dev_or_tests(layer: str) -> None:
    found = forbidden_imports(layer, ("dev", "tests"))
    assert not found, "dev/ and tests/ are not installed, yet:\n  " + "\n  ".join(found)
