"""No function-local import hides an import cycle between gridcharge modules (#14).

A function-local ``from gridcharge.x import y`` is fine to defer a heavy or optional dependency; it is not
fine when moving it to the top of the module would make the import fail because the target (directly or
not) imports this module back. Such cycles are fixed by moving the shared piece into a module both import.
Imports under ``if TYPE_CHECKING:`` are not executed and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for src in sorted(REPO.glob("services/*/src")):
        for path in src.rglob("*.py"):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import name loads (``a.b.c`` may be the attribute ``c`` of module ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(path: Path, module: str, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(target module, line, function-local?) for every executed gridcharge import in ``path``."""
    edges: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    names = [base] + [f"{base}.{a.name}" for a in child.names]
                targets = {_resolve(n, modules) for n in names if n.startswith("gridcharge")} - {None, module}
                edges.extend((t, child.lineno, in_function) for t in sorted(t for t in targets if t))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return edges


def hidden_cycles(modules: dict[str, Path], root: Path = REPO) -> list[str]:
    """Function-local imports whose target imports the importing module back (through any chain)."""
    edges = {m: import_edges(p, m, modules) for m, p in modules.items()}
    graph = {m: {t for t, _, _ in e} for m, e in edges.items()}

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        stack = [start]
        while stack:
            cur = stack.pop()
            if cur == goal:
                return True
            if cur not in seen:
                seen.add(cur)
                stack.extend(graph.get(cur, ()))
        return False

    return sorted(
        f"{modules[m].relative_to(root)}:{line}: function-local import of {t} hides a cycle"
        for m, e in edges.items()
        for t, line, local in e
        if local and reaches(t, m)
    )


def test_no_function_local_import_hides_a_cycle() -> None:
    problems = hidden_cycles(_modules())
    assert problems == [], "\n".join(problems)


def test_the_check_finds_a_hidden_cycle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from gridcharge.b import g\n\ndef f() -> None:\n    g()\n")
    b.write_text("def g() -> None:\n    from gridcharge.a import f\n    f()\n")
    modules = {"gridcharge.a": a, "gridcharge.b": b}
    assert hidden_cycles(modules, tmp_path) == ["b.py:2: function-local import of gridcharge.a hides a cycle"]
    b.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from gridcharge.a import f\n")
    assert hidden_cycles(modules, tmp_path) == []
