"""The package's structure, read from its source with ``ast`` (nothing is imported).

- no import cycle among the package's modules, counting imports inside functions (imports under
  ``if TYPE_CHECKING:`` never run and are left out);
- an import inside a function is a deferred heavy or optional import and says why on its line,
  ``# deferred: <why>``;
- no file over :data:`MAX_FILE_LINES` lines and no function over :data:`MAX_FUNCTION_LINES` lines.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vqflows"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
DEFERRED = re.compile(r"#\s*deferred:\s*\S")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, tuple[Path, list[str], ast.Module]]:
    """Every module of the package: its path, its lines and its syntax tree."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out[_module_name(path)] = (path, text.splitlines(), ast.parse(text, filename=str(path)))
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module):
    """``(node, inside_a_function)`` for every import that can run (not under ``if TYPE_CHECKING:``)."""
    def visit(node: ast.AST, inside: bool):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for other in child.orelse:
                    yield from visit(other, inside)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inside
            yield from visit(child, inside or isinstance(child, FUNCTIONS))

    yield from visit(tree, False)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules) -> set[str]:
    """The package's modules that ``node`` (in module ``name``) imports."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        if node.level:
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # ``from package import module`` imports the module; ``from module import name``, the module
        wanted = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
    found = set()
    for target in wanted:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set().union(*[_targets(name, path, node, modules) for node, _ in _imports(tree)])
            for name, (path, _, tree) in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each back edge a depth-first search meets."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []
    found = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


def test_the_cycle_search_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_say_why_they_are_deferred():
    bare = []
    for path, lines, tree in _modules().values():
        for node, inside in _imports(tree):
            if inside and not any(DEFERRED.search(line) for line in lines[node.lineno - 1:node.end_lineno]):
                bare.append(f"{_where(path, node.lineno)}: {lines[node.lineno - 1].strip()}")
    assert not bare, ("imports inside functions without a '# deferred: <why>' comment (move them to the "
                      "module's top, or say why they must wait):\n" + "\n".join(bare))


def test_no_file_is_too_long():
    long = [f"{_where(path, 1)}: {len(lines)} lines" for path, lines, _ in _modules().values()
            if len(lines) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long)


def test_no_function_is_too_long():
    long = []
    for path, _, tree in _modules().values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{_where(path, node.lineno)}: {node.name}, {size} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
