"""House rules the package's layout keeps: no import loops between its modules, no private names across them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cdcompress"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _module_level_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules imported when ``module`` loads (not inside functions or ``if TYPE_CHECKING``)."""
    found = set()
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.ImportFrom):
                target = _target(module, path, node)
                for alias in node.names:
                    name = f"{target}.{alias.name}"
                    found.add(name if name in modules else target)
    return {name for name in found if name in modules and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import loop in ``graph``, or [] (depth-first search, iterative)."""
    state: dict[str, int] = {}
    for root in graph:
        if state.get(root):
            continue
        path, iterators = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iterators[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iterators.append(iter(sorted(graph[nxt])))
    return []


def test_no_import_loops_between_modules() -> None:
    modules = _modules()
    graph = {name: _module_level_imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 100  # the scan sees the package's imports
    assert _cycle(graph) == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # and would see a loop


def test_no_private_names_imported_across_modules() -> None:
    modules = _modules()
    private = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (target := _target(module, path, node)).startswith("cdcompress"):
                private += [f"{module} imports {target}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__") and target != module]
    assert private == []
