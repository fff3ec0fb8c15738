"""Fused CPU kernels (numba) for h_t = a_t * h_{t-1} + b_t, forward and backward.

Layout inside the kernels: every tensor is flattened to (batch, length, M), M = the product of the
trailing dims; a is (batch or 1, length or 1, M) and broadcasts (index 0 where its size is 1), so a
time-invariant a (S5's Lambda-bar) is never materialized over time. Complex tensors go to numba as
complex64/complex128 arrays directly. Threads split M into wide blocks (prange, `_block`); each block
walks time in order, contiguous in M so the inner loop vectorizes. For a constant in time the
backward sums dL/da over time in the kernel instead of writing a (batch, length, M) tensor. The
outputs (h, grad a, grad b) come from `out_tensor`: huge pages, and reused from one call to the next
of the same shape, so a memory-bound scan does not also pay the page faults of fresh memory.

Backward (the reverse scan, conj for complex as in PyTorch's convention):
    g_t = dL/dh_t + conj(a_{t+1}) g_{t+1};   dL/db_t = g_t;   dL/da_t = g_t conj(h_{t-1});
    dL/dh_{-1} = conj(a_0) g_0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, num_threads, prange
from ssmkit.ops._numba.buffers import out_tensor

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.float64, torch.complex64, torch.complex128),
                  priority=20)
_MIN_BLOCK = 256


@njit(parallel=True)
def _forward(a, b, h0, h, blk):
    Bn, L, M = b.shape
    sa_b = a.shape[0] > 1
    sa_t = a.shape[1] > 1
    nblk = (M + blk - 1) // blk
    for job in prange(Bn * nblk):
        i = job // nblk
        m0 = (job % nblk) * blk
        m1 = min(m0 + blk, M)
        ia = i if sa_b else 0
        for m in range(m0, m1):
            h[i, 0, m] = a[ia, 0, m] * h0[i, m] + b[i, 0, m]
        for t in range(1, L):
            ta = t if sa_t else 0
            for m in range(m0, m1):
                h[i, t, m] = a[ia, ta, m] * h[i, t - 1, m] + b[i, t, m]

@njit(parallel=True)
def _backward(a, h0, h, dh, g, da, dh0, conj, blk):
    Bn, L, M = h.shape
    sa_b = a.shape[0] > 1
    sa_t = a.shape[1] > 1
    nblk = (M + blk - 1) // blk
    for job in prange(Bn * nblk):
        i = job // nblk
        m0 = (job % nblk) * blk
        m1 = min(m0 + blk, M)
        ia = i if sa_b else 0
        # one reverse pass: g_t from g_{t+1}, then da_t = g_t conj(h_{t-1}) while g_t is hot
        for t in range(L - 1, 0, -1):
            ta = t + 1 if sa_t else 0
            for m in range(m0, m1):
                gt = dh[i, t, m]
                if t < L - 1:
                    an = a[ia, ta, m]
                    if conj:
                        an = np.conj(an)
                    gt += an * g[i, t + 1, m]
                g[i, t, m] = gt
                hp = h[i, t - 1, m]
                if conj:
                    hp = np.conj(hp)
                if sa_t:
                    da[i, t, m] = gt * hp
                else:                                      # a constant in time: sum over t here
                    da[i, 0, m] += gt * hp
        ta1 = 1 if sa_t else 0
        for m in range(m0, m1):
            gt = dh[i, 0, m]
            if L > 1:
                an = a[ia, ta1, m]
                if conj:
                    an = np.conj(an)
                gt += an * g[i, 1, m]
            g[i, 0, m] = gt
            hp = h0[i, m]
            a0 = a[ia, 0, m]
            if conj:
                hp = np.conj(hp)
                a0 = np.conj(a0)
            if sa_t:
                da[i, 0, m] = gt * hp
            else:
                da[i, 0, m] += gt * hp
            dh0[i, m] = gt * a0


def _block(batch: int, M: int) -> int:
    """Width of one thread's slice of M: as wide as the threads allow (batch x blocks a multiple of
    the thread count, so the static schedule is balanced). Each job walks time with rows of `blk`
    contiguous elements; the wider the rows, the fewer pages each time step touches."""
    threads = num_threads()
    nblk = threads // math.gcd(batch, threads)
    return max(_MIN_BLOCK, -(-M // nblk))


def _flat(a, b, h0):
    """(Ba, La, M), (B, L, M), (B, M) contiguous views/copies for the kernels."""
    Bn, L = b.shape[:2]
    M = b[0, 0].numel()
    a3 = a.expand(a.shape[0], a.shape[1], *b.shape[2:]).reshape(a.shape[0], a.shape[1], M).contiguous()
    b3 = b.reshape(Bn, L, M).contiguous()
    if h0 is None:
        h03 = torch.zeros(Bn, M, dtype=b.dtype)
    else:
        h03 = h0.expand(Bn, *b.shape[2:]).reshape(Bn, M).contiguous()
    return a3, b3, h03


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        a3, b3, h03 = _flat(a.detach(), b.detach(), None if h0 is None else h0.detach())
        h = out_tensor(b3.shape, b3.dtype)
        _forward(a3.numpy(), b3.numpy(), h03.numpy(), h.numpy(), _block(b3.shape[0], b3.shape[2]))
        ctx.save_for_backward(a3, h03, h)
        ctx.shapes = (a.shape, b.shape, None if h0 is None else h0.shape)
        return h.view(b.shape)

    @staticmethod
    def backward(ctx, dh):
        a3, h03, h = ctx.saved_tensors
        a_shape, b_shape, h0_shape = ctx.shapes
        dh3 = dh.reshape(h.shape).contiguous()
        g = out_tensor(h.shape, h.dtype)
        need_a = ctx.needs_input_grad[0]
        # grad a: (batch, length, M), or summed over time inside the kernel when a is constant in time
        Bn, _, M = h.shape
        da = out_tensor(h.shape, h.dtype) if a3.shape[1] > 1 else torch.zeros(Bn, 1, M, dtype=h.dtype)
        dh0 = torch.empty_like(h03)
        arrays = (a3, h03, h, dh3, g, da, dh0)
        _backward(*(t.numpy() for t in arrays), h.is_complex(), _block(Bn, M))
        da_out = None
        if need_a:
            da_out = da.sum_to_size(a3.shape).reshape(*a3.shape[:2], *b_shape[2:]).sum_to_size(a_shape)
            # (batch, 1, M) -> a3's (1 or batch, 1, M) -> a's own shape (trailing broadcast dims summed)
        dh0_out = None
        if h0_shape is not None and ctx.needs_input_grad[2]:
            dh0_out = dh0.reshape(b_shape[:1] + b_shape[2:]).sum_to_size(h0_shape)
        return da_out, g.view(b_shape) if ctx.needs_input_grad[1] else None, dh0_out


def parallel_scan(a: torch.Tensor, b: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False):
    """Fused numba scan; normalized arguments as in ssmkit.ops.parallel_scan.reference."""
    h = _NumbaScan.apply(a, b, initial_state)
    return (h, h[:, -1]) if return_final_state else h
