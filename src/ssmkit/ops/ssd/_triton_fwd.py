"""Triton kernels of SSD's forward, also rerun by the backward (imports Triton; see ssmkit.ops.ssd.triton).

Per chunk of T steps (index i, global t = c T + i) and head: dt after bias/softplus/clamp, a = dt A
(log decay of one step), cs = cumsum(a) inside the chunk, X = dt x (Euler for B). Packed sequences
(seq_idx) enter only as masks: a term between steps s <= t counts iff seq[s] == seq[t] (no reset
between them), the same as the reference's zero decay at a reset. Padded steps (t >= l) have dt = 0.
    CB[t, s]   = C_t . B_s                                      chunk_cb      (b, c, g, T, T) fp32
    Sc         = sum_s X_s^T B_s exp(cs_end - cs_s)             chunk_outer   (b, c, h, P, N) fp32
    S_in[c]    = state entering chunk c: S_in[c+1] = exp(cs_end) S_in[c] + Sc[c]    state_pass
    y_t        = sum_{s<=t} CB[t,s] exp(cs_t - cs_s) X_s + exp(cs_t) C_t S_in^T + D x_t    chunk_scan
The matmuls (tl.dot) take the operands in x's dtype and accumulate in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops._triton.common import dot, silu, silu_grad, softplus


@triton.jit
def _seq(seq_ptr, t, l, ssl):
    """seq_idx at positions t, clamped into [0, l) (padded steps belong to the last sequence)."""
    return tl.load(seq_ptr + tl.minimum(tl.maximum(t, 0), l - 1) * ssl)


@triton.jit
def chunk_tile(nc, T, l, ncols, BM: tl.constexpr, BC: tl.constexpr):
    """A program's tile of rows (BM steps of one chunk) x columns (BC of ncols: head dim or state), for a
    grid of (batch x chunk, *, row blocks x column blocks). Returns the batch row, the chunk, the row
    block, i (steps in the chunk), the columns, t = c T + i, and the rows' and columns' masks."""
    pid, pq = tl.program_id(0), tl.program_id(2)
    n_cb = tl.cdiv(ncols, BC)
    mi = pq // n_cb
    i = mi * BM + tl.arange(0, BM)
    cols = (pq % n_cb) * BC + tl.arange(0, BC)
    t = (pid % nc) * T + i
    return pid // nc, pid % nc, mi, i, cols, t, (i < T) & (t < l), cols < ncols


@triton.jit
def pair_tile(nc, T, l, BM: tl.constexpr, BK: tl.constexpr):
    """A program's tile of step pairs (t, s) of one chunk, for a grid of (batch x chunk, *, T x T blocks).
    Returns the batch row, the chunk, whether the tile reaches s <= t, i and j (steps in the chunk),
    t = c T + i, s = c T + j and their masks."""
    pid, pt = tl.program_id(0), tl.program_id(2)
    n_kb = tl.cdiv(T, BK)
    mi, ki = pt // n_kb, pt % n_kb
    i = mi * BM + tl.arange(0, BM)
    j = ki * BK + tl.arange(0, BK)
    t, s = (pid % nc) * T + i, (pid % nc) * T + j
    return pid // nc, pid % nc, ki * BK <= mi * BM + BM - 1, i, j, t, s, (i < T) & (t < l), (j < T) & (s < l)


@triton.jit
def rows_by_state(V_ptr, S_ptr, pb, g, t, im, p, pm, N, svb, svl, svg, svn, DTYPE: tl.constexpr,
                  UPCAST: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """sum_n V[pb, t, g, n] S[p, n]: rows t of V (b, l, g, N) against a float32 state S (P, N) -> (BM, BP)."""
    acc = tl.zeros((BM, BP), dtype=tl.float32)
    for n0 in range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        nm = nn < N
        V = tl.load(V_ptr + pb * svb + t[:, None] * svl + g * svg + nn[None, :] * svn,
                    mask=im[:, None] & nm[None, :], other=0.0)
        St = tl.load(S_ptr + p[None, :] * N + nn[:, None], mask=nm[:, None] & pm[None, :], other=0.0)
        acc += dot(V, St, DTYPE, UPCAST)
    return acc


@triton.jit
def dt_cumsum(dt_ptr, A_ptr, bias_ptr, dt_out_ptr, cs_ptr, l, h, T, nc, sdb, sdl, sdh, lo, hi,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BH: tl.constexpr, BT: tl.constexpr):
    """dt (b, l, h) -> dt and cs = cumsum(dt A) per chunk, both (b, h, c, T) float32."""
    pb, pc, ph = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hh = ph * BH + tl.arange(0, BH)
    i = tl.arange(0, BT)
    t = pc * T + i
    hm, im = hh < h, (i < T) & (t < l)
    mask = hm[:, None] & im[None, :]
    dt = tl.load(dt_ptr + pb * sdb + t[None, :] * sdl + hh[:, None] * sdh, mask=mask, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hh, mask=hm, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.where(mask, tl.minimum(tl.maximum(dt, lo), hi), 0.0)
    A = tl.load(A_ptr + hh, mask=hm, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * A[:, None], axis=1)
    offs = ((pb * h + hh[:, None]) * nc + pc) * T + i[None, :]
    keep = hm[:, None] & (i < T)[None, :]
    tl.store(dt_out_ptr + offs, dt, mask=keep)
    tl.store(cs_ptr + offs, cs, mask=keep)


@triton.jit
def chunk_cb(C_ptr, B_ptr, CB_ptr, l, T, nc, G, N, scb, scl, scg, scn, sbb, sbl, sbg, sbn,
             DTYPE: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
             BN: tl.constexpr):
    """CB[b, c, g, t, s] = C_t . B_s for s <= t (tiles wholly above the diagonal are left unwritten)."""
    pg = tl.program_id(1)
    pb, pc, lower, i, j, ti, tj, im, jm = pair_tile(nc, T, l, BM, BK)
    if lower:
        acc = tl.zeros((BM, BK), dtype=tl.float32)
        for n0 in range(0, N, BN):
            nn = n0 + tl.arange(0, BN)
            nm = nn < N
            Ct = tl.load(C_ptr + pb * scb + ti[:, None] * scl + pg * scg + nn[None, :] * scn,
                         mask=im[:, None] & nm[None, :], other=0.0)
            Bt = tl.load(B_ptr + pb * sbb + tj[None, :] * sbl + pg * sbg + nn[:, None] * sbn,
                         mask=nm[:, None] & jm[None, :], other=0.0)
            acc += dot(Ct, Bt, DTYPE, UPCAST)
        out = CB_ptr + ((pb * nc + pc) * G + pg) * T * T
        tl.store(out + i[:, None] * T + j[None, :], acc, mask=(i < T)[:, None] & (j < T)[None, :])


@triton.jit
def chunk_outer(X_ptr, Y_ptr, dt_ptr, cs_ptr, seq_ptr, out_ptr, l, h, T, nc, hpg, P, N,
                sxb, sxl, sxh, sxp, syb, syl, syg, syn, ssb, ssl,
                STATE: tl.constexpr, HAS_SEQ: tl.constexpr, DTYPE: tl.constexpr, UPCAST: tl.constexpr,
                BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[b, c, h] (P, N) = sum_t w_t X[t]^T Y[t] over the chunk, float32, with per-step weights
    STATE:     X = x, Y = B, w_t = dt_t exp(cs_end - cs_t) [seq_t == seq_end]  (the chunk's own state)
    otherwise: X = dy, Y = C, w_t = exp(cs_t) [seq_t == seq before the chunk]  (d state entering it)."""
    pid, ph, pq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pb, pc = pid // nc, pid % nc
    n_nb = tl.cdiv(N, BN)
    p = (pq // n_nb) * BP + tl.arange(0, BP)
    nn = (pq % n_nb) * BN + tl.arange(0, BN)
    pm, nm = p < P, nn < N
    g = ph // hpg
    cbase = ((pb * h + ph) * nc + pc) * T
    cs_end = tl.load(cs_ptr + cbase + T - 1)
    if HAS_SEQ:
        seq_ptr += pb * ssb
        if STATE:
            seq_ref = _seq(seq_ptr, pc * T + T - 1, l, ssl)
        else:
            seq_ref = _seq(seq_ptr, pc * T - 1, l, ssl)
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    for k0 in range(0, T, BK):
        i = k0 + tl.arange(0, BK)
        t = pc * T + i
        valid = (i < T) & (t < l)
        cs = tl.load(cs_ptr + cbase + i, mask=i < T, other=0.0)
        if STATE:
            w = tl.load(dt_ptr + cbase + i, mask=i < T, other=0.0) * tl.exp(tl.minimum(cs_end - cs, 0.0))
        else:
            w = tl.exp(cs)
        if HAS_SEQ:
            valid &= _seq(seq_ptr, t, l, ssl) == seq_ref
        w = tl.where(valid, w, 0.0)
        Xt = tl.load(X_ptr + pb * sxb + t[None, :] * sxl + ph * sxh + p[:, None] * sxp,
                     mask=pm[:, None] & valid[None, :], other=0.0).to(tl.float32)
        Yt = tl.load(Y_ptr + pb * syb + t[:, None] * syl + g * syg + nn[None, :] * syn,
                     mask=valid[:, None] & nm[None, :], other=0.0)
        acc += dot(Xt * w[None, :], Yt, DTYPE, UPCAST)
    out = out_ptr + ((pb * nc + pc) * h + ph) * P * N
    tl.store(out + p[:, None] * N + nn[None, :], acc, mask=pm[:, None] & nm[None, :])


@triton.jit
def state_pass(Sc_ptr, cs_ptr, seq_ptr, h0_ptr, Sin_ptr, final_ptr, l, h, T, nc, PN, ssb, ssl,
               HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK: tl.constexpr):
    """S_in[c] (b, c, h, P, N) = the state entering chunk c; final (b, h, P, N) = after the last.
    A chunk holding a reset (its end's sequence differs from the previous end's) drops the carry."""
    pb, ph, pq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q = pq * BLOCK + tl.arange(0, BLOCK)
    qm = q < PN
    s = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_H0:
        s = tl.load(h0_ptr + (pb * h + ph) * PN + q, mask=qm, other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_ptr += pb * ssb
        seq_prev = _seq(seq_ptr, 0, l, ssl)
    for c in range(0, nc):
        off = ((pb * nc + c) * h + ph) * PN + q
        tl.store(Sin_ptr + off, s, mask=qm)
        decay = tl.exp(tl.load(cs_ptr + ((pb * h + ph) * nc + c) * T + T - 1))
        if HAS_SEQ:
            seq_end = _seq(seq_ptr, c * T + T - 1, l, ssl)
            decay = tl.where(seq_end == seq_prev, decay, 0.0)
            seq_prev = seq_end
        s = decay * s + tl.load(Sc_ptr + off, mask=qm, other=0.0)
    tl.store(final_ptr + (pb * h + ph) * PN + q, s, mask=qm)


@triton.jit
def chunk_scan(CB_ptr, x_ptr, dt_ptr, cs_ptr, C_ptr, Sin_ptr, D_ptr, z_ptr, seq_ptr, dout_ptr, out_ptr,
               dz_ptr, l, h, T, nc, hpg, P, N, sxb, sxl, sxh, sxp, scb, scl, scg, scn, szb, szl, szh, szp,
               ssb, ssl, sob, sol, soh, sop,
               HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr,
               GRAD: tl.constexpr, DTYPE: tl.constexpr, UPCAST: tl.constexpr,
               BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """out = y * silu(z) (x's dtype), y = the chunk's own terms + the entering state's + D x.
    GRAD (with z): from dout, write dz and, into out_ptr (float32), dy = dout * silu(z)."""
    ph = tl.program_id(1)
    pb, pc, mi, i, p, t, im, pm = chunk_tile(nc, T, l, P, BM, BP)
    g = ph // hpg
    cbase = ((pb * h + ph) * nc + pc) * T
    cs_t = tl.load(cs_ptr + cbase + i, mask=i < T, other=0.0)
    scale = tl.exp(cs_t)
    if HAS_SEQ:
        seq_ptr += pb * ssb
        seq_t = _seq(seq_ptr, t, l, ssl)
        scale = tl.where(seq_t == _seq(seq_ptr, pc * T - 1, l, ssl), scale, 0.0)
    # 1. the state entering the chunk, decayed to t: exp(cs_t) C_t S_in^T
    s_in = Sin_ptr + ((pb * nc + pc) * h + ph) * P * N
    acc = rows_by_state(C_ptr, s_in, pb, g, t, im, p, pm, N, scb, scl, scg, scn, DTYPE, UPCAST, BM, BP, BN)
    acc *= scale[:, None]
    # 2. the chunk's own steps s <= t: (CB[t, s] exp(cs_t - cs_s) dt_s) @ x_s
    cb = CB_ptr + ((pb * nc + pc) * (h // hpg) + g) * T * T
    for k0 in range(0, tl.minimum(mi * BM + BM, T), BK):
        j = k0 + tl.arange(0, BK)
        s = pc * T + j
        jm = (j < T) & (s < l)
        cs_s = tl.load(cs_ptr + cbase + j, mask=j < T, other=0.0)
        dt_s = tl.load(dt_ptr + cbase + j, mask=j < T, other=0.0)
        keep = (j[None, :] <= i[:, None]) & jm[None, :] & im[:, None]
        if HAS_SEQ:
            keep &= _seq(seq_ptr, s, l, ssl)[None, :] == seq_t[:, None]
        CBt = tl.load(cb + i[:, None] * T + j[None, :], mask=keep, other=0.0)
        W = tl.where(keep, CBt * tl.exp(tl.minimum(cs_t[:, None] - cs_s[None, :], 0.0)) * dt_s[None, :], 0.0)
        xs = tl.load(x_ptr + pb * sxb + s[:, None] * sxl + ph * sxh + p[None, :] * sxp,
                     mask=jm[:, None] & pm[None, :], other=0.0)
        acc += dot(W, xs, DTYPE, UPCAST)
    mask = im[:, None] & pm[None, :]
    xt = tl.load(x_ptr + pb * sxb + t[:, None] * sxl + ph * sxh + p[None, :] * sxp, mask=mask,
                 other=0.0).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            acc += tl.load(D_ptr + ph * P + p, mask=pm, other=0.0).to(tl.float32)[None, :] * xt
        else:
            acc += tl.load(D_ptr + ph).to(tl.float32) * xt
    zo = pb * szb + t[:, None] * szl + ph * szh + p[None, :] * szp
    oo = pb * sob + t[:, None] * sol + ph * soh + p[None, :] * sop
    if GRAD:
        zt = tl.load(z_ptr + zo, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + oo, mask=mask, other=0.0).to(tl.float32)
        tl.store(dz_ptr + oo, (dout * acc * silu_grad(zt)).to(dz_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + oo, dout * silu(zt), mask=mask)
    else:
        if HAS_Z:
            acc *= silu(tl.load(z_ptr + zo, mask=mask, other=0.0).to(tl.float32))
        tl.store(out_ptr + oo, acc.to(out_ptr.dtype.element_ty), mask=mask)
