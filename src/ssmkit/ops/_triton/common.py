"""Triton device functions shared by the kernels (imports Triton: load only from a kernel module)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + e^x), as torch.nn.functional.softplus (linear above 20)."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def silu(x):
    return x * sigmoid(x)


@triton.jit
def silu_grad(x):
    """d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x)."""
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def dot(a, b, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with operands in DTYPE and a float32 result (tensor cores for 16-bit DTYPE; exact IEEE
    products for float32). UPCAST: multiply the DTYPE values in float32 (Triton's interpreter cannot
    multiply bfloat16; see ssmkit.ops._triton.dot_upcast)."""
    a = a.to(DTYPE)
    b = b.to(DTYPE)
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if DTYPE == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def scan_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 then h -> a2 h + b2: the associative operator of a linear recurrence."""
    return a1 * a2, a2 * b1 + b2


def tl_dtype(dtype):
    """The Triton dtype of a torch floating dtype."""
    import torch

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]
