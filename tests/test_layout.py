"""The package's layout rules, checked on the source (issue #13's "done means"):

- no import cycles between benchmark's modules, counting imports inside functions too (a lazy import hides a cycle,
  it does not remove it);
- no module longer than 800 lines;
- no module importing another module's private (`_name`) names;
- argparse lives in the CLI (`benchmark/__main__.py`) only: library modules take typed arguments.

    pytest tests/test_layout.py     # a few hundred ms: it parses the sources, imports nothing
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"
MAX_LINES = 800
CLI = "benchmark.__main__"


def _module_name(path: Path) -> str:
    parts = ("benchmark",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every `import`/`from ... import` anywhere in the module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.append((base, alias.name, node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    """Module -> the benchmark modules it imports (`from benchmark import x` counts as importing benchmark.x)."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for module, imported, _ in _imports(name):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
            if target in MODULES and target != name and target != "benchmark":
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself: a two-module cycle and a three-module cycle are found, a chain is not."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(edges)) == [["a", "b"], ["c", "d", "e"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_edges())
    assert not cycles, "import cycles (counting imports inside functions): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_at_most_800_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{MODULES[name].relative_to(PACKAGE.parent)} has {lines} lines (> {MAX_LINES}): split it"
    )


def test_no_module_imports_private_names_of_another():
    offences = [
        f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {imported} from {module}"
        for name in MODULES
        for module, imported, line in _imports(name)
        if module.startswith("benchmark")
        and module != name
        and imported.startswith("_")
        and not imported.startswith("__")
    ]
    assert not offences, "\n".join(offences)


PARSER_CALLS = {"add_argument", "add_parser", "add_subparsers", "add_argument_group", "add_mutually_exclusive_group"}


def _builds_a_parser(name: str) -> bool:
    tree = ast.parse(MODULES[name].read_text())
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PARSER_CALLS
        for node in ast.walk(tree)
    )


def test_only_the_cli_parses_arguments():
    users = [
        str(MODULES[name].relative_to(PACKAGE.parent))
        for name in MODULES
        if name != CLI and (any(module == "argparse" for module, _, _ in _imports(name)) or _builds_a_parser(name))
    ]
    assert not users, f"argparse outside benchmark/__main__.py: {users} (library modules take typed arguments)"
