"""House rules the package's layout keeps: folders are layers, no import cycle of any kind (deferred imports and
name tables included), no private names across modules, no block of code written twice."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cdcompress"

#: The folders of the package, lowest layer first: a module may import its own folder and the ones before it
#: (docs/architecture.md draws the same order). The package ``__init__`` and ``__main__`` are the public surface.
LAYERS = ("core", "data", "surgery", "models", "stylization", "evaluation", "export", "cost", "distill", "tasks", "cli")
#: ``"package.module:attribute"`` in a name table (a registry's built-ins): loaded by name on first lookup.
_TABLE_ENTRY = re.compile(r"^(cdcompress(?:\.\w+)+):[\w.]*")


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _package_of(module: str, path: Path) -> list[str]:
    return module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]


def _relative(module: str, path: Path, name: str, level: int) -> str:
    """The absolute module that ``name`` at relative ``level`` means inside ``module``."""
    package = _package_of(module, path)
    base = package[: len(package) - level + 1]
    return ".".join(base + ([name] if name else []))


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    return _relative(module, path, node.module or "", node.level) if node.level else node.module or ""


def _statement_imports(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Every module an import statement anywhere in the file loads: at module level, inside functions (deferred)
    and under ``if TYPE_CHECKING`` alike."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _target(module, path, node)
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _named_imports(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Modules loaded by name: ``importlib.import_module("...")`` literals, lazy-export maps (``_EXPORTS`` values,
    ``_SUBMODULES``), the CLI's command table and ``"package.module:attribute"`` entries of name tables (in
    f-strings too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.Dict, ast.Tuple)):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            found |= _table_targets(module, path, names, node.value, modules)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found |= _table_targets(module, path, {node.target.id}, node.value, modules)
        elif (entry := _table_entry(node)) is not None:
            found.add(entry)
    return found


def _table_entry(node: ast.AST) -> str | None:
    """The module of a ``"cdcompress.x.y:attribute"`` string (an f-string's literal head too), else None."""
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        node = node.values[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and (match := _TABLE_ENTRY.match(node.value)):
        return match[1]
    return None


def _table_targets(module: str, path: Path, names: set[str], value: ast.expr, modules: dict[str, Path]) -> set[str]:
    package = ".".join(_package_of(module, path))
    if "_EXPORTS" in names and isinstance(value, ast.Dict):
        return {_relative(module, path, v.value.lstrip("."), len(v.value) - len(v.value.lstrip(".")))
                for v in value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    if "_SUBMODULES" in names and isinstance(value, ast.Tuple):
        return {f"{package}.{e.value}" for e in value.elts if isinstance(e, ast.Constant)}
    if "COMMANDS" in names and isinstance(value, ast.Dict):  # command -> (module of this package, attribute, help)
        return {f"{package}.{v.elts[0].value}" for v in value.values
                if isinstance(v, ast.Tuple) and isinstance(v.elts[0], ast.Constant)}
    return set()


def _graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        edges = _statement_imports(module, path, tree, modules) | _named_imports(module, path, tree, modules)
        graph[module] = {e for e in edges if e in modules and e != module}
    return graph


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
                iterators.append(iter(sorted(graph.get(nxt, ()))))
    return []


def test_no_import_cycle_of_any_kind() -> None:
    graph = _graph()
    assert sum(map(len, graph.values())) > 300  # the scan sees the package's imports
    # ... deferred ones (function bodies), name tables (the CLI's commands) and lazy exports included:
    assert "cdcompress.core.budget" in graph["cdcompress.surgery.slim"]  # imported inside Slimming.__post_init__
    assert "cdcompress.models.unet" in graph["cdcompress.models.pair"]  # built-ins registered before a lookup
    assert "cdcompress.cli.distill" in graph["cdcompress.cli.main"]  # the command table
    assert "cdcompress.distill.distiller" in graph["cdcompress"]  # the package's lazy exports
    assert _cycle(graph) == []


def test_the_scan_sees_deferred_and_type_checking_cycles(tmp_path: Path) -> None:
    """Before 2026-12-02 ``models/converters`` and ``models/registry`` imported each other, one of them inside a
    function: the scan above would fail on that pair, and on a loop closed only under TYPE_CHECKING."""
    package = tmp_path / "cdcompress"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "converters.py").write_text("from .registry import RELEASE_VARIANTS\n")
    (package / "models" / "registry.py").write_text(
        "def resolve_model(ref):\n    from .converters import teacher_architecture\n    return teacher_architecture()\n")
    (package / "a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("from .a import A\n")
    graph = _graph(package)
    assert _cycle({m: graph[m] for m in graph if m.startswith("cdcompress.models")}) in (
        ["cdcompress.models.converters", "cdcompress.models.registry", "cdcompress.models.converters"],
        ["cdcompress.models.registry", "cdcompress.models.converters", "cdcompress.models.registry"])
    assert _cycle({"cdcompress.a": graph["cdcompress.a"], "cdcompress.b": graph["cdcompress.b"]}) != []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_folders_are_layers() -> None:
    """A module imports (in any of the ways above) only its own folder and the folders below it, so the tree
    reads as the architecture."""
    graph = _graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)  # every folder has its place
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if m.count(".") >= 2 and d.count(".") >= 2 and rank[d.split(".")[1]] > rank[m.split(".")[1]]]
    assert upward == []


def test_no_private_names_imported_across_modules() -> None:
    modules = _modules()
    private = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (target := _target(module, path, node)).startswith("cdcompress"):
                private += [f"{module} imports {target}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__") and target != module]
    assert private == []


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text with white space folded) of the lines that carry code: no blanks, comments, imports or
    lone punctuation, as a reader comparing two blocks would skip them."""
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = " ".join(line.split())
        if not text or text.startswith(("#", "import ", "from ")) or re.fullmatch(r"[\s()\[\]{},:]*", text):
            continue
        kept.append((number, text))
    return kept


def _repeated_blocks(paths: list[Path], size: int = 6) -> list[str]:
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in paths:
        lines = _code_lines(path)
        for i in range(len(lines) - size + 1):
            window = tuple(text for _, text in lines[i : i + size])
            seen[window].append(f"{path}:{lines[i][0]}")
    return [" ~ ".join(places) for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_written_twice(tmp_path: Path) -> None:
    assert _repeated_blocks(sorted(PACKAGE.rglob("*.py"))) == []
    body = "".join(f"    total += {i} * value\n" for i in range(6))
    (tmp_path / "a.py").write_text(f"def f(value):\n    total = 0\n{body}    return total\n")
    (tmp_path / "b.py").write_text(f"def g(value):\n\n    total = 1\n{body}\n    return -total\n")
    assert len(_repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"])) == 1  # and would see a copy
