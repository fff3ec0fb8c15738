"""int8_linear on CPU (numba) for a few rows of x: the decoding step's matrix-vector products.

Glossary: x (R, in) float32 rows; W (out, in) int8; scale (out,) float32; bias (out,) or empty.
    y[r, o] = scale[o] * sum_j x[r, j] float32(W[o, j]) + bias[o]
A decoding step reads each weight once per token, so its time is the time to read the weights: one
byte per weight here, four in float32. Each int8 weight is converted to float32 in the inner loop
(vectorized: load 8/16 bytes, sign-extend, convert, fused multiply-add), four output rows at a time
so that each x[j] load serves four weights; sums in float32 (fastmath reassociates them into
vector lanes). x is not rounded: only the weight differs from the float layer.
Threads: below PARALLEL_ABOVE weights (every projection of a 130M model but the LM head) the kernel
runs on the calling thread, where waking numba's threads would cost more than it saves; above it,
blocks of output rows run on numba's threads (at most torch's thread count: ssmkit.ops._numba).
More than MAX_ROWS rows (a prompt) or a gradient: the reference tier (dequantize + float matmul).
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.numerics import ZERO

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32,), priority=20)
MAX_ROWS = 16
PARALLEL_ABOVE = 1 << 22  # weights (out x in)
BLOCK = 256  # output rows per parallel job


def unsupported_reason(x, *weight_scale_bias) -> str | None:
    bias = weight_scale_bias[2] if len(weight_scale_bias) > 2 else None
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > MAX_ROWS:
        return f"the numba int8 kernel takes at most {MAX_ROWS} rows of x (decoding), got {rows}"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, bias)):
        return "the numba int8 kernel has no backward"
    return None


@njit(fastmath=True, inline="always")
def _out_rows(x, W, scale, bias, o0, o1, y):
    """y[:, o0:o1] for the output rows o0 <= o < o1."""
    n_in = W.shape[1]
    for r in range(x.shape[0]):
        o = o0
        while o + 4 <= o1:
            a0, a1, a2, a3 = ZERO, ZERO, ZERO, ZERO
            for j in range(n_in):
                xj = x[r, j]
                a0 += xj * np.float32(W[o, j])
                a1 += xj * np.float32(W[o + 1, j])
                a2 += xj * np.float32(W[o + 2, j])
                a3 += xj * np.float32(W[o + 3, j])
            y[r, o] = a0 * scale[o]
            y[r, o + 1] = a1 * scale[o + 1]
            y[r, o + 2] = a2 * scale[o + 2]
            y[r, o + 3] = a3 * scale[o + 3]
            o += 4
        for oo in range(o, o1):
            acc = ZERO
            for j in range(n_in):
                acc += x[r, j] * np.float32(W[oo, j])
            y[r, oo] = acc * scale[oo]
        if bias.size:
            for oo in range(o0, o1):
                y[r, oo] += bias[oo]


@njit(fastmath=True)
def _gemv_serial(x, W, scale, bias, y):
    _out_rows(x, W, scale, bias, 0, W.shape[0], y)


@njit(parallel=True, fastmath=True)
def _gemv_parallel(x, W, scale, bias, y):
    n_out = W.shape[0]
    for blk in prange((n_out + BLOCK - 1) // BLOCK):
        _out_rows(x, W, scale, bias, blk * BLOCK, min(n_out, blk * BLOCK + BLOCK), y)


def int8_linear(x, weight, scale, *, bias=None):
    n_out, n_in = weight.shape
    x2 = x.detach().reshape(-1, n_in)
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    y = torch.empty(x2.shape[0], n_out)  # small: not ssmkit.ops._numba.buffers.out_tensor (~7 us a call)
    if os.environ.get("SSMKIT_POISON") == "1":
        y.fill_(float("nan"))
    b = np.empty(0, np.float32) if bias is None else bias.detach().float().numpy()
    kernel = _gemv_parallel if weight.numel() > PARALLEL_ABOVE else _gemv_serial
    kernel(x2.numpy(), weight.contiguous().numpy(), scale.contiguous().numpy(), b, y.numpy())
    return y.reshape(*x.shape[:-1], n_out)
