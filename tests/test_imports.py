"""The server package's import graph: no cycles, and nothing at the bottom imports from the rooms above it.

Every module under ``server/greentrack`` is parsed with ``ast``; every ``import`` counts, at module level, inside
functions and under ``if TYPE_CHECKING:`` alike (a type-only cycle is still a function in the wrong room).
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``; a package's
``__init__`` re-exporting its own modules is the one edge that does not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "server" / "greentrack"

#: Modules at the bottom of the flow: units, errors, settings, the record, the meters. They may import each other
#: (without cycles) but nothing from the rooms that use them.
BOTTOM = ("greentrack.units", "greentrack.errors", "greentrack.carbon", "greentrack.config", "greentrack.record",
          "greentrack.energy")
ABOVE_BOTTOM = ("greentrack.report", "greentrack.lsp", "greentrack.store", "greentrack.engine", "greentrack.pipeline",
                "greentrack.cli", "greentrack.display", "greentrack.doctor", "greentrack.calibrate",
                "greentrack.serve")


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Resolve ``from .x import y`` relative to ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``greentrack`` modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    out: set[str] = set()
    for name in found:
        while name and name not in known:  # `import greentrack.energy.monitor as m` → the module itself
            name = name.rpartition(".")[0]
        if name and name != module and name.startswith("greentrack"):
            out.add(name)
    if is_package:  # a package importing its own submodules (re-exports) is not an upward edge
        out = {n for n in out if not n.startswith(module + ".")}
    return out


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    modules = discover(root)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle through them."""
    tarjan = _Tarjan(graph)
    for v in sorted(graph):
        if v not in tarjan.index:
            tarjan.visit(v)
    return [_one_cycle(graph, c) for c in sorted(tarjan.components)]


class _Tarjan:
    """Tarjan's algorithm over ``graph``: depth-first numbers, the stack of open modules, the components found."""

    def __init__(self, graph: dict[str, set[str]]) -> None:
        self.graph = graph
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on_stack: set[str] = set()
        #: The components of more than one module, each sorted.
        self.components: list[list[str]] = []
        self.counter = 0

    def visit(self, v: str) -> None:
        """Number ``v``, visit what it imports, and close its component when ``v`` is the component's root."""
        self.index[v] = self.low[v] = self.counter
        self.counter += 1
        self.stack.append(v)
        self.on_stack.add(v)
        for w in sorted(self.graph.get(v, ())):
            if w not in self.index:
                self.visit(w)
                self.low[v] = min(self.low[v], self.low[w])
            elif w in self.on_stack:
                self.low[v] = min(self.low[v], self.index[w])
        if self.low[v] == self.index[v]:
            self._close_component(v)

    def _close_component(self, root: str) -> None:
        """Pop the stack down to ``root``; what was above it is one component, kept when it is a cycle."""
        component: list[str] = []
        while True:
            w = self.stack.pop()
            self.on_stack.discard(w)
            component.append(w)
            if w == root:
                break
        if len(component) > 1:
            self.components.append(sorted(component))


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete path start → … → start inside one strongly connected component (breadth first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def _is_in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} → {dst}"
        for src, targets in graph.items() if _is_in(src, BOTTOM)
        for dst in targets if _is_in(dst, ABOVE_BOTTOM)
    )


def test_no_import_cycle_in_the_server_package() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_bottom_modules_import_nothing_above_them() -> None:
    found = upward_imports(import_graph())
    assert not found, "upward imports:\n" + "\n".join(found)


def test_the_checker_sees_cycles_of_every_kind(tmp_path: Path) -> None:
    """Module-level, function-level, relative and TYPE_CHECKING imports all make edges."""
    pkg = tmp_path / "greentrack"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from greentrack.sub import a\n")  # re-export: not an edge
    (pkg / "sub" / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import greentrack.c\n")
    (pkg / "c.py").write_text("from greentrack.sub.a import f\n")
    (pkg / "d.py").write_text("from greentrack import c\n")
    graph = import_graph(pkg)
    assert graph["greentrack.sub.a"] == {"greentrack.sub.b"}
    assert graph["greentrack.sub.b"] == {"greentrack.c"}
    assert graph["greentrack.d"] == {"greentrack.c"}
    assert graph["greentrack.sub"] == set()
    assert cycles(graph) == [["greentrack.c", "greentrack.sub.a", "greentrack.sub.b", "greentrack.c"]]
    assert upward_imports({"greentrack.config": {"greentrack.report.carbon"}}) == [
        "greentrack.config → greentrack.report.carbon"
    ]
