"""int8_linear on CPU (numba) for a few rows of x: the decoding step's matrix-vector products.

Glossary: x (R, in) float32 rows; W (out, in) int8; scale (out,) float32; bias (out,) or empty.
    y[r, o] = scale[o] * sum_j x[r, j] float32(W[o, j]) + bias[o]
A decoding step reads each weight once per token, so its time is the time to read the weights: one
byte per weight here, four in float32. The weights come from memory, not cache (a 130M model's int8
weights are ~130 MB a token), so what counts is how fast one core streams them:
  - the rows are read four at a time (a block), converting each int8 weight to float32 in the inner
    loop (vectorized: load 8 bytes, sign-extend, convert, fused multiply-add; each x[j] load serves
    four weights); sums in float32 (fastmath reassociates them into vector lanes);
  - while a block is summed, the next block's cache lines are prefetched (`_prefetch`, LLVM's
    llvm.prefetch). Measured over a whole Mamba-2-130M's distinct matrices (49 of them, 129 MB, one
    thread, loaded 2-core machine): 16.9 ms a token without, 12.8 ms with (~10 GB/s; torch's
    float32 F.linear reads the 516 MB float32 weights in ~37 ms in the same run);
  - the x rows (R <= MAX_ROWS) are looped inside a block, so a block is read from memory once for all.
x is not rounded: only the weight differs from the float layer.
Threads: below PARALLEL_ABOVE weights the kernel runs on the calling thread, where waking numba's
threads would cost more than it saves; above it, the output rows are split into one contiguous range
per thread (at most torch's thread count: ssmkit.ops._numba), each streaming its own range. At the
130M shapes in_proj (2.6M weights), out_proj (1.2M) and the LM head take the threads, x_proj does not.
Measured, 2 threads: hot matrices (an idle machine) 3352x768 0.124 -> 0.055 ms, 768x1536 0.044 ->
0.031 ms; a whole Mamba-2-130M step beside 8 busy processes (benchmarks/int8.py --parallel-above)
1.41x -> 2.06x float32's speed under OpenMP's default waiting, 1.85x -> 1.78x with
OMP_WAIT_POLICY=PASSIVE (the threshold was 2^22 before: the LM head only).
More than MAX_ROWS rows (a prompt) or a gradient: the reference tier (dequantize + float matmul).
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, num_threads, prange
from ssmkit.ops._numba.numerics import ZERO

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32,), priority=20)
MAX_ROWS = 16
PARALLEL_ABOVE = 1 << 20  # weights (out x in)
LINE = 64  # bytes per cache line


def unsupported_reason(x, *weight_scale_bias) -> str | None:
    bias = weight_scale_bias[2] if len(weight_scale_bias) > 2 else None
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > MAX_ROWS:
        return f"the numba int8 kernel takes at most {MAX_ROWS} rows of x (decoding), got {rows}"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, bias)):
        return "the numba int8 kernel has no backward"
    return None


@intrinsic
def _prefetch(typingctx, arr, offset):
    """Prefetch the cache line holding byte `offset` of a C-contiguous int8 array's data (a hint:
    no fault, no effect on results)."""
    sig = types.void(arr, offset)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr.type], fnty)
        # read, keep in every cache level, data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(fastmath=True, inline="always")
def _prefetch_rows(W, o0, o1):
    """Prefetch the rows o0 <= o < o1 of W (clipped to W)."""
    n_out, n_in = W.shape
    for q in range(min(o0, n_out) * n_in, min(o1, n_out) * n_in, LINE):
        _prefetch(W, q)


@njit(fastmath=True, inline="always")
def _out_rows(x, W, scale, bias, o0, o1, y):
    """y[:, o0:o1] for the output rows o0 <= o < o1, four rows of W a block."""
    n_in = W.shape[1]
    o = o0
    while o + 4 <= o1:
        _prefetch_rows(W, o + 4, min(o + 8, o1))
        for r in range(x.shape[0]):
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
    for r in range(x.shape[0]):
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
    _prefetch_rows(W, 0, 4)
    _out_rows(x, W, scale, bias, 0, W.shape[0], y)


@njit(parallel=True, fastmath=True)
def _gemv_parallel(x, W, scale, bias, y, n_jobs):
    n_out = W.shape[0]
    span = ((n_out + n_jobs - 1) // n_jobs + 3) // 4 * 4  # rows per job, whole blocks
    for t in prange(n_jobs):
        o0 = min(n_out, t * span)
        o1 = min(n_out, o0 + span)
        _prefetch_rows(W, o0, o0 + 4)
        _out_rows(x, W, scale, bias, o0, o1, y)


def int8_linear(x, weight, scale, *, bias=None):
    n_out, n_in = weight.shape
    x2 = x.detach().reshape(-1, n_in)
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    y = torch.empty(x2.shape[0], n_out)  # small: not ssmkit.ops._numba.buffers.out_tensor (~7 us a call)
    if os.environ.get("SSMKIT_POISON") == "1":
        y.fill_(float("nan"))
    b = np.empty(0, np.float32) if bias is None else bias.detach().float().numpy()
    args = (x2.numpy(), weight.contiguous().numpy(), scale.contiguous().numpy(), b, y.numpy())
    if weight.numel() > PARALLEL_ABOVE and (n := num_threads()) > 1:
        _gemv_parallel(*args, n)
    else:
        _gemv_serial(*args)
    return y.reshape(*x.shape[:-1], n_out)
