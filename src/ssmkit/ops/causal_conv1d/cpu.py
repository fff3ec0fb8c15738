"""Fused CPU kernels (numba) for the depthwise causal 1-D convolution, forward and backward.

Glossary: x (b, d, l) input; weight w (d, k) the per-channel filter; bias (d,); xp (b, d, k-1+l) the
input with the carried state (the previous k-1 inputs, zeros when none) in front; pre = the
convolution before the activation; activation None | "silu".
    pre[t] = bias + sum_j w[j] xp[t + j]          (y = silu(pre) when activation == "silu")
Backward (per channel, parallel over b x d):  dxp[t + j] += w[j] dpre[t];  dw[j] += dpre[t] xp[t + j].
xp is built inside the autograd Function (x copied into it once: a transposed x by the blocked copy of
ssmkit.ops._numba, 2x faster than torch.cat's strided gather). The final state (the last k-1 inputs),
the bias and the activation are plain torch ops differentiated by autograd.
Why numba: see ssmkit/ops/_numba.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _numba as nbk
from .._numba import ZERO, njit, prange


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    return nbk.unsupported_reason(*tensors)


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
        xp = nbk.poison((b, d, k - 1 + L))
        nbk.copy_into(xp[:, :, : k - 1], x0)
        nbk.copy_into(xp[:, :, k - 1:], x)
        w_np = nbk.as_array(w)
        pre = nbk.poison((b, d, L))
        _conv_forward(xp, w_np, pre)
        ctx.arrs = (xp, w_np)
        return torch.from_numpy(pre)

    @staticmethod
    def backward(ctx, dpre):
        xp, w = ctx.arrs
        k = w.shape[1]
        dxp, dw = nbk.poison(xp.shape), nbk.poison((xp.shape[0],) + w.shape)
        _conv_backward(xp, w, nbk.as_array(dpre), dxp, dw)
        dxp = torch.from_numpy(dxp)
        return dxp[:, :, : k - 1], dxp[:, :, k - 1:], torch.from_numpy(dw).sum(0)


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Fused numba causal conv; normalized arguments as in ssmkit.ops.causal_conv1d.reference."""
    f32 = torch.float32
    b, d, L = x.shape
    k = weight.shape[1]
    if initial_state is None:
        initial_state = x.new_zeros(b, d, k - 1)
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


__all__ = ["causal_conv1d", "unsupported_reason"]
