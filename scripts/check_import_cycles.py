"""Find import circles among the package's modules; exit 1 when there is one.

    python scripts/check_import_cycles.py          # prints each circle, or "no import circle"

Walks every ``.py`` file of ``cllm_bench`` and of the folders installed under it
(``tasks/`` -> ``cllm_bench.tasks``, ``baselines/`` -> ``cllm_bench.baselines``,
``trainers/`` -> ``cllm_bench.trainers``, as pyproject's ``package-dir`` maps them) and
reads its imports with :mod:`ast`, without importing anything. Every import counts,
module-level or inside a function (a lazy import still ties the two modules together),
except those under ``if TYPE_CHECKING:``. ``from a import b`` is an edge to ``a.b`` when
that is a module, else to ``a``; relative imports are resolved. A package's ``__init__``
importing its own submodules is not a circle (Python runs the parent first by design),
so edges from a module to its own parent packages are left out.

A circle is a strongly connected component of more than one module (Tarjan's algorithm).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: package name -> source folder (pyproject's package-dir)
PACKAGE_DIRS = {
    "cllm_bench": REPO / "cllm_bench",
    "cllm_bench.tasks": REPO / "tasks",
    "cllm_bench.baselines": REPO / "baselines",
    "cllm_bench.trainers": REPO / "trainers",
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out: dict[str, Path] = {}
    for package, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith(".") for p in parts):
                continue
            name = ".".join([package, *parts])
            if name in out and out[name] != path:  # a folder also mapped as its own package
                continue
            out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import node, skipping ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for cand in candidates:
            while cand and cand not in modules:  # `import a.b.c` of a non-module attribute: the nearest module
                cand = cand.rpartition(".")[0]
            if cand and cand != name and not name.startswith(cand + "."):
                targets.add(cand)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {name: imported_modules(name, path, names) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found, key=lambda c: (-len(c), c))


def main() -> int:
    graph = import_graph()
    found = circles(graph)
    if not found:
        print(f"no import circle among {len(graph)} modules")
        return 0
    for component in found:
        members = set(component)
        edges = [f"  {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        print(f"import circle of {len(component)} modules:\n" + "\n".join(edges))
    return 1


if __name__ == "__main__":
    sys.exit(main())
