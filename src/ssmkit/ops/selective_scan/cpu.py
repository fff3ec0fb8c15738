"""Fused CPU kernels (numba) for the selective scan (Mamba-1), forward and backward.

Glossary (code name: paper symbol, shape inside the kernels):
    u: x, the input (b, d, l)           delta: Delta before bias/softplus (b, d, l)
    A: A (d, n), negative real          B, C: B_t, C_t, transposed here to (b, g, l, n) for contiguous n
    D: D skip (d,)                      z: gate (b, d, l), out = y * silu(z)
    h: the state of one channel (n,), kept in a small local array (registers / L1), never (b, l, d, n)
    dA_t = exp(dt_t A): the discretized A-bar;  dt_t = softplus(delta_t + delta_bias) if softplus
    K: checkpoint interval; hk (b, d, ceil(l/K), n) holds h_{t-1} for t = 0, K, 2K, ...

Forward, per channel (parallel over b x d with prange):
    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t;  y_t = <C_t, h_t> + D u_t;  out_t = y_t silu(z_t)
Backward, per channel, segment by segment from the end: recompute the K states of the segment from
its checkpoint into a (K, n) buffer, then walk it backwards with the adjoint g = dL/dh_t:
    g += dy_t C_t;  dC_t += dy_t h_t;  dB_t += g dt_t u_t;  du_t += dt_t <g, B_t> + D dy_t
    d dt_t += <g, A exp(dt_t A) h_{t-1} + B_t u_t>;  dA += g dt_t exp(dt_t A) h_{t-1};  g *= exp(dt_t A)
dB and dC are shared by the d/g channels of a group, so each worker adds into its own slice of a
partial buffer (workers, b, g, l, n), summed afterwards: no races, no atomics.
Why numba: see ssmkit/ops/_numba.py.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _numba as nbk
from .._numba import ONE, ZERO, njit, prange, sigmoid, silu, softplus, vexp

K_CHECKPOINT = 128


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    return nbk.unsupported_reason(*tensors)


@njit(parallel=True, fastmath=True)
def _forward(u, delta, A, Bt, Ct, D, z, bias, h0, softplus_on, has_z, K, out, hk, hT):
    b, d, L = u.shape
    g, n = Bt.shape[1], Bt.shape[3]
    per_group = d // g
    for job in prange(b * d):
        i = job // d
        c = job % d
        gi = c // per_group
        h = np.empty(n, dtype=np.float32)
        a = np.empty(n, dtype=np.float32)
        Ac = A[c]
        for s in range(n):
            h[s] = h0[i, c, s]
        Dc = D[c]
        bc = bias[c]
        for t in range(L):
            if t % K == 0:
                for s in range(n):
                    hk[i, c, t // K, s] = h[s]
            dt = delta[i, c, t] + bc
            if softplus_on:
                dt = softplus(dt)
            ut = u[i, c, t]
            du = dt * ut
            Bv = Bt[i, gi, t]
            Cv = Ct[i, gi, t]
            for s in range(n):
                a[s] = vexp(dt * Ac[s])
            y = ZERO
            for s in range(n):
                hs = a[s] * h[s] + du * Bv[s]
                h[s] = hs
                y += Cv[s] * hs
            y += Dc * ut
            if has_z:
                y = y * silu(z[i, c, t])
            out[i, c, t] = y
        for s in range(n):
            hT[i, c, s] = h[s]


@njit(parallel=True, fastmath=True)
def _backward(u, delta, A, Bt, Ct, D, z, bias, softplus_on, has_z, K, hk, dout, dhT, nwork,
              du_o, ddelta_o, dA_o, dD_o, dz_o, dh0_o, dBp, dCp):
    b, d, L = u.shape
    g, n = Bt.shape[1], Bt.shape[3]
    per_group = d // g
    nseg = (L + K - 1) // K
    chunk = (d + nwork - 1) // nwork
    for job in prange(b * nwork):
        i = job // nwork
        w = job % nwork
        hs_buf = np.empty((K + 1, n), dtype=np.float32)
        a = np.empty(n, dtype=np.float32)
        gh = np.empty(n, dtype=np.float32)
        dAc = np.empty(n, dtype=np.float32)
        for c in range(w * chunk, min(d, (w + 1) * chunk)):
            gi = c // per_group
            Ac = A[c]
            Dc = D[c]
            bc = bias[c]
            dDc = ZERO
            for s in range(n):
                gh[s] = dhT[i, c, s]
                dAc[s] = ZERO
            for seg in range(nseg - 1, -1, -1):
                t0 = seg * K
                t1 = min(L, t0 + K)
                # recompute h_{t0-1} .. h_{t1-1} into hs_buf[0 .. t1-t0]
                for s in range(n):
                    hs_buf[0, s] = hk[i, c, seg, s]
                for t in range(t0, t1):
                    dt = delta[i, c, t] + bc
                    if softplus_on:
                        dt = softplus(dt)
                    du = dt * u[i, c, t]
                    Bv = Bt[i, gi, t]
                    r = t - t0
                    for s in range(n):
                        hs_buf[r + 1, s] = vexp(dt * Ac[s]) * hs_buf[r, s] + du * Bv[s]
                for t in range(t1 - 1, t0 - 1, -1):
                    r = t - t0
                    raw = delta[i, c, t] + bc
                    dt = softplus(raw) if softplus_on else raw
                    ut = u[i, c, t]
                    Bv = Bt[i, gi, t]
                    Cv = Ct[i, gi, t]
                    dBv = dBp[w, i, gi, t]
                    dCv = dCp[w, i, gi, t]
                    dy = dout[i, c, t]
                    if has_z:
                        zt = z[i, c, t]
                        sz = sigmoid(zt)
                        y = Dc * ut
                        for s in range(n):
                            y += Cv[s] * hs_buf[r + 1, s]
                        dz_o[i, c, t] = dy * y * sz * (ONE + zt * (ONE - sz))
                        dy = dy * zt * sz
                    dDc += dy * ut
                    dut = Dc * dy
                    ddt = ZERO
                    for s in range(n):
                        a[s] = vexp(dt * Ac[s])
                    for s in range(n):
                        hcur = hs_buf[r + 1, s]
                        hprev = hs_buf[r, s]
                        dCv[s] += dy * hcur
                        gs = gh[s] + dy * Cv[s]
                        dBv[s] += gs * dt * ut
                        dut += gs * dt * Bv[s]
                        ah = a[s] * hprev
                        ddt += gs * (Ac[s] * ah + Bv[s] * ut)
                        dAc[s] += gs * dt * ah
                        gh[s] = gs * a[s]
                    du_o[i, c, t] = dut
                    if softplus_on:
                        ddt = ddt * sigmoid(raw)
                    ddelta_o[i, c, t] = ddt
            for s in range(n):
                dh0_o[i, c, s] = gh[s]
                dA_o[i, c, s] = dAc[s]
            dD_o[i, c] = dDc


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        b, d, L = u.shape
        n = B.shape[2]
        K = K_CHECKPOINT
        arrs = (
            nbk.to_np(u), nbk.to_np(delta), nbk.to_np(A),
            nbk.to_np(B.transpose(-1, -2)), nbk.to_np(C.transpose(-1, -2)),  # (b, g, l, n)
            nbk.to_np(D, (d,)), nbk.to_np(z, (1, 1, 1)), nbk.to_np(delta_bias, (d,)),
        )
        h0 = nbk.to_np(initial_state, (b, d, n))
        out = nbk.poison((b, d, L))
        hk = nbk.poison((b, d, (L + K - 1) // K, n))
        hT = nbk.poison((b, d, n))
        _forward(*arrs, h0, bool(delta_softplus), z is not None, K, out, hk, hT)
        ctx.arrs, ctx.hk, ctx.softplus = arrs, hk, bool(delta_softplus)
        ctx.has = (D is not None, z is not None, delta_bias is not None, initial_state is not None)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias))
        return torch.from_numpy(out).to(u.dtype), torch.from_numpy(hT)

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, Bt, Ct, D, z, bias = ctx.arrs
        b, d, L = u.shape
        g, n = Bt.shape[1], Bt.shape[3]
        nwork = max(1, min(d, -(-nbk.num_threads() * 2 // b)))
        dout_np = nbk.to_np(dout) if dout is not None else np.zeros((b, d, L), np.float32)
        dhT_np = nbk.to_np(dhT) if dhT is not None else np.zeros((b, d, n), np.float32)
        du, ddelta = nbk.poison((b, d, L)), nbk.poison((b, d, L))
        dA, dD, dh0 = nbk.poison((b, d, n)), nbk.poison((b, d)), nbk.poison((b, d, n))
        has_D, has_z, has_bias, has_h0 = ctx.has
        dz = nbk.poison((b, d, L)) if has_z else np.zeros((1, 1, 1), np.float32)
        dBp = np.zeros((nwork, b, g, L, n), np.float32)
        dCp = np.zeros((nwork, b, g, L, n), np.float32)
        _backward(u, delta, A, Bt, Ct, D, z, bias, ctx.softplus, has_z, K_CHECKPOINT, ctx.hk, dout_np,
                  dhT_np, nwork, du, ddelta, dA, dD, dz, dh0, dBp, dCp)
        tdt = ctx.dtypes
        T = torch.from_numpy
        dB = T(dBp).sum(0).transpose(-1, -2).to(tdt[3])
        dC = T(dCp).sum(0).transpose(-1, -2).to(tdt[4])
        dd = T(ddelta)
        return (
            T(du).to(tdt[0]), dd.to(tdt[1]), T(dA).sum(0).to(tdt[2]), dB, dC,
            T(dD).sum(0).to(tdt[5]) if has_D else None,
            T(dz).to(tdt[6]) if has_z else None,
            dd.sum((0, 2)).to(tdt[7]) if has_bias else None,
            T(dh0) if has_h0 else None,
            None,
        )


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Fused numba selective scan; normalized arguments as in ssmkit.ops.selective_scan.reference."""
    out, hT = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, hT) if return_final_state else out


__all__ = ["selective_scan", "unsupported_reason"]
