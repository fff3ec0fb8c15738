"""Fused CPU kernels (numba) for the depthwise causal 1-D convolution, forward and backward.

Glossary: x (b, d, l) input; weight w (d, k) the per-channel filter; bias (d,); xp (b, d, k-1+l) the
input with the carried state (the previous k-1 inputs, zeros when none) in front; pre = the
convolution before the activation; activation None | "silu".
    pre[t] = bias + sum_j w[j] xp[t + j]          (y = silu(pre) when activation == "silu")
Backward (per channel, parallel over b x d):  dxp[t + j] += w[j] dpre[t];  dw[j] += dpre[t] xp[t + j].
xp is built inside the autograd Function (x copied into it once: a transposed x by the blocked copy
of ssmkit.ops._numba.arrays, which reads whole cache lines where torch.cat gathers strided elements).
The final state (the last k-1 inputs), the bias and the activation are plain torch ops differentiated
by autograd.
Without autograd (inference) `_conv_inference` fuses bias and activation, reads x where it lies
(ssmkit.ops._numba.arrays.rows: in a Mamba layer the first half of in_proj's output, channels-last) and
writes channels-last, the layout x_proj reads: no copy on either side.
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.arrays import LANES, TILE, as_array, copy_into, load_tile, rows
from ssmkit.ops._numba.buffers import out_tensor, poison
from ssmkit.ops._numba.numerics import ZERO, silu

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), priority=20)


@njit(parallel=True, fastmath=True)
def _conv_forward(xp, w, pre):
    b, d, L = pre.shape
    k = w.shape[1]
    for job in prange(b * d):
        i = job // d
        c = job % d
        for t in range(L):
            acc = ZERO
            for j in range(k):
                acc += w[c, j] * xp[i, c, t + j]
            pre[i, c, t] = acc


@njit(parallel=True, fastmath=True)
def _conv_inference(x, xc0, xcl, x0, w, bias, act, y):
    b, d, k1 = x0.shape
    k = k1 + 1
    L = y.shape[0] // b
    nblk = (d + LANES - 1) // LANES
    for job in prange(b * nblk):
        i = job // nblk
        c0 = (job % nblk) * LANES
        cb = min(LANES, d - c0)
        win = np.zeros((k1 + TILE, LANES), dtype=np.float32)  # the k-1 inputs before the tile, the tile
        wt = np.zeros((k, LANES), dtype=np.float32)
        bv = np.zeros(LANES, dtype=np.float32)
        yb = np.zeros((TILE, LANES), dtype=np.float32)
        for c in range(cb):
            bv[c] = bias[c0 + c]
            for j in range(k):
                wt[j, c] = w[c0 + c, j]
            for j in range(k1):
                win[j, c] = x0[i, c0 + c, j]
        for t0 in range(0, L, TILE):
            tl = min(TILE, L - t0)
            load_tile(x, xc0, xcl, i, d, L, c0, cb, t0, tl, win[k1:])
            for r in range(tl):
                for c in range(LANES):
                    yb[r, c] = bv[c]
                for j in range(k):
                    for c in range(LANES):
                        yb[r, c] += wt[j, c] * win[r + j, c]
                if act:
                    for c in range(LANES):
                        yb[r, c] = silu(yb[r, c])
            for r in range(tl):
                seg = y[i * L + t0 + r, c0: c0 + cb]
                for c in range(cb):
                    seg[c] = yb[r, c]
            for j in range(k1):  # the last k-1 inputs of this tile lead the next
                for c in range(LANES):
                    win[j, c] = win[tl + j, c]


@njit(parallel=True, fastmath=True)
def _conv_backward(xp, w, dpre, dxp, dw):
    b, d, L = dpre.shape
    k = w.shape[1]
    for job in prange(b * d):
        i = job // d
        c = job % d
        for t in range(L + k - 1):  # dxp[s] = sum_j w[j] dpre[s - j], 0 <= s - j < L
            acc = ZERO
            for j in range(k):
                tt = t - j
                if 0 <= tt < L:
                    acc += w[c, j] * dpre[i, c, tt]
            dxp[i, c, t] = acc
        for j in range(k):
            acc = ZERO
            for t in range(L):
                acc += dpre[i, c, t] * xp[i, c, t + j]
            dw[i, c, j] = acc


class _ConvFn(torch.autograd.Function):
    """(x0 (b, d, k-1), x (b, d, l), w (d, k)) -> pre (b, d, l), float32; xp = x0 ‖ x built here."""

    @staticmethod
    def forward(ctx, x0, x, w):
        b, d, L = x.shape
        k = w.shape[1]
        xp = poison((b, d, k - 1 + L))
        copy_into(xp[:, :, : k - 1], x0)
        copy_into(xp[:, :, k - 1:], x)
        w_np = as_array(w)
        pre = poison((b, d, L))
        _conv_forward(xp, w_np, pre)
        ctx.arrs = (xp, w_np)
        return torch.from_numpy(pre)

    @staticmethod
    def backward(ctx, dpre):
        xp, w = ctx.arrs
        k = w.shape[1]
        dxp, dw = poison(xp.shape), poison((xp.shape[0],) + w.shape)
        _conv_backward(xp, w, as_array(dpre), dxp, dw)
        dxp = torch.from_numpy(dxp)
        return dxp[:, :, : k - 1], dxp[:, :, k - 1:], torch.from_numpy(dw).sum(0)


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
        y = _ConvFn.apply(initial_state.to(f32), x.to(f32), weight.to(f32))
        if bias is not None:
            y = y + bias.to(f32)[:, None]
        if activation == "silu":
            y = F.silu(y)
        y = y.to(x.dtype)
    if not return_final_state:
        return y
    # the last k-1 inputs: of x alone when l >= k-1, else the tail of the state followed by x
    if L >= k - 1:
        return y, x[:, :, L - (k - 1):].clone()
    return y, torch.cat([initial_state.to(x.dtype), x], dim=-1)[:, :, L:]


def _inference(x, weight, bias, initial_state, activation):
    """Forward only (nothing kept for a backward): `_conv_inference`, bias and activation fused in,
    the output channels-last (b, d, l) with stride 1 along d, as the projections downstream read it."""
    b, d, L = x.shape
    f32 = torch.float32
    bias = bias.detach().to(f32).contiguous() if bias is not None else torch.zeros(d)
    y = out_tensor((b, L, d))
    _conv_inference(*rows(x), initial_state.detach().to(f32).contiguous().numpy(),
                    weight.detach().to(f32).contiguous().numpy(), bias.numpy(), activation == "silu",
                    y.numpy().reshape(b * L, d))
    return y.transpose(1, 2)


__all__ = ["BACKEND", "causal_conv1d"]
