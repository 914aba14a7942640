"""The graph of a package's imports of its own modules, read from the source (nothing is imported), and its cycles.

Every import statement counts wherever it sits: at the top of a module, inside a function, or under
``if TYPE_CHECKING:`` (a reader follows all of them). Lazy ``"module:attribute"`` registry strings and
``importlib.import_module`` calls are not imports here: they are the deliberate way to defer a dependency.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

Graph = dict[str, set[str]]


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Return the dotted name of every module of ``package`` under ``src`` (a package is named by its folder)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load: ``from a import b`` loads ``a`` and, if it is a module, ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: ``from . import x`` in a.b.c (a module) means a.b; in package a.b it means a.b too
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(src: Path, package: str) -> Graph:
    """Return, for each module of ``package``, the modules of ``package`` it imports (itself excluded)."""
    modules = module_files(src, package)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in _imported_names(node, name, is_package) if t in modules and t != name)
    return graph


def cycles(graph: Graph) -> list[frozenset[str]]:
    """Return the strongly connected components of more than one module (Tarjan), each a set of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))  # depth is at most the number of modules
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found, key=sorted)


def package_graph(graph: Graph, depth: int = 2) -> Graph:
    """Collapse a module graph to packages (``lmtailor.prompting.formats`` -> ``lmtailor.data`` at depth 2)."""
    packages: Graph = defaultdict(set)
    for source, targets in graph.items():
        a = ".".join(source.split(".")[:depth])
        packages[a]  # a package importing nothing still appears
        for target in targets:
            b = ".".join(target.split(".")[:depth])
            if a != b:
                packages[a].add(b)
    return dict(packages)


def mutual_pairs(graph: Graph) -> list[tuple[str, str]]:
    """Return the pairs of nodes that import each other, each pair once, sorted."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))
