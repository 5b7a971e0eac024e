"""The package's shape: private subpackages, imports that point down, no cycles.

The import graph covers module-level and deferred (in-function) imports; imports under
``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "unstall"
TOP_LEVEL_ALLOWED = {
    "__init__.py",
    "__main__.py",
    "_version.py",
    "_exceptions.py",
    "_util.py",
    "_pytest_plugin.py",
    "from_thread.py",
    "asgi.py",
    "py.typed",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, name: str, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "unstall" or m.startswith("unstall.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = _imports(tree, name, modules) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
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
            strongconnect(v)
    return found


def test_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_module_imports_the_package_root() -> None:
    offenders = sorted(name for name, deps in _graph().items() if "unstall" in deps)
    assert offenders == []


def test_private_parts_live_in_subpackages() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.is_file()}
    assert top <= TOP_LEVEL_ALLOWED, sorted(top - TOP_LEVEL_ALLOWED)
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"_offload", "_watch", "_strict", "_report", "_cli", "_plugin"} | (
        folders & {"integrations"}
    )


def test_the_public_surface_is_listed_in_all() -> None:
    import unstall

    # ``annotations`` is the __future__ feature; "@..." names are pytest's rewriting;
    # public submodules imported by someone (unstall.asgi) appear as attributes too.
    public = {
        n
        for n, v in vars(unstall).items()
        if not n.startswith(("_", "@"))
        and n != "annotations"
        and (not isinstance(v, types.ModuleType) or n == "from_thread")
    }
    assert set(unstall.__all__) - {"__version__"} == public
