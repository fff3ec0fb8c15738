"""Fused CPU kernels (numba) for SSD (Mamba-2's scalar-A state space), forward and backward.

Glossary (code name: paper symbol, shapes):
    x: X (b, l, h, p)        dt: Delta after bias/softplus/clamp (b, l, h)      A: A (h,), a scalar per head
    B, C: B_t, C_t (b, l, g, n), head j uses group j // (h // g)
    S: the state of one head, (p, n); each row S[r] (n,) evolves on its own given dt, B, C
    keep_t: 0 where seq_idx changes at t (the state restarts from zero), else 1
    K: checkpoint interval; Sk (b, h, ceil(l/K), p, n) holds S_{t-1} for t = 0, K, 2K, ...; without
       gradients K = l: no (l/K, p, n) checkpoints for a long prompt, memory bounded by the output
Math, per head and row r (parallel over b x heads x blocks of rows; no (b, l, h, p, n) tensor):
    a_t = exp(dt_t A);
    S_t[r] = a_t keep_t S_{t-1}[r] + dt_t x_t[r] B_t;  y_t[r] = <S_t[r], C_t> + D[r] x_t[r]
Backward, segment by segment from the end (recompute the segment's states from its checkpoint),
with G = dL/dS_t[r]:
    G += dy_t[r] C_t;  dC_t += dy_t[r] S_t[r];  dB_t += G dt_t x_t[r];  dx_t[r] = dt_t <G, B_t> + D[r] dy_t[r]
    d dt_t += x_t[r] <G, B_t> + A a_t keep_t <G, S_{t-1}[r]>;  dA += dt_t a_t keep_t <G, S_{t-1}[r]>
    dD[r] += dy_t[r] x_t[r]
    G *= a_t keep_t
D x is fused in (D as (h, p), a per-head D expanded); dt's bias, softplus and clamp and the silu(z) gate
are plain torch ops (autograd); exp here is one per head and step, so libm's scalar exp is no
bottleneck; the inner loops run over n (SIMD).
Row blocks share dB, dC, d dt, dA: each worker adds into its own partial buffer, summed afterwards.
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, num_threads, prange
from ssmkit.ops._numba.arrays import as_array
from ssmkit.ops._numba.buffers import poison
from ssmkit.ops._numba.numerics import ZERO, f32

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), priority=20)
K_CHECKPOINT = 64


@njit(parallel=True, fastmath=True)
def _ssd_forward(x, dt, A, B, C, D, S0, keep, nblk, K, y, Sk, ST):
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    per_group = h // g
    rows = (p + nblk - 1) // nblk
    for job in prange(b * h * nblk):
        i = job // (h * nblk)
        j = (job // nblk) % h
        r0 = (job % nblk) * rows
        r1 = min(p, r0 + rows)
        gi = j // per_group
        S = np.empty((rows, n), dtype=np.float32)
        for r in range(r0, r1):
            for s in range(n):
                S[r - r0, s] = S0[i, j, r, s]
        for t in range(L):
            if t % K == 0:
                for r in range(r0, r1):
                    for s in range(n):
                        Sk[i, j, t // K, r, s] = S[r - r0, s]
            dtt = dt[i, t, j]
            a = f32(math.exp(dtt * A[j])) * keep[i, t]
            for r in range(r0, r1):
                xr = dtt * x[i, t, j, r]
                acc = ZERO
                for s in range(n):
                    v = a * S[r - r0, s] + xr * B[i, t, gi, s]
                    S[r - r0, s] = v
                    acc += v * C[i, t, gi, s]
                y[i, t, j, r] = acc + D[j, r] * x[i, t, j, r]
        for r in range(r0, r1):
            for s in range(n):
                ST[i, j, r, s] = S[r - r0, s]


@njit(parallel=True, fastmath=True)
def _ssd_backward(x, dt, A, B, C, D, keep, nblk, K, Sk, dy, dST, dx, dS0, ddtp, dAp, dDp, dBp, dCp):
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    per_group = h // g
    rows = (p + nblk - 1) // nblk
    nseg = (L + K - 1) // K
    for job in prange(b * nblk):
        i = job // nblk
        w = job % nblk
        r0 = w * rows
        r1 = min(p, r0 + rows)
        Sbuf = np.empty((K + 1, rows, n), dtype=np.float32)
        G = np.empty((rows, n), dtype=np.float32)
        for j in range(h):
            gi = j // per_group
            Aj = A[j]
            dAj = ZERO
            for r in range(r0, r1):
                for s in range(n):
                    G[r - r0, s] = dST[i, j, r, s]
            for seg in range(nseg - 1, -1, -1):
                t0 = seg * K
                t1 = min(L, t0 + K)
                for r in range(r0, r1):
                    for s in range(n):
                        Sbuf[0, r - r0, s] = Sk[i, j, seg, r, s]
                for t in range(t0, t1):
                    q = t - t0
                    dtt = dt[i, t, j]
                    a = f32(math.exp(dtt * Aj)) * keep[i, t]
                    for r in range(r0, r1):
                        xr = dtt * x[i, t, j, r]
                        for s in range(n):
                            Sbuf[q + 1, r - r0, s] = a * Sbuf[q, r - r0, s] + xr * B[i, t, gi, s]
                for t in range(t1 - 1, t0 - 1, -1):
                    q = t - t0
                    dtt = dt[i, t, j]
                    ea = f32(math.exp(dtt * Aj))
                    a = ea * keep[i, t]
                    ddt = ZERO
                    gsum = ZERO  # sum_r <G, S_{t-1}[r]>
                    for r in range(r0, r1):
                        dyr = dy[i, t, j, r]
                        xr = x[i, t, j, r]
                        gB = ZERO
                        gS = ZERO
                        for s in range(n):
                            Gs = G[r - r0, s] + dyr * C[i, t, gi, s]
                            dCp[w, i, t, gi, s] += dyr * Sbuf[q + 1, r - r0, s]
                            dBp[w, i, t, gi, s] += Gs * dtt * xr
                            gB += Gs * B[i, t, gi, s]
                            gS += Gs * Sbuf[q, r - r0, s]
                            G[r - r0, s] = Gs * a
                        dx[i, t, j, r] = dtt * gB + D[j, r] * dyr
                        dDp[w, i, j, r] += dyr * xr
                        ddt += xr * gB
                        gsum += gS
                    ddt += Aj * a * gsum
                    dAj += dtt * a * gsum
                    ddtp[w, i, t, j] = ddt
            for r in range(r0, r1):
                for s in range(n):
                    dS0[i, j, r, s] = G[r - r0, s]
            dAp[w, i, j] = dAj


class _SSDScanFn(torch.autograd.Function):
    """(x, dt, A, B, C, D (h, p), S0, keep) -> (y = S_t C_t + D x_t, S_L), all float32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, S0, keep, K):
        b, L, h, p = x.shape
        n = B.shape[-1]
        arrs = tuple(as_array(t) for t in (x, dt, A, B, C, D))
        keep_np = as_array(keep)
        # forward jobs: b x h x row blocks, at least ~2 per thread
        nblk_f = max(1, min(p, -(-2 * num_threads() // (b * h))))
        y = poison((b, L, h, p))
        Sk = poison((b, h, (L + K - 1) // K, p, n))
        ST = poison((b, h, p, n))
        _ssd_forward(*arrs, as_array(S0), keep_np, nblk_f, K, y, Sk, ST)
        ctx.arrs, ctx.keep, ctx.Sk, ctx.K = arrs, keep_np, Sk, K
        ctx.set_materialize_grads(False)  # an unused final state's gradient stays None, not a zeros fill
        return torch.from_numpy(y), torch.from_numpy(ST)

    @staticmethod
    def backward(ctx, dy, dST):
        x, dt, A, B, C, D = ctx.arrs
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        nblk = max(1, min(p, -(-2 * num_threads() // b)))
        dy_np = as_array(dy) if dy is not None else np.zeros(x.shape, np.float32)
        dST_np = as_array(dST) if dST is not None else np.zeros((b, h, p, n), np.float32)
        dx, dS0 = poison(x.shape), poison((b, h, p, n))
        ddtp = np.zeros((nblk, b, L, h), np.float32)
        dAp = np.zeros((nblk, b, h), np.float32)
        dDp = np.zeros((nblk, b, h, p), np.float32)
        dBp = np.zeros((nblk, b, L, g, n), np.float32)
        dCp = np.zeros((nblk, b, L, g, n), np.float32)
        _ssd_backward(x, dt, A, B, C, D, ctx.keep, nblk, ctx.K, ctx.Sk, dy_np, dST_np,
                      dx, dS0, ddtp, dAp, dDp, dBp, dCp)
        T = torch.from_numpy
        one = nblk == 1  # one worker: its partial sums are the sums (no pass over them)
        dB, dC, ddt = (T(a)[0] if one else T(a).sum(0) for a in (dBp, dCp, ddtp))
        return (T(dx), ddt, T(dAp).sum((0, 1)), dB, dC, T(dDp).sum((0, 1)), T(dS0), None, None)


def ssd(x, dt, A, B, C, *, chunk_size=None, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None, return_final_state=False):
    """Fused numba SSD recurrence; normalized arguments as in ssmkit.ops.ssd.reference.
    chunk_size is ignored: the fused recurrence walks the sequence step by step."""
    fl = torch.float32
    b, L, h, p = x.shape
    n = B.shape[-1]
    dt = dt.to(fl)
    if dt_bias is not None:
        dt = dt + dt_bias.to(fl)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit if dt_limit is not None else (0.0, float("inf"))
    dt = dt.clamp(lo, hi)  # always, as the reference: dt >= 0 even without softplus
    keep = torch.ones(b, L, dtype=fl)
    if seq_idx is not None:
        keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(fl)
    S0 = initial_state.to(fl) if initial_state is not None else x.new_zeros(b, h, p, n, dtype=fl)
    x32 = x.to(fl)
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_state)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    K = K_CHECKPOINT if grad else max(L, 1)  # without a backward, one checkpoint (the initial state)
    D2 = x.new_zeros(h, p, dtype=fl) if D is None else D.to(fl).reshape(h, -1).expand(h, p)  # (h, p)
    y, ST = _SSDScanFn.apply(x32, dt, A.to(fl), B.to(fl), C.to(fl), D2, S0, keep, K)
    if z is not None:
        y = y * F.silu(z.to(fl))
    y = y.to(x.dtype)
    return (y, ST) if return_final_state else y


__all__ = ["BACKEND", "ssd"]
