"""One decoding step of a whole Mamba or Mamba-2 block on CPU (numba): one call per block and token.

    out = residual + residual_multiplier * out_proj(mixer_step(in_proj(RMSNorm(residual))))

The mixer kernels (ssmkit.ops._numba.decode) leave in_proj, x_proj, dt_proj and out_proj to PyTorch
and the norm and the residual add to the block, so a token makes about fifteen Python-level calls per
layer: ~90 us of dispatch per layer, measured at d_model 64 where the arithmetic is nothing, ~2 ms of
a 24-layer token. Here the matrix-vector products run inside the kernel too (`_rows`: the weight's rows
split over the threads in blocks, four rows per pass, every batch row of a block of rows while those
rows are in cache), and the mixer's state update is decode.py's own code (`_ssu_row`, `_m2_head`).
Weights are read in place (numpy views of the parameters); nothing but small scratch is allocated.

Numerics: decode.py's (the layers' fused step) and the RMSNorm kernel's; the dot products sum in
float32 in another order than PyTorch's GEMV, so results agree with the per-op step to float32 rounding.
For a few batch rows (ssmkit.ops._decode.BLOCK_ROWS): a larger batch is a matrix product, PyTorch's own.
"""

from __future__ import annotations

import numpy as np
from numba import typeof, types

from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.decode import (
    _conv_channel,
    _m2_bc,
    _m2_finish,
    _m2_head,
    _rms_rows,
    _ssu_row,
    array,
    mamba2_prepared,
    mamba_prepared,
)
from ssmkit.ops._numba.numerics import ZERO, silu
from ssmkit.ops.int8_linear.numba import _out_rows as _int8_rows

__all__ = [
    "array", "mamba2_block_", "mamba2_prepared", "mamba_block_", "mamba_prepared", "stack_", "stack_tuple",
]

ROWS_PER_JOB = 32  # weight rows per parallel job


@njit(fastmath=True)
def _rows(W, bias, x, y, r0, r1):
    """y[i, r] = W[r] . x[i] + bias[r] for weight rows r0 <= r < r1 and every batch row i; four rows at
    a time, so each x element loaded feeds four accumulators."""
    n = W.shape[1]
    r = r0
    while r < r1:
        m = min(4, r1 - r)
        w0, w1, w2, w3 = W[r], W[r + min(1, m - 1)], W[r + min(2, m - 1)], W[r + m - 1]
        for i in range(x.shape[0]):
            xi = x[i]
            a0 = a1 = a2 = a3 = ZERO
            for k in range(n):
                xk = xi[k]
                a0 += w0[k] * xk
                a1 += w1[k] * xk
                a2 += w2[k] * xk
                a3 += w3[k] * xk
            acc = (a0, a1, a2, a3)
            for j in range(m):
                y[i, r + j] = acc[j] + (bias[r + j] if bias.size else ZERO)
        r += m


@njit(fastmath=True)
def _matvec(linear, x, y, r0, r1):
    """Rows r0 <= r < r1 of y = x W^T + bias for linear = (W, scale, bias): float32 W (scale empty), or
    int8 W with a float32 scale per row (ssmkit.ops.int8_linear's kernel, its rows streamed the same
    way)."""
    W, scale, bias = linear
    if scale.size:
        _int8_rows(x, W, scale, bias, r0, r1, y)
    else:
        _rows(W, bias, x, y, r0, r1)


@njit(fastmath=True)
def _residual(res, resmul, o, out):
    for i in range(res.shape[0]):
        for c in range(res.shape[1]):
            out[i, c] = res[i, c] + resmul * o[i, c]


@njit(fastmath=True)
def _norm_rows(x, w, eps):
    """RMSNorm over the last dimension, in place, without the float64 mean square's rescue (dt, B and C
    of Falcon-Mamba and Jamba, a few dozen values each); w empty: no weight."""
    for i in range(x.shape[0]):
        ss = 0.0
        for c in range(x.shape[1]):
            ss += np.float64(x[i, c]) * np.float64(x[i, c])
        inv = np.float32(1.0 / np.sqrt(ss / x.shape[1] + eps))
        for c in range(x.shape[1]):
            x[i, c] *= inv * (w[c] if w.size else np.float32(1.0))


@njit(parallel=True, fastmath=True)
def _mamba_block(res, norm_w, norm_eps, resmul, mixer, conv_state, ssm, out):
    lin_in, conv_w, conv_b, lin_x, W_dt, dt_bias, A, D, lin_out, bcdt_eps, dt_w, b_w, c_w = mixer
    b, dm = res.shape
    E, N = A.shape
    R = W_dt.shape[1]
    h = np.empty((b, dm), np.float32)
    _rms_rows(res, norm_w, norm_eps, h)
    xz = np.empty((b, 2 * E), np.float32)  # in_proj: x then z
    u = np.empty((b, E), np.float32)
    nj = (2 * E + ROWS_PER_JOB - 1) // ROWS_PER_JOB
    for j in prange(nj):
        r0, r1 = j * ROWS_PER_JOB, min(2 * E, (j + 1) * ROWS_PER_JOB)
        _matvec(lin_in, h, xz, r0, r1)
        for c in range(r0, min(r1, E)):  # the x channels this job made, through the conv
            for i in range(b):
                u[i, c] = silu(_conv_channel(xz[i, c], conv_state[i], conv_w, conv_b, c))
    x_dbl = np.empty((b, R + 2 * N), np.float32)
    nj = (R + 2 * N + 7) // 8
    for j in prange(nj):
        _matvec(lin_x, u, x_dbl, j * 8, min(R + 2 * N, (j + 1) * 8))
    dt = x_dbl[:, :R].copy()
    B = x_dbl[:, R : R + N].copy().reshape(b, 1, N)
    C = x_dbl[:, R + N :].copy().reshape(b, 1, N)
    if bcdt_eps >= 0:  # Falcon-Mamba (no weights) and Jamba (weights)
        _norm_rows(dt, dt_w, bcdt_eps)
        _norm_rows(B[:, 0], b_w, bcdt_eps)
        _norm_rows(C[:, 0], c_w, bcdt_eps)
    delta = np.empty((b, E), np.float32)
    z = xz[:, E:]
    y = np.empty((b, E), np.float32)
    blk = 64
    nb = (E + blk - 1) // blk
    for job in prange(b * nb):
        i, c0 = job // nb, (job % nb) * blk
        c1 = min(E, c0 + blk)
        for c in range(c0, c1):  # dt_proj for these channels, then their state
            acc = ZERO
            for k in range(R):
                acc += W_dt[c, k] * dt[i, k]
            delta[i, c] = acc
        _ssu_row(ssm, u, delta, A, B, C, D, z, dt_bias, True, i, c0, c1, y)
    o = np.empty((b, dm), np.float32)
    nj = (dm + ROWS_PER_JOB - 1) // ROWS_PER_JOB
    for j in prange(nj):
        _matvec(lin_out, y, o, j * ROWS_PER_JOB, min(dm, (j + 1) * ROWS_PER_JOB))
    _residual(res, resmul, o, out)


@njit(parallel=True, fastmath=True)
def _mamba2_block(res, norm_w, norm_eps, resmul, mixer, conv_state, S, out):
    lin_in, conv_w, conv_b, dt_bias, A_log, D, lo, hi, gnorm_w, gnorm_eps, group, gate, G, lin_out = mixer
    b, dm = res.shape
    _, H, P, N = S.shape
    d_inner = H * P
    h = np.empty((b, dm), np.float32)
    _rms_rows(res, norm_w, norm_eps, h)
    rows = lin_in[0].shape[0]
    zxbcdt = np.empty((b, rows), np.float32)
    nj = (rows + ROWS_PER_JOB - 1) // ROWS_PER_JOB
    for j in prange(nj):
        _matvec(lin_in, h, zxbcdt, j * ROWS_PER_JOB, min(rows, (j + 1) * ROWS_PER_JOB))
    xbc = np.empty((b, d_inner + 2 * G * N), np.float32)
    for i in range(b):
        _m2_bc(zxbcdt, conv_state, conv_w, conv_b, d_inner, 2 * G * N, i, xbc[i])
    y = np.empty((b, d_inner), np.float32)
    for job in prange(b * H):
        i, j = job // H, job % H
        _m2_head(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, S, H, G, N, i, j, xbc[i], y)
    for i in range(b):
        _m2_finish(zxbcdt, gnorm_w, gnorm_eps, group, gate, i, y)
    o = np.empty((b, dm), np.float32)
    nj = (dm + ROWS_PER_JOB - 1) // ROWS_PER_JOB
    for j in prange(nj):
        _matvec(lin_out, y, o, j * ROWS_PER_JOB, min(dm, (j + 1) * ROWS_PER_JOB))
    _residual(res, resmul, o, out)


def mamba_block_(res, state, norm: tuple, resmul: float, mixer: tuple, out):
    """res (b, d_model) float32 -> out (b, d_model) (written); state: the (conv, ssm) arrays, written in
    place; norm: (weight, eps); mixer: `Mamba._block_arrays` (in_proj as (weight, int8 scale or empty,
    bias), conv weight and bias, x_proj likewise, dt_proj's weight, dt bias, A, D, out_proj likewise,
    the dt/B/C norms' eps (-1: none) and weights)."""
    _mamba_block(res, norm[0], norm[1], resmul, mixer, state[0], state[1], out)


def mamba2_block_(res, state, norm: tuple, resmul: float, mixer: tuple, out):
    """As mamba_block_ for Mamba-2; mixer: `Mamba2._block_arrays` (in_proj as (weight, int8 scale or
    empty, bias), then decode.mamba2_prepared's arrays and scalars, then out_proj likewise)."""
    _mamba2_block(res, norm[0], norm[1], resmul, mixer, state[0], state[1], out)


# ---- every block of a model in one call (a plain Mamba or Mamba-2 stack) --------------------------
_mamba_block_raw, _mamba2_block_raw = _mamba_block.kernel, _mamba2_block.kernel  # callable from kernels


@njit(threads=True, fastmath=True)
def _mamba_stack(res, norms, resmul, mixers, states, out, tmp):
    n = len(mixers)
    src = res
    for i in range(n):
        dst = out if (n - 1 - i) % 2 == 0 else tmp  # the last block writes `out`
        _mamba_block_raw(src, norms[i][0], norms[i][1], resmul, mixers[i], states[i][0], states[i][1], dst)
        src = dst


@njit(threads=True, fastmath=True)
def _mamba2_stack(res, norms, resmul, mixers, states, out, tmp):
    n = len(mixers)
    src = res
    for i in range(n):
        dst = out if (n - 1 - i) % 2 == 0 else tmp
        _mamba2_block_raw(src, norms[i][0], norms[i][1], resmul, mixers[i], states[i][0], states[i][1], dst)
        src = dst


def stack_tuple(items) -> tuple | None:
    """`items` (each block's norm or mixer tuple) as one tuple that the stack kernels index by block,
    made once per model; None where the blocks' arrays differ in type (dtype, rank or layout), which a
    tuple indexed at run time cannot hold. A tuple and not a numba typed list: a typed list compiles its
    methods for a new item type in every process (~0.7 s before the first token)."""
    out = tuple(items)
    return out if isinstance(typeof(out), types.UniTuple) else None


def stack_(kernel: str, res, states: tuple, norms, resmul: float, mixers, out):
    """Every block of a plain Mamba (kernel "mamba_block_") or Mamba-2 ("mamba2_block_") stack:
    res (b, d_model) -> out (written); states: a tuple of each block's (conv, ssm) arrays, written in
    place; norms, mixers: `stack_tuple`s of each block's (weight, eps) and mixer tuple (mamba_block_'s)."""
    fn = _mamba_stack if kernel == "mamba_block_" else _mamba2_stack
    fn(res, norms, float(resmul), mixers, states, out, np.empty_like(res))
