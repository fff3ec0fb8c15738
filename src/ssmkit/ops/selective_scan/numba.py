"""Fused CPU kernels (numba) for the selective scan (Mamba-1), forward and backward.

Glossary (code name: paper symbol, shape inside the kernels):
    u: x, the input (b, d, l)           delta: Delta before bias/softplus (b, d, l)
    A: A (d, n), negative real          B, C: B_t, C_t, transposed here to (b, g, l, n) for contiguous n
    D: D skip (d,)                      z: gate (b, d, l), out = y * silu(z)
    h: the state of one channel (n,), kept in a small local array (registers / L1), never (b, l, d, n)
    dA_t = exp(dt_t A): the discretized A-bar;  dt_t = softplus(delta_t + delta_bias) if softplus
    K: checkpoint interval; hk (b, d, ceil(l/K), n) holds h_{t-1} for t = 0, K, 2K, ...
    yp: y_t before the gate (b, d, l), kept by the forward when there is a gate

Two forwards. With autograd (training): `_dt_rows` computes dt = softplus(delta + delta_bias) once
(vectorized over t), `_scan_forward` does the scan with D u and the silu(z) gate fused in, keeping
dt and the checkpoints for `_scan_backward`, which ends with d delta = d dt sigmoid(delta + bias)
and d delta_bias (the torch softplus, its backward and the bias add are passes over (b, d, l) saved).
Without it (inference, torch.no_grad, nothing requires grad):
`_scan_inference` reads delta, u and z where they lie (contiguous or channels-last, also a half of
in_proj's output: ssmkit.ops._numba.arrays.rows), fuses the bias, softplus (vectorized, no libm), D and the
gate, keeps nothing, and writes its output channels-last for out_proj. It vectorizes across LANES
channels (a state (n, LANES) per job), so the output dot product needs no horizontal sum; time is
staged in tiles (ssmkit.ops._numba.arrays.load_tile). No kernel calls libm inside (vexp, softplus).

Forward, per channel (parallel over b x d with prange):
    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t;  y_t = <C_t, h_t> + D u_t;  out_t = y_t silu(z_t)
The gate is applied after the scan, in its own loop over t, where it vectorizes (inside the serial
loop it would be a scalar exp per step); y before the gate is kept (b, d, l) for the backward.
Backward, per channel: first, over t, dz_t = dout_t y_t silu'(z_t), dy_t = dout_t silu(z_t) and
dD = sum dy_t u_t; then segment by segment from the end: recompute the K states of the segment (and
their exp(dt A)) from its checkpoint into (K, n) buffers, and walk backwards with g = dL/dh_t:
    g += dy_t C_t;  dC_t += dy_t h_t;  dB_t += g dt_t u_t;  du_t = dt_t <g, B_t> + D dy_t
    d dt_t = <g, A exp(dt_t A) h_{t-1}> + u_t <g, B_t>;  dA += g dt_t exp(dt_t A) h_{t-1};  g *= exp(dt_t A)
dB and dC are shared by the d/g channels of a group, so each worker adds into its own slice of a
partial buffer (workers, b, g, l, n), summed afterwards: no races, no atomics.
Why numba: see ssmkit/ops/_numba/__init__.py.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._dispatch import Backend
from ssmkit.ops._numba import njit, num_threads, prange
from ssmkit.ops._numba.arrays import LANES as CB
from ssmkit.ops._numba.arrays import TILE, as_array, load_tile, rows
from ssmkit.ops._numba.buffers import out_tensor, poison
from ssmkit.ops._numba.numerics import ONE, ZERO, sigmoid, silu, softplus, vexp

BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), priority=20)
K_CHECKPOINT = 128


@njit(parallel=True, fastmath=True)
def _dt_rows(delta, bias, do_softplus, dt):
    """dt = softplus(delta + bias) (or delta + bias), (b, d, l), once per forward; the backward reuses
    it. A pass of its own: inside the scan kernels it would add an array to LLVM's alias checks."""
    b, d, L = delta.shape
    for job in prange(b * d):
        x, out, bc = delta[job // d, job % d], dt[job // d, job % d], bias[job % d]
        for t in range(L):
            out[t] = softplus(x[t] + bc) if do_softplus else x[t] + bc


@njit(parallel=True, fastmath=True)
def _scan_forward(u, dt, A, Bt, Ct, D, z, has_z, h0, K, y, yp, hk, hT):
    b, d, L = u.shape
    g, n = Bt.shape[1], Bt.shape[3]
    per_group = d // g
    for job in prange(b * d):
        i = job // d
        c = job % d
        gi = c // per_group
        ypre = yp[i, c] if has_z else y[i, c]  # y_t before the gate
        h = np.empty(n, dtype=np.float32)
        for s in range(n):
            h[s] = h0[i, c, s]
        for t in range(L):
            if t % K == 0:
                for s in range(n):
                    hk[i, c, t // K, s] = h[s]
            dtt = dt[i, c, t]
            du = dtt * u[i, c, t]
            for s in range(n):
                h[s] = vexp(dtt * A[c, s]) * h[s] + du * Bt[i, gi, t, s]
            acc = ZERO
            for s in range(n):  # apart from the update: together LLVM left both scalar (1.3x slower)
                acc += Ct[i, gi, t, s] * h[s]
            ypre[t] = acc + D[c] * u[i, c, t]
        if has_z:  # the gate after the scan, over t: it vectorizes there, not inside the serial loop
            for t in range(L):
                y[i, c, t] = ypre[t] * silu(z[i, c, t])
        for s in range(n):
            hT[i, c, s] = h[s]


@njit(parallel=True, fastmath=True)
def _scan_inference(u, u0, ucl, dt, dt0, dtcl, A, B, C, D, z, z0, zcl, has_z, bias, do_softplus, h0,
                    y, hT):
    b, d, n = h0.shape
    g, L = B.shape[1], B.shape[3]
    per_group = d // g
    nblk = (per_group + CB - 1) // CB
    for job in prange(b * g * nblk):
        i = job // (g * nblk)
        gi = (job // nblk) % g
        c0 = gi * per_group + (job % nblk) * CB
        cb = min(CB, (gi + 1) * per_group - c0)
        # lanes c >= cb stay zero: dt u = 0 and A = 0 keep their state at 0, nothing is stored
        h = np.zeros((n, CB), dtype=np.float32)
        At = np.zeros((n, CB), dtype=np.float32)
        ub = np.zeros((TILE, CB), dtype=np.float32)
        dtb = np.zeros((TILE, CB), dtype=np.float32)
        zb = np.zeros((TILE, CB), dtype=np.float32)
        yb = np.zeros((TILE, CB), dtype=np.float32)
        Dv = np.zeros(CB, dtype=np.float32)
        bv = np.zeros(CB, dtype=np.float32)
        du = np.zeros(CB, dtype=np.float32)
        acc = np.zeros(CB, dtype=np.float32)
        for c in range(cb):
            Dv[c] = D[c0 + c]
            bv[c] = bias[c0 + c]
            for s in range(n):
                h[s, c] = h0[i, c0 + c, s]
                At[s, c] = A[c0 + c, s]
        for t0 in range(0, L, TILE):
            tl = min(TILE, L - t0)
            load_tile(dt, dt0, dtcl, i, d, L, c0, cb, t0, tl, dtb)
            load_tile(u, u0, ucl, i, d, L, c0, cb, t0, tl, ub)
            for r in range(tl):
                for c in range(CB):
                    dtb[r, c] = softplus(dtb[r, c] + bv[c]) if do_softplus else dtb[r, c] + bv[c]
            for r in range(tl):
                t = t0 + r
                for c in range(CB):
                    du[c] = dtb[r, c] * ub[r, c]
                for c in range(CB):
                    acc[c] = Dv[c] * ub[r, c]
                for s in range(n):
                    bs = B[i, gi, s, t]
                    cs = C[i, gi, s, t]
                    for c in range(CB):
                        h[s, c] = vexp(dtb[r, c] * At[s, c]) * h[s, c] + du[c] * bs
                    for c in range(CB):
                        acc[c] += cs * h[s, c]
                for c in range(CB):
                    yb[r, c] = acc[c]
            if has_z:
                load_tile(z, z0, zcl, i, d, L, c0, cb, t0, tl, zb)
                for r in range(tl):
                    for c in range(CB):
                        yb[r, c] *= silu(zb[r, c])
            for r in range(tl):
                seg = y[i * L + t0 + r, c0: c0 + cb]
                for c in range(cb):
                    seg[c] = yb[r, c]
        for c in range(cb):
            for s in range(n):
                hT[i, c0 + c, s] = h[s, c]


@njit(parallel=True, fastmath=True)
def _scan_backward(u, delta, bias, do_softplus, dt, A, Bt, Ct, D, z, has_z, K, yp, hk, dout, dhT, nwork,
                   du_o, ddelta_o, dbias_o, dA_o, dD_o, dz_o, dh0_o, dBp, dCp):
    b, d, L = u.shape
    g, n = Bt.shape[1], Bt.shape[3]
    per_group = d // g
    nseg = (L + K - 1) // K
    chunk = (d + nwork - 1) // nwork
    for job in prange(b * nwork):
        i = job // nwork
        w = job % nwork
        hbuf = np.empty((K + 1, n), dtype=np.float32)  # h_{t0-1} .. h_{t1-1}
        abuf = np.empty((K, n), dtype=np.float32)  # exp(dt_t A) for t0 .. t1-1
        gh = np.empty(n, dtype=np.float32)
        gsv = np.empty(n, dtype=np.float32)
        dAc = np.empty(n, dtype=np.float32)
        dy = np.empty(L, dtype=np.float32)  # dL/dy_t of this channel, y before the gate
        for c in range(w * chunk, min(d, (w + 1) * chunk)):
            gi = c // per_group
            # the gate's backward and dD first, vectorized over t, out of the serial loop below
            if has_z:
                for t in range(L):
                    zt = z[i, c, t]
                    sz = sigmoid(zt)
                    dz_o[i, c, t] = dout[i, c, t] * yp[i, c, t] * sz * (ONE + zt * (ONE - sz))
                    dy[t] = dout[i, c, t] * zt * sz
            else:
                for t in range(L):
                    dy[t] = dout[i, c, t]
            dDc = ZERO
            for t in range(L):
                dDc += dy[t] * u[i, c, t]
            for s in range(n):
                gh[s] = dhT[i, c, s]
                dAc[s] = ZERO
            for seg in range(nseg - 1, -1, -1):
                t0 = seg * K
                t1 = min(L, t0 + K)
                for s in range(n):
                    hbuf[0, s] = hk[i, c, seg, s]
                for t in range(t0, t1):
                    r = t - t0
                    dtt = dt[i, c, t]
                    du = dtt * u[i, c, t]
                    for s in range(n):
                        a = vexp(dtt * A[c, s])
                        abuf[r, s] = a
                        hbuf[r + 1, s] = a * hbuf[r, s] + du * Bt[i, gi, t, s]
                for t in range(t1 - 1, t0 - 1, -1):
                    r = t - t0
                    dtt = dt[i, c, t]
                    ut = u[i, c, t]
                    dyt = dy[t]
                    # one store target per loop and few arrays in each: LLVM vectorizes a loop only
                    # when its runtime alias checks (store targets x other arrays) stay few
                    for s in range(n):
                        gsv[s] = gh[s] + dyt * Ct[i, gi, t, s]
                    dut = ZERO  # <g, B_t>
                    ddt = ZERO  # <g, A exp(dt A) h_{t-1}>
                    for s in range(n):  # reductions only: no stores, no checks
                        dut += gsv[s] * Bt[i, gi, t, s]
                        ddt += gsv[s] * A[c, s] * abuf[r, s] * hbuf[r, s]
                    for s in range(n):
                        dAc[s] += gsv[s] * dtt * abuf[r, s] * hbuf[r, s]
                    for s in range(n):
                        gh[s] = gsv[s] * abuf[r, s]
                    gu = dtt * ut
                    for s in range(n):
                        dBp[w, i, gi, t, s] += gsv[s] * gu
                    for s in range(n):
                        dCp[w, i, gi, t, s] += dyt * hbuf[r + 1, s]
                    du_o[i, c, t] = dut * dtt + D[c] * dyt
                    ddelta_o[i, c, t] = ddt + dut * ut  # d dt_t; through the softplus below
            dbc = ZERO
            if do_softplus:  # d softplus(x) / dx = sigmoid(x), x = delta + bias; over t, vectorized
                for t in range(L):
                    v = ddelta_o[i, c, t] * sigmoid(delta[i, c, t] + bias[c])
                    ddelta_o[i, c, t] = v
                    dbc += v
            else:
                for t in range(L):
                    dbc += ddelta_o[i, c, t]
            for s in range(n):
                dh0_o[i, c, s] = gh[s]
                dA_o[i, c, s] = dAc[s]
            dD_o[i, c] = dDc
            dbias_o[i, c] = dbc


class _ScanFn(torch.autograd.Function):
    """(u, delta, bias, A, B, C, D, z, h0) -> (out = (<C_t, h_t> + D u_t) silu(z_t), h_L), float32 in
    and out; dt = softplus(delta + bias) (or delta + bias) inside the kernels, forward and backward."""

    @staticmethod
    def forward(ctx, u, delta, bias, A, B, C, D, z, h0, do_softplus):
        b, d, L = u.shape
        n = A.shape[1]
        K = K_CHECKPOINT
        Bt, Ct = B.transpose(-1, -2), C.transpose(-1, -2)  # (b, g, l, n): n contiguous
        u_, delta_, bias_, A_, Bt_, Ct_, D_ = (as_array(t) for t in (u, delta, bias, A, Bt, Ct, D))
        dt = poison((b, d, L))
        _dt_rows(delta_, bias_, do_softplus, dt)
        z_np = as_array(z) if z is not None else np.zeros((1, 1, 1), np.float32)
        y = poison((b, d, L))
        yp = poison((b, d, L)) if z is not None else y  # y before the gate, for dz
        hk = poison((b, d, (L + K - 1) // K, n))
        hT = poison((b, d, n))
        _scan_forward(u_, dt, A_, Bt_, Ct_, D_, z_np, z is not None, as_array(h0), K, y, yp, hk, hT)
        ctx.arrs = (u_, delta_, bias_, dt, A_, Bt_, Ct_, D_)
        ctx.z, ctx.yp, ctx.hk, ctx.do_softplus = (z_np if z is not None else None), yp, hk, do_softplus
        ctx.set_materialize_grads(False)  # an unused final state's gradient stays None, not a zeros fill
        return torch.from_numpy(y), torch.from_numpy(hT)

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, bias, dt, A, Bt, Ct, D = ctx.arrs
        b, d, L = u.shape
        g, n = Bt.shape[1], Bt.shape[3]
        has_z = ctx.z is not None
        z = ctx.z if has_z else np.zeros((1, 1, 1), np.float32)
        nwork = max(1, min(d, -(-2 * num_threads() // b)))  # >= 2 jobs per thread in all
        dout_np = as_array(dout) if dout is not None else np.zeros((b, d, L), np.float32)
        dhT_np = as_array(dhT) if dhT is not None else np.zeros((b, d, n), np.float32)
        du, ddelta = poison((b, d, L)), poison((b, d, L))
        dz = poison((b, d, L)) if has_z else z
        dA, dh0, dD = poison((b, d, n)), poison((b, d, n)), poison((b, d))
        dbias = poison((b, d))
        dBp = np.zeros((nwork, b, g, L, n), np.float32)
        dCp = np.zeros((nwork, b, g, L, n), np.float32)
        _scan_backward(u, delta, bias, ctx.do_softplus, dt, A, Bt, Ct, D, z, has_z, K_CHECKPOINT, ctx.yp,
                       ctx.hk, dout_np, dhT_np, nwork, du, ddelta, dbias, dA, dD, dz, dh0, dBp, dCp)
        T = torch.from_numpy
        dB = _sum_partials(T(dBp)).transpose(-1, -2)
        dC = _sum_partials(T(dCp)).transpose(-1, -2)
        return (T(du), T(ddelta), T(dbias).sum(0), T(dA).sum(0), dB, dC, T(dD).sum(0),
                T(dz) if has_z else None, T(dh0), None)


def _sum_partials(t: torch.Tensor) -> torch.Tensor:
    """The workers' partial sums (workers, ...) added up; one worker's as they are (no pass over them)."""
    return t[0] if t.shape[0] == 1 else t.sum(0)


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Fused numba selective scan; normalized arguments as in ssmkit.ops.selective_scan.reference."""
    f32 = torch.float32
    b, d, _ = u.shape
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)):
        out, hT = _inference(*args, delta_softplus)
        return (out, hT) if return_final_state else out
    h0 = initial_state.to(f32) if initial_state is not None else u.new_zeros(b, d, A.shape[1], dtype=f32)
    D32 = D.to(f32) if D is not None else u.new_zeros(d, dtype=f32)
    bias = delta_bias.to(f32) if delta_bias is not None else u.new_zeros(d, dtype=f32)
    z32 = z.to(f32) if z is not None else None
    out, hT = _ScanFn.apply(u.to(f32), delta.to(f32), bias, A.to(f32), B.to(f32), C.to(f32), D32, z32, h0,
                            bool(delta_softplus))
    out = out.to(u.dtype)
    return (out, hT) if return_final_state else out


def _inference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
    """Forward only (nothing kept for a backward): `_scan_inference`, the output channels-last."""
    b, d, L = u.shape
    n = A.shape[1]
    f32 = torch.float32
    h0 = initial_state.to(f32).contiguous() if initial_state is not None else torch.zeros(b, d, n)
    D32 = D.to(f32).contiguous() if D is not None else torch.zeros(d)
    bias = delta_bias.to(f32).contiguous() if delta_bias is not None else torch.zeros(d)
    zr = rows(z) if z is not None else (np.zeros((1, 1), np.float32), 0, False)
    y = out_tensor((b, L, d))
    hT = torch.empty(b, d, n)
    _scan_inference(*rows(u), *rows(delta), A.to(f32).contiguous().numpy(),
                    B.detach().to(f32).numpy(), C.detach().to(f32).numpy(), D32.numpy(), *zr, z is not None,
                    bias.numpy(), bool(delta_softplus), h0.numpy(), y.numpy().reshape(b * L, d), hT.numpy())
    return y.transpose(1, 2).to(u.dtype), hT


__all__ = ["BACKEND", "selective_scan"]
