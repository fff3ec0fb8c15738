"""Fused CPU kernels (numba) for the selective scan (Mamba-1): the tier and its autograd Function.

The kernels are in `_numba_kernels` (read its docstring for the glossary and the algorithm): one
forward that fuses delta_bias, the softplus, the scan, D u and the silu(z) gate and writes the output
channels-last, keeping only the state every K steps when a backward will follow; one backward that
recomputes each segment of K steps from its checkpoint (exp once per state element) and computes
du, d delta, dz, dA, dB, dC, dD, d delta_bias and the initial state's gradient in one pass.
u, delta, z and the output's gradient are read where they lie (contiguous, channels-last, or a half
of in_proj's output: `ssmkit.ops._numba.arrays.rows`); the output and du, d delta, dz are written
channels-last, the layout of the projections around the scan, so neither side copies.
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import num_threads
from ssmkit.ops._numba.arrays import rows, rows_like
from ssmkit.ops._numba.buffers import out_tensor, poison
from ssmkit.ops.selective_scan._numba_kernels import BW, K_CHECKPOINT, scan_backward, scan_forward

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), priority=20)
_NONE = (np.zeros((1, 1), np.float32), 0, False)  # an absent (b, d, l) input, as `rows` gives one


def _vec(t, d):
    """A (d,) float32 array: t's values, or zeros when t is None."""
    return np.zeros(d, np.float32) if t is None else _array(t)


def _forward(u, delta, A, B, C, D, z, delta_bias, h0, do_softplus, save):
    """Run `scan_forward`: out (b, d, l) (a channels-last view), h_L (b, d, n), checkpoints (or None)."""
    b, d, L = u.shape
    n = A.shape[1]
    K = K_CHECKPOINT
    h0 = h0.detach().to(torch.float32).contiguous() if h0 is not None else torch.zeros(b, d, n)
    y = out_tensor((b, L, d))
    hT = torch.empty(b, d, n)
    hk = poison((b, (L + K - 1) // K, n, d)) if save else np.zeros((1, 1, 1, 1), np.float32)
    zr = rows(z) if z is not None else _NONE
    scan_forward(*rows(u), *rows(delta), _array(A), _array(B), _array(C), _vec(D, d), *zr, z is not None,
                 _vec(delta_bias, d), bool(do_softplus), h0.numpy(), y.numpy().reshape(b * L, d), hT.numpy(),
                 K, hk, save)
    return y.transpose(1, 2), hT, (hk if save else None)


def _array(t):
    return t.detach().to(torch.float32).contiguous().numpy()


class _ScanFn(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, delta_bias, h0) -> (out, h_L), float32; see the module docstring."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, do_softplus):
        y, hT, hk = _forward(u, delta, A, B, C, D, z, delta_bias, h0, do_softplus, save=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.hk, ctx.do_softplus, ctx.h0_shape = hk, do_softplus, (u.shape[0], u.shape[1], A.shape[1])
        ctx.set_materialize_grads(False)  # an unused final state's gradient stays None, not a zeros fill
        return y, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        b, d, L = u.shape
        n, g = A.shape[1], B.shape[1]
        nwork = max(1, min(g * -(-(d // g) // BW), -(-2 * num_threads() // b)))  # >= 2 jobs per thread
        dhT_np = _array(dhT) if dhT is not None else np.zeros((b, d, n), np.float32)
        do = rows(dout) if dout is not None else (np.zeros((b * d, L), np.float32), 0, False)
        ur, dlr = rows(u), rows(delta)
        zr = rows(z) if z is not None else _NONE
        (du, du_np), (ddelta, ddelta_np) = rows_like(ur, b, d, L), rows_like(dlr, b, d, L)
        dz, dz_np = rows_like(zr, b, d, L) if z is not None else (None, _NONE[0])
        dbias, dD, dA, dh0 = poison((b, d)), poison((b, d)), poison((b, d, n)), poison((b, d, n))
        dBp = np.zeros((nwork, b, g, L, n), np.float32)
        dCp = np.zeros((nwork, b, g, L, n), np.float32)
        scan_backward(*ur, *dlr, *zr, z is not None, *do, _array(A), _array(B), _array(C), _vec(D, d),
                      _vec(delta_bias, d), ctx.do_softplus, K_CHECKPOINT, ctx.hk, dhT_np, nwork,
                      du_np, ddelta_np, dz_np, dbias, dA, dD, dh0, dBp, dCp)
        T = torch.from_numpy
        dB = _sum_partials(T(dBp)).transpose(-1, -2)
        dC = _sum_partials(T(dCp)).transpose(-1, -2)
        need = ctx.needs_input_grad
        return (du, ddelta, T(dA).sum(0), dB, dC, T(dD).sum(0) if need[5] else None, dz,
                T(dbias).sum(0) if need[7] else None, T(dh0) if need[8] else None, None)


def _sum_partials(t: torch.Tensor) -> torch.Tensor:
    """The workers' partial sums (workers, ...) added up; one worker's as they are (no pass over them)."""
    return t[0] if t.shape[0] == 1 else t.sum(0)


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Fused numba selective scan; normalized arguments as in ssmkit.ops.selective_scan.reference."""
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        f32 = torch.float32
        cast = [t.to(f32) if t is not None else None for t in args]
        out, hT = _ScanFn.apply(*cast, bool(delta_softplus))
    else:
        out, hT, _ = _forward(*args, delta_softplus, save=False)
    out = out.to(u.dtype)
    return (out, hT) if return_final_state else out


__all__ = ["BACKEND", "selective_scan"]
