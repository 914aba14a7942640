"""Layers point one way: no import cycle among lmtailor's modules, and the bottom layer imports nothing above it.

The graph is read from the source (tests/import_graph.py): top-level, function-level and ``TYPE_CHECKING`` imports
all count, so a cycle cannot hide inside a function.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from import_graph import cycles, import_graph, mutual_pairs, package_graph

SRC = Path(__file__).resolve().parents[1] / "src"

@cache
def _graph() -> dict[str, frozenset[str]]:
    """lmtailor's import graph, read once for the tests below."""
    return {m: frozenset(t) for m, t in import_graph(SRC, "lmtailor").items()}


def _show(component: frozenset[str]) -> str:
    return " <-> ".join(sorted(component))


def test_no_import_cycles():
    found = cycles({m: set(t) for m, t in _graph().items()})
    assert not found, ("import cycles (make one side import the other, or move the shared part down):\n"
                       + "\n".join(sorted(_show(c) for c in found)))


def test_core_imports_nothing_above_it():
    graph = _graph()
    core = {m for m in graph if m == "lmtailor.core" or m.startswith("lmtailor.core.")}
    assert core, "the bottom layer lmtailor.core is missing"
    upward = sorted(f"{m} imports {t}" for m in core for t in graph[m]
                    if t not in core and t not in ("lmtailor", "lmtailor.errors"))
    assert not upward, "lmtailor.core must import nothing of lmtailor above it:\n" + "\n".join(upward)


def test_package_report():
    """A diagnostic, not a check: prints which packages import each other (run with -s to read it)."""
    packages = package_graph({m: set(t) for m, t in _graph().items()})
    pairs = mutual_pairs(packages)
    print(f"\n{len(packages)} packages; {len(pairs)} pairs import each other:")
    for a, b in pairs:
        print(f"  {a} <-> {b}")
    assert "lmtailor.core" in packages  # the graph was read from the right folder


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    """Hand-built package: each import form below must give exactly the edge named in its comment."""
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")  # p.sub -> p.sub.leaf
    (pkg / "sub" / "leaf.py").write_text("from ..top import x\n")  # p.sub.leaf -> p.top
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import p.other\n"  # p.top -> p.other
        "def f():\n    from p.sub import leaf\n")  # p.top -> p.sub, p.sub.leaf
    (pkg / "other.py").write_text("import os\n")
    graph = import_graph(tmp_path, "p")
    assert graph == {"p": set(), "p.sub": {"p.sub.leaf"}, "p.sub.leaf": {"p.top"},
                     "p.top": {"p.other", "p.sub", "p.sub.leaf"}, "p.other": set()}
    # p.sub.leaf -> p.top -> p.sub.leaf is the one cycle; p.sub joins it (p.top -> p.sub -> p.sub.leaf -> p.top)
    assert cycles(graph) == [frozenset({"p.sub", "p.sub.leaf", "p.top"})]


# docs/ARCHITECTURE.md "Layers", bottom to top: a module imports its own layer and the ones below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("core", "errors", "registry", "io", "paths", "runtime", "yaml_limits", "environment", "distributed"),
    ("data", "tasks"),
    ("rundir", "run_lock", "unwritten_rows"),
    ("prompting",),
    ("models", "measure"),
    ("inference", "remote", "retrieval"),
    ("probing",),
    ("augmentation",),
    ("training",),
    ("strategies", "row_plan", "distributed_rows"),
    ("runner", "report", "config", "exit_codes"),
    ("cli", "serve", "export", "examples"),
]
# The one import that points up, said in ARCHITECTURE.md: resolving a model reference tells an endpoint by its form.
UPWARD_ALLOWED = {("lmtailor.models.sources", "lmtailor.remote.reference")}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_import_points_down_the_layers():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = _graph()
    unplaced = sorted({top for m in graph if (top := _top(m)) is not None and top not in layer})
    assert not unplaced, f"place these in LAYERS (and in ARCHITECTURE.md's table): {unplaced}"
    upward = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                    if _top(m) and _top(t) and layer[_top(t)] > layer[_top(m)] and (m, t) not in UPWARD_ALLOWED)
    assert not upward, "imports that point up a layer (move the shared part down):\n" + "\n".join(upward)
