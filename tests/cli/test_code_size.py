"""The command and the training package stay in small pieces: no module over ~350 lines, no function
over ~80 (issue 15 item 4), so a subcommand or a training step is read in one sitting."""

from __future__ import annotations

import ast
import os

from tests.cli.cli_process import ROOT

PACKAGES = ("src/ssmkit/cli", "src/ssmkit/training")
MAX_MODULE, MAX_FUNCTION = 350, 80


def _modules():
    for pkg in PACKAGES:
        for d, _, names in os.walk(os.path.join(ROOT, pkg)):
            yield from (os.path.join(d, n) for n in names if n.endswith(".py"))


def test_modules_and_functions_are_small():
    too_big = []
    for path in _modules():
        with open(path) as f:
            src = f.read()
        rel = os.path.relpath(path, ROOT)
        if src.count("\n") > MAX_MODULE:
            too_big.append(f"{rel}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    too_big.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_big, too_big
