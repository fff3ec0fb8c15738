"""The source stays in small pieces (issue 15): no module over ~350 lines, no function over ~80, so a
module or a function is read in one sitting. Numba and Triton kernels (functions decorated with a
`*jit`) are exempt: their length is their loop nest."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ssmkit"
MAX_MODULE, MAX_FUNCTION = 360, 80


def _is_kernel(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name.endswith("jit"):
            return True
    return False


def test_modules_and_functions_are_small():
    too_big = []
    for path in sorted(SRC.rglob("*.py")):
        src = path.read_text()
        rel = path.relative_to(SRC.parent)
        if src.count("\n") > MAX_MODULE:
            too_big.append(f"{rel}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    too_big.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_big, too_big
