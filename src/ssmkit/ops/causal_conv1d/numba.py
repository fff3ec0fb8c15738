"""Fused CPU kernels (numba) for the depthwise causal 1-D convolution, forward and backward.

Glossary: x (b, d, l) input; weight w (d, k) the per-channel filter; bias (d,); xp (k-1+l) a channel's
input with the carried state (the previous k-1 inputs, zeros when none) in front; pre = the
convolution before the activation; activation None | "silu".
    pre[t] = bias + sum_j w[j] xp[t + j]          (y = silu(pre) when activation == "silu")
Backward:  dpre[t] = dy[t] silu'(pre[t]) (pre recomputed from x);  dxp[s] = sum_j w[j] dpre[s - j];
dw[j] = sum_t dpre[t] xp[t + j];  dbias = sum_t dpre[t].
Both directions read x (and the output's gradient) where it lies (ssmkit.ops._numba.arrays.rows: in a
Mamba layer a slice of in_proj's output, channels-last) and write in that layout (`rows_like`): the
output channels-last as the projections downstream read it, dx as in_proj's gradient is assembled, so
no transposed copy or strided elementwise op on either side. The forward fuses bias and activation and
keeps nothing but its inputs; the backward recomputes pre (k multiply-adds per element).
Parallel over b x blocks of LANES channels; time in tiles of TILE steps (`load_tile`, `store_tile`).
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.arrays import LANES, TILE, load_tile, rows, rows_like, store_tile
from ssmkit.ops._numba.buffers import poison
from ssmkit.ops._numba.numerics import ONE, ZERO, sigmoid, silu

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), priority=20)


@njit(inline="always")
def _load_block(w, bias, x0, i, c0, cb, wt, bv, win):
    """Channels c0 <= c < c0 + cb of row i into lane-major buffers: taps wt[j, c], bias bv[c], and the
    carried inputs as the first k-1 rows of win (lanes past cb stay zero)."""
    k1 = x0.shape[2]
    for c in range(cb):
        bv[c] = bias[c0 + c]
        for j in range(k1 + 1):
            wt[j, c] = w[c0 + c, j]
        for j in range(k1):
            win[j, c] = x0[i, c0 + c, j]


@njit(inline="always", fastmath=True)
def _pre_row(wt, bv, win, r, out):
    """out[r] = bias + sum_j w[j] xp[r + j], every lane: the convolution before its activation."""
    for c in range(LANES):
        out[r, c] = bv[c]
    for j in range(wt.shape[0]):
        for c in range(LANES):
            out[r, c] += wt[j, c] * win[r + j, c]


@njit(parallel=True, fastmath=True)
def _conv_inference(x, xc0, xcl, x0, w, bias, act, L, y):
    b, d, k1 = x0.shape
    k = k1 + 1
    nblk = (d + LANES - 1) // LANES
    for job in prange(b * nblk):
        i = job // nblk
        c0 = (job % nblk) * LANES
        cb = min(LANES, d - c0)
        win = np.zeros((k1 + TILE, LANES), dtype=np.float32)  # the k-1 inputs before the tile, the tile
        wt = np.zeros((k, LANES), dtype=np.float32)
        bv = np.zeros(LANES, dtype=np.float32)
        yb = np.zeros((TILE, LANES), dtype=np.float32)
        _load_block(w, bias, x0, i, c0, cb, wt, bv, win)
        for t0 in range(0, L, TILE):
            tl = min(TILE, L - t0)
            load_tile(x, xc0, xcl, i, d, L, c0, cb, t0, tl, win[k1:])
            for r in range(tl):
                _pre_row(wt, bv, win, r, yb)
                if act:
                    for c in range(LANES):
                        yb[r, c] = silu(yb[r, c])
            store_tile(y, xcl, i, d, L, c0, cb, t0, tl, yb)
            for j in range(k1):  # the last k-1 inputs of this tile lead the next
                for c in range(LANES):
                    win[j, c] = win[tl + j, c]


@njit(parallel=True, fastmath=True)
def _conv_backward(x, xc0, xcl, x0, w, bias, act, L, dy, dyc0, dycl, dx, dx0, dwp, dbp):
    b, d, k1 = x0.shape
    k = k1 + 1
    nblk = (d + LANES - 1) // LANES
    for job in prange(b * nblk):
        i = job // nblk
        c0 = (job % nblk) * LANES
        cb = min(LANES, d - c0)
        win = np.zeros((k1 + TILE, LANES), dtype=np.float32)  # xp[t0 - k1 + r]: as in _conv_inference
        dp = np.zeros((k1 + TILE, LANES), dtype=np.float32)  # dpre[t0 - k1 + r], zero before t = 0
        dyb = np.zeros((TILE, LANES), dtype=np.float32)
        dxb = np.zeros((TILE, LANES), dtype=np.float32)  # dxp[t0 + r]
        wt = np.zeros((k, LANES), dtype=np.float32)
        dwv = np.zeros((k, LANES), dtype=np.float32)
        bv = np.zeros(LANES, dtype=np.float32)
        dbv = np.zeros(LANES, dtype=np.float32)
        _load_block(w, bias, x0, i, c0, cb, wt, bv, win)
        for t0 in range(0, L, TILE):
            tl = min(TILE, L - t0)
            load_tile(x, xc0, xcl, i, d, L, c0, cb, t0, tl, win[k1:])
            load_tile(dy, dyc0, dycl, i, d, L, c0, cb, t0, tl, dyb)
            for r in range(tl):
                _pre_row(wt, bv, win, r, dxb)  # pre, for now
                if act:
                    for c in range(LANES):
                        sg = sigmoid(dxb[r, c])
                        dp[k1 + r, c] = dyb[r, c] * sg * (ONE + dxb[r, c] * (ONE - sg))
                else:
                    for c in range(LANES):
                        dp[k1 + r, c] = dyb[r, c]
                for c in range(LANES):
                    dbv[c] += dp[k1 + r, c]
                for j in range(k):
                    for c in range(LANES):
                        dwv[j, c] += dp[k1 + r, c] * win[r + j, c]
            for r in range(tl):  # dxp[t0 + r] = sum_j w[j] dpre[t0 + r - j]
                for c in range(LANES):
                    dxb[r, c] = ZERO
                for j in range(k):
                    for c in range(LANES):
                        dxb[r, c] += wt[j, c] * dp[k1 + r - j, c]
            _emit_dxp(dx, xcl, dx0, i, d, L, c0, cb, t0, tl, dxb)
            for j in range(k1):  # the last k-1 inputs and dpre of this tile lead the next
                for c in range(LANES):
                    win[j, c] = win[tl + j, c]
                    dp[j, c] = dp[tl + j, c]
        for q in range(k1):  # dxp[L + q]: only the dpre before L (j > q)
            for c in range(LANES):
                dxb[q, c] = ZERO
            for j in range(q + 1, k):
                for c in range(LANES):
                    dxb[q, c] += wt[j, c] * dp[k1 + q - j, c]
        _emit_dxp(dx, xcl, dx0, i, d, L, c0, cb, L, k1, dxb)
        for c in range(cb):
            dbp[i, c0 + c] = dbv[c]
            for j in range(k):
                dwp[i, c0 + c, j] = dwv[j, c]


@njit(inline="always")
def _emit_dxp(dx, cl, dx0, i, d, L, c0, cb, s0, n, buf):
    """dxp[s0 + r] = buf[r] for r < n: the state's gradient dx0 for s < k-1, dx[s - (k-1)] after."""
    k1 = dx0.shape[2]
    r0 = min(n, max(0, k1 - s0))
    for r in range(r0):
        for c in range(cb):
            dx0[i, c0 + c, s0 + r] = buf[r, c]
    if n > r0:
        store_tile(dx, cl, i, d, L, c0, cb, s0 + r0 - k1, n - r0, buf[r0:])


class _ConvFn(torch.autograd.Function):
    """(x0 (b, d, k-1), x (b, d, l), w (d, k), bias (d,)) -> act(conv + bias) (b, d, l), float32, in x's
    layout (see the module docstring)."""

    @staticmethod
    def forward(ctx, x0, x, w, bias, act):
        y = _inference(x, w, bias, x0, act)
        ctx.save_for_backward(x0, x, w, bias)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, dy):
        x0, x, w, bias = ctx.saved_tensors
        b, d, L = x.shape
        k = w.shape[1]
        xr = rows(x)
        dx, dx_np = rows_like(xr, b, d, L)
        dx0, dwp, dbp = poison((b, d, k - 1)), poison((b, d, k)), poison((b, d))
        _conv_backward(*xr, _array(x0), _array(w), _array(bias), ctx.act == "silu", L, *rows(dy), dx_np,
                       dx0, dwp, dbp)
        T = torch.from_numpy
        return T(dx0), dx, T(dwp).sum(0), T(dbp).sum(0), None


def _array(t):
    return t.detach().to(torch.float32).contiguous().numpy()


def causal_conv1d(x, weight, *, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Fused numba causal conv; normalized arguments as in ssmkit.ops.causal_conv1d.reference."""
    f32 = torch.float32
    b, d, L = x.shape
    k = weight.shape[1]
    if initial_state is None:
        initial_state = x.new_zeros(b, d, k - 1)
    args = (x, weight, bias, initial_state)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)):
        y = _inference(*args, activation).to(x.dtype)
    else:
        bias_ = bias if bias is not None else x.new_zeros(d)
        y = _ConvFn.apply(initial_state.to(f32), x.to(f32), weight.to(f32), bias_.to(f32), activation)
        y = y.to(x.dtype)
    if not return_final_state:
        return y
    # the last k-1 inputs: of x alone when l >= k-1, else the tail of the state followed by x
    if L >= k - 1:
        return y, x[:, :, L - (k - 1):].clone()
    return y, torch.cat([initial_state.to(x.dtype), x], dim=-1)[:, :, L:]


def _inference(x, weight, bias, initial_state, activation):
    """act(conv(x) + bias) by `_conv_inference`, written in x's layout (channels-last for a projection's
    slice, as the projections downstream read it); nothing kept for a backward."""
    b, d, L = x.shape
    xr = rows(x)
    y, y_np = rows_like(xr, b, d, L)
    bias = torch.zeros(d) if bias is None else bias
    _conv_inference(*xr, _array(initial_state), _array(weight), _array(bias), activation == "silu", L,
                    y_np)
    return y


__all__ = ["BACKEND", "causal_conv1d"]
