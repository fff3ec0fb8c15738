"""What every Triton tier shares, without importing Triton.

A tier module (`ssmkit.ops.<op>.triton`) is imported by the dispatcher just to read its declaration,
so neither it nor this package imports `triton`: the `@triton.jit` kernels live in private modules
(`ssmkit.ops.<op>._triton_kernels`, `ssmkit.ops._triton.common`) imported inside the functions that
launch them. `import ssmkit` and every CPU path therefore never import Triton.

Triton's interpreter (environment variable TRITON_INTERPRET=1, read when a kernel module is first
imported) runs the same kernels on CPU tensors, one program instance at a time in NumPy: that is how
CI checks them without a GPU. With it set, a Triton tier asked for by name accepts CPU tensors;
"auto" still picks Triton for CUDA tensors only.
"""

from __future__ import annotations

import importlib.util
import os

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton's interpreter is switched on (CPU tensors run the kernels in NumPy)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run these tensors (None if they can): Triton missing, a device
    other than CUDA (CPU is accepted under TRITON_INTERPRET=1), or a dtype other than float32/16, bfloat16."""
    if not installed():
        return "triton is not installed (pip install 'ssmkit[triton]')"
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    for t in tensors:
        if t.device.type == "cpu" and not interpreting():
            return "CPU tensors need Triton's interpreter (environment variable TRITON_INTERPRET=1)"
        if t.device.type not in ("cuda", "cpu"):
            return f"the triton backend runs on cuda tensors, got {t.device}"
        if t.is_floating_point() and t.dtype not in DTYPES:
            got = str(t.dtype).replace("torch.", "")
            return f"the triton backend supports float32, float16, bfloat16, got {got}"
    return None


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A kernel's output buffer: uninitialized, or NaN under SSMKIT_POISON=1 so an unwritten entry shows."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    return out.fill_(float("nan")) if os.environ.get("SSMKIT_POISON") == "1" else out


def pow2(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least) (Triton blocks have power-of-two sizes)."""
    n = max(int(n), least)
    return 1 << (n - 1).bit_length()


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands of `dtype` must be widened to float32 first: Triton's interpreter stores
    bfloat16 as uint16 and multiplies the raw bits, so there the (exact) float32 values are multiplied."""
    return interpreting() and dtype == torch.bfloat16
