"""Choose the implementation of an op: "reference", "cpu" or "triton", by capability.

Each op is a package `ssmkit.ops.<op>` whose backends are modules `reference.py`, `cpu.py`,
`triton/` (any may be missing). A backend module exports a function named like the op, taking the
op's normalized arguments (documented in the op's `reference.py`), and may export
`unsupported_reason(*tensors) -> str | None` saying why it cannot run on these inputs
(wrong device, dtype, missing package). The reference runs anything: it is the fallback of last resort.

`backend="auto"` (or the environment variable SSMKIT_BACKEND, which replaces "auto") picks the
fastest backend that can run the inputs: triton on CUDA, cpu on CPU, else the reference with a
one-time warning. Asking for a backend by name that cannot run raises, saying why.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable

import torch

BACKENDS = ("auto", "reference", "cpu", "triton")
_warned: set[tuple[str, str]] = set()


def _load(op: str, backend: str):
    try:
        return importlib.import_module(f"ssmkit.ops.{op}.{backend}")
    except ModuleNotFoundError as e:
        # Only "this backend module does not exist" means unavailable; a missing third-party package
        # inside an existing module must be reported by its unsupported_reason, not swallowed here.
        if e.name == f"ssmkit.ops.{op}.{backend}":
            return None
        raise


def unsupported_reason(op: str, backend: str, *tensors: torch.Tensor) -> str | None:
    """Why `backend` cannot run `op` on these tensors, or None if it can."""
    module = _load(op, backend)
    if module is None or not hasattr(module, op):
        return f"ssmkit has no {backend} backend for {op}"
    check = getattr(module, "unsupported_reason", None)
    return check(*tensors) if check is not None else None


def resolve(op: str, backend: str, *tensors: torch.Tensor) -> tuple[str, Callable]:
    """Return (backend name, function) that runs `op` on `tensors` (the first one's device decides)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("SSMKIT_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(
                f"environment variable SSMKIT_BACKEND must be one of {list(BACKENDS)}, got {backend!r}"
            )
    if backend != "auto":
        reason = unsupported_reason(op, backend, *tensors)
        if reason is not None:
            raise RuntimeError(f"{op}: backend={backend!r} cannot run these inputs: {reason}")
        return backend, getattr(_load(op, backend), op)

    device = tensors[0].device.type if tensors else "cpu"
    fast = "triton" if device == "cuda" else "cpu" if device == "cpu" else None
    if fast is not None:
        reason = unsupported_reason(op, fast, *tensors)
        if reason is None:
            return fast, getattr(_load(op, fast), op)
        key = (op, reason)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"ssmkit.ops.{op}: using the slow reference path ({reason})", RuntimeWarning, stacklevel=3
            )
    return "reference", getattr(_load(op, "reference"), op)


def available_backends(op: str, *tensors: torch.Tensor) -> dict[str, str | None]:
    """{backend: None if it can run these tensors else the reason}, for `ssmkit info` and tests."""
    return {b: unsupported_reason(op, b, *tensors) for b in BACKENDS if b != "auto"}
