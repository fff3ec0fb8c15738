"""Triton's interpreter for the tests: the Triton tiers' kernels run on CPU tensors, in NumPy.

Importing this module imports Triton with TRITON_INTERPRET=1 (Triton reads it when first imported, to
build its library functions for the interpreter), or skips the importing test module when Triton is
not installed. The variable is restored right after, so the rest of the suite does not see it; the
`interpret` fixture sets it again for each test that launches kernels (the Triton tiers accept CPU
tensors only while it is set, and a kernel module imported then is built for the interpreter).
"""

from __future__ import annotations

import os
import sys

import pytest

_already = "triton" in sys.modules
_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'ssmkit[triton]')")
finally:
    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not isinstance(triton.language.standard.sigmoid, InterpretedFunction):
    raise RuntimeError(
        "triton was imported before TRITON_INTERPRET=1 was set"
        + (" (by an earlier import in this process)" if _already else "")
        + ": its library functions are built for a GPU and the interpreter cannot call them"
    )


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("SSMKIT_POISON", "1")                     # unwritten kernel outputs are NaN
    yield
