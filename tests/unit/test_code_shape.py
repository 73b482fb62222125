"""Size limits that keep the code readable, checked rather than hoped for.

A hand-written product module over MODULE_LINES lines must say in its docstring why it stays
whole (the phrase "stays whole" followed by the reason); no function or method anywhere in the
product, bench/ or scripts/ may be over FUNCTION_LINES lines. Generated modules (proto/*_pb2*)
are exempt. A large room is where bugs hide: split it into named steps instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("proto", "osutil", "security", "manager", "agent", "ovctl")
MODULE_LINES = 600
FUNCTION_LINES = 100


def hand_written(packages: tuple[str, ...]) -> list[Path]:
    return [
        p
        for pkg in packages
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    ]


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function longer than ``limit`` lines."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > limit:
                        out.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def oversized_without_reason(path: Path, source: str, limit: int) -> str | None:
    """Why ``path`` breaks the module rule, or None."""
    lines = source.count("\n") + 1
    if lines <= limit:
        return None
    doc = ast.get_docstring(ast.parse(source)) or ""
    if "stays whole" in doc:
        return None
    return f"{path}: {lines} lines and no 'stays whole' reason in its docstring"


def test_no_oversized_module_without_a_reason() -> None:
    found = [
        why
        for p in hand_written(PRODUCT)
        if (why := oversized_without_reason(p.relative_to(ROOT), p.read_text(), MODULE_LINES))
    ]
    assert not found, "\n".join(found)


def test_no_long_function() -> None:
    found = [
        f"{p.relative_to(ROOT)}:{line}: {name} is {length} lines"
        for p in hand_written((*PRODUCT, "bench", "scripts"))
        for name, line, length in long_functions(p.read_text(), FUNCTION_LINES)
    ]
    assert not found, f"functions over {FUNCTION_LINES} lines:\n" + "\n".join(found)


@pytest.mark.parametrize("n", [3, 4])
def test_the_checks_can_fail(n: int) -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(n))
    src = f'"""doc."""\nclass C:\n    def m(self):\n{body}\n'
    assert long_functions(src, 3) == ([("C.m", 3, n + 1)] if n + 1 > 3 else [])
    assert oversized_without_reason(Path("m.py"), src, 3) is not None
    reasoned = src.replace('"""doc."""', '"""It stays whole: one table."""')
    assert oversized_without_reason(Path("m.py"), reasoned, 3) is None
