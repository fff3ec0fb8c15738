"""Triton kernels of SSD's backward (imports Triton; notation of ssmkit.ops.ssd._triton_fwd).

With dy the gradient of y (after the gate's), per chunk and head, M[t, s] = CB[t, s] L[t, s],
L = exp(cs_t - cs_s) masked to s <= t in one sequence, w_s = exp(cs_end - cs_s) [seq_s == seq_end]:
    dS_in[c]  = sum_t exp(cs_t) dy_t^T C_t + exp(cs_end) dS_end[c]   (reverse over chunks: state_pass_bwd)
    dX_s      = sum_{t>=s} M[t, s] dy_t + w_s B_s dS_end^T            chunk_dx: dx = dt dX + D dy, ddt += dX.x
    dCB[t, s] = sum_{heads of the group} (dy_t . X_s) L[t, s]          chunk_dcb
    dC_t      = sum_s dCB[t, s] B_s + sum_heads exp(cs_t) dy_t S_in    chunk_dbc (C)
    dB_s      = sum_t dCB[t, s] C_t + sum_heads w_s X_s dS_end         chunk_dbc (B)
and dcs, the gradient of the cumulated log decays (atomics into (b, h, c, T)): +-(dy_t . X_s) M[t, s]
at t and s, dy_t . y_off_t at t, -+ w_s X_s . (B_s dS_end^T) at s and the chunk end, and
exp(cs_end) <dS_end, S_in> at the end. PyTorch then turns dcs into d(dt A) by a reverse cumsum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops._triton.common import dot
from ssmkit.ops.ssd._triton_fwd import _seq, chunk_tile, pair_tile, rows_by_state


@triton.jit
def state_pass_bwd(dS_ptr, Sin_ptr, cs_ptr, seq_ptr, dfinal_ptr, dh0_ptr, dcs_ptr, l, h, T, nc, PN, ssb, ssl,
                   HAS_DFINAL: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK: tl.constexpr):
    """dS_ptr holds dS_off[c] = sum_t exp(cs_t) dy_t^T C_t on entry and dS_end[c] (the gradient of chunk
    c's end state) on exit, in place; dh0 = dS_in[0]."""
    pb, ph, pq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q = pq * BLOCK + tl.arange(0, BLOCK)
    qm = q < PN
    d_end = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_DFINAL:
        d_end = tl.load(dfinal_ptr + (pb * h + ph) * PN + q, mask=qm, other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_ptr += pb * ssb
    for cc in range(0, nc):
        c = nc - 1 - cc
        off = ((pb * nc + c) * h + ph) * PN + q
        d_off = tl.load(dS_ptr + off, mask=qm, other=0.0)
        tl.store(dS_ptr + off, d_end, mask=qm)
        cs_at = cs_ptr + ((pb * h + ph) * nc + c) * T + T - 1
        decay = tl.exp(tl.load(cs_at))
        if HAS_SEQ:
            same = _seq(seq_ptr, c * T + T - 1, l, ssl) == _seq(seq_ptr, c * T - 1, l, ssl)
            decay = tl.where(same, decay, 0.0)
        s_in = tl.load(Sin_ptr + off, mask=qm, other=0.0)
        tl.atomic_add(dcs_ptr + ((pb * h + ph) * nc + c) * T + T - 1, tl.sum(decay * d_end * s_in))
        d_end = d_off + decay * d_end
    tl.store(dh0_ptr + (pb * h + ph) * PN + q, d_end, mask=qm)


@triton.jit
def chunk_dx(CB_ptr, x_ptr, dt_ptr, cs_ptr, B_ptr, dS_ptr, D_ptr, seq_ptr, dy_ptr, dx_ptr, ddt_ptr, dD_ptr,
             dcs_ptr, l, h, T, nc, hpg, P, N, sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl,
             syb, syl, syh, syp,
             HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_SEQ: tl.constexpr, DTYPE: tl.constexpr,
             UPCAST: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """dx (x's strides), and atomically: ddt += dX . x, dD, and the state term's dcs."""
    ph = tl.program_id(1)
    pb, pc, mi, i, p, s, im, pm = chunk_tile(nc, T, l, P, BM, BP)
    g = ph // hpg
    cbase = ((pb * h + ph) * nc + pc) * T
    cs_s = tl.load(cs_ptr + cbase + i, mask=i < T, other=0.0)
    dt_s = tl.load(dt_ptr + cbase + i, mask=i < T, other=0.0)
    w = tl.exp(tl.minimum(tl.load(cs_ptr + cbase + T - 1) - cs_s, 0.0))
    if HAS_SEQ:
        seq_ptr += pb * ssb
        seq_s = _seq(seq_ptr, s, l, ssl)
        w = tl.where(seq_s == _seq(seq_ptr, pc * T + T - 1, l, ssl), w, 0.0)
    w = tl.where(im, w, 0.0)
    # 1. through the chunk's end state: w_s B_s dS_end^T
    dS = dS_ptr + ((pb * nc + pc) * h + ph) * P * N
    d_state = rows_by_state(B_ptr, dS, pb, g, s, im, p, pm, N, sbb, sbl, sbg, sbn, DTYPE, UPCAST, BM, BP, BN)
    d_state *= w[:, None]
    # 2. through the later outputs of the chunk: sum_{t>=s} CB[t, s] L[t, s] dy_t
    acc = d_state
    cb = CB_ptr + ((pb * nc + pc) * (h // hpg) + g) * T * T
    for k0 in range((mi * BM // BK) * BK, T, BK):
        j = k0 + tl.arange(0, BK)
        t = pc * T + j
        jm = (j < T) & (t < l)
        cs_t = tl.load(cs_ptr + cbase + j, mask=j < T, other=0.0)
        keep = (j[None, :] >= i[:, None]) & jm[None, :] & im[:, None]
        if HAS_SEQ:
            keep &= _seq(seq_ptr, t, l, ssl)[None, :] == seq_s[:, None]
        CBt = tl.load(cb + j[None, :] * T + i[:, None], mask=keep, other=0.0)            # CB[t, s] at [s, t]
        W = tl.where(keep, CBt * tl.exp(tl.minimum(cs_t[None, :] - cs_s[:, None], 0.0)), 0.0)
        dyt = tl.load(dy_ptr + pb * syb + t[:, None] * syl + ph * syh + p[None, :] * syp,
                      mask=jm[:, None] & pm[None, :], other=0.0)
        acc += dot(W, dyt, DTYPE, UPCAST)
    mask = im[:, None] & pm[None, :]
    xs = tl.load(x_ptr + pb * sxb + s[:, None] * sxl + ph * sxh + p[None, :] * sxp, mask=mask,
                 other=0.0).to(tl.float32)
    dx = acc * dt_s[:, None]
    if HAS_D:
        dys = tl.load(dy_ptr + pb * syb + s[:, None] * syl + ph * syh + p[None, :] * syp, mask=mask,
                      other=0.0).to(tl.float32)
        if D_PER_P:
            dx += tl.load(D_ptr + ph * P + p, mask=pm, other=0.0).to(tl.float32)[None, :] * dys
            tl.atomic_add(dD_ptr + ph * P + p, tl.sum(dys * xs, axis=0), mask=pm)
        else:
            dx += tl.load(D_ptr + ph).to(tl.float32) * dys
            tl.atomic_add(dD_ptr + ph, tl.sum(tl.sum(dys * xs, axis=1), axis=0))
    tl.store(dx_ptr + pb * sxb + s[:, None] * sxl + ph * sxh + p[None, :] * sxp,
             dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.atomic_add(ddt_ptr + cbase + i, tl.sum(acc * xs, axis=1), mask=i < T)
    v = tl.sum(d_state * xs, axis=1) * dt_s                       # w_s X_s . (B_s dS_end^T)
    tl.atomic_add(dcs_ptr + cbase + i, -v, mask=i < T)
    tl.atomic_add(dcs_ptr + cbase + T - 1, tl.sum(v, axis=0))


@triton.jit
def chunk_dcb(x_ptr, dt_ptr, cs_ptr, CB_ptr, seq_ptr, dy_ptr, dCB_ptr, dcs_ptr, l, h, T, nc, hpg, P,
              sxb, sxl, sxh, sxp, ssb, ssl, syb, syl, syh, syp,
              HAS_SEQ: tl.constexpr, DTYPE: tl.constexpr, UPCAST: tl.constexpr,
              BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr):
    """dCB (b, c, g, T, T) float32 for s <= t, summed over the group's heads; the intra-chunk dcs."""
    pg = tl.program_id(1)
    pb, pc, lower, i, j, t, s, im, jm = pair_tile(nc, T, l, BM, BK)
    if lower:
        keep = (j[None, :] <= i[:, None]) & im[:, None] & jm[None, :]
        if HAS_SEQ:
            seq_ptr += pb * ssb
            keep &= _seq(seq_ptr, s, l, ssl)[None, :] == _seq(seq_ptr, t, l, ssl)[:, None]
        cb = ((pb * nc + pc) * (h // hpg) + pg) * T * T + i[:, None] * T + j[None, :]
        CBt = tl.load(CB_ptr + cb, mask=keep, other=0.0)
        dcb = tl.zeros((BM, BK), dtype=tl.float32)
        for hh in range(0, hpg):
            head = pg * hpg + hh
            cbase = ((pb * h + head) * nc + pc) * T
            dM = tl.zeros((BM, BK), dtype=tl.float32)
            dt_s = tl.load(dt_ptr + cbase + j, mask=j < T, other=0.0)
            for p0 in range(0, P, BP):
                p = p0 + tl.arange(0, BP)
                pm = p < P
                dyt = tl.load(dy_ptr + pb * syb + t[:, None] * syl + head * syh + p[None, :] * syp,
                              mask=im[:, None] & pm[None, :], other=0.0)
                xs = tl.load(x_ptr + pb * sxb + s[None, :] * sxl + head * sxh + p[:, None] * sxp,
                             mask=pm[:, None] & jm[None, :], other=0.0).to(tl.float32)
                dM += dot(dyt, xs * dt_s[None, :], DTYPE, UPCAST)
            cs_t = tl.load(cs_ptr + cbase + i, mask=i < T, other=0.0)
            cs_s = tl.load(cs_ptr + cbase + j, mask=j < T, other=0.0)
            L = tl.where(keep, tl.exp(tl.minimum(cs_t[:, None] - cs_s[None, :], 0.0)), 0.0)
            dcb += dM * L
            Q = dM * CBt * L
            tl.atomic_add(dcs_ptr + cbase + i, tl.sum(Q, axis=1), mask=i < T)
            tl.atomic_add(dcs_ptr + cbase + j, -tl.sum(Q, axis=0), mask=j < T)
        tl.store(dCB_ptr + cb, dcb, mask=(i < T)[:, None] & (j < T)[None, :])


@triton.jit
def chunk_dbc(dCB_ptr, BC_ptr, C_ptr, x_ptr, dt_ptr, cs_ptr, S_ptr, seq_ptr, dy_ptr, out_ptr, dcs_ptr,
              l, h, T, nc, hpg, P, N, sbb, sbl, sbg, sbn, scb, scl, scg, scn, sxb, sxl, sxh, sxp, ssb, ssl,
              syb, syl, syh, syp, IS_C: tl.constexpr, HAS_SEQ: tl.constexpr, DTYPE: tl.constexpr,
              UPCAST: tl.constexpr,
              BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """IS_C: dC_t = sum_s dCB[t, s] B_s + sum_heads exp(cs_t) dy_t S_in (BC = B, S = S_in), and the
    off-diagonal dcs (C_ptr: C); else dB_s = sum_t dCB[t, s] C_t + sum_heads w_s X_s dS_end (BC = C,
    S = dS_end).
    out: float32 (b, l, g, N) contiguous."""
    pg = tl.program_id(1)
    pb, pc, mi, i, nn, r, im, nm = chunk_tile(nc, T, l, N, BM, BN)
    if HAS_SEQ:
        seq_ptr += pb * ssb
        seq_r = _seq(seq_ptr, r, l, ssl)
    cb = dCB_ptr + ((pb * nc + pc) * (h // hpg) + pg) * T * T
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    # 1. inside the chunk, through CB
    if IS_C:
        lo, hi = 0, tl.minimum(mi * BM + BM, T)
    else:
        lo, hi = (mi * BM // BK) * BK, T
    for k0 in range(lo, hi, BK):
        j = k0 + tl.arange(0, BK)
        o = pc * T + j
        jm = (j < T) & (o < l)
        if IS_C:
            keep = (j[None, :] <= i[:, None]) & jm[None, :] & im[:, None]
            G = tl.load(cb + i[:, None] * T + j[None, :], mask=keep, other=0.0)
        else:
            keep = (j[None, :] >= i[:, None]) & jm[None, :] & im[:, None]
            G = tl.load(cb + j[None, :] * T + i[:, None], mask=keep, other=0.0)
        if HAS_SEQ:
            keep &= _seq(seq_ptr, o, l, ssl)[None, :] == seq_r[:, None]
        G = tl.where(keep, G, 0.0)
        V = tl.load(BC_ptr + pb * sbb + o[:, None] * sbl + pg * sbg + nn[None, :] * sbn,
                    mask=jm[:, None] & nm[None, :], other=0.0)
        acc += dot(G, V, DTYPE, UPCAST)
    # 2. through the chunk's entering (IS_C) or end (else) state, per head of the group
    if IS_C:
        Cr = tl.load(C_ptr + pb * scb + r[:, None] * scl + pg * scg + nn[None, :] * scn,
                     mask=im[:, None] & nm[None, :], other=0.0).to(tl.float32)
    for hh in range(0, hpg):
        head = pg * hpg + hh
        cbase = ((pb * h + head) * nc + pc) * T
        cs_r = tl.load(cs_ptr + cbase + i, mask=i < T, other=0.0)
        if IS_C:
            scale = tl.exp(cs_r)
            if HAS_SEQ:
                scale = tl.where(seq_r == _seq(seq_ptr, pc * T - 1, l, ssl), scale, 0.0)
        else:
            scale = tl.exp(tl.minimum(tl.load(cs_ptr + cbase + T - 1) - cs_r, 0.0))
            scale *= tl.load(dt_ptr + cbase + i, mask=i < T, other=0.0)
            if HAS_SEQ:
                scale = tl.where(seq_r == _seq(seq_ptr, pc * T + T - 1, l, ssl), scale, 0.0)
        scale = tl.where(im, scale, 0.0)
        S = S_ptr + ((pb * nc + pc) * h + head) * P * N
        part = tl.zeros((BM, BN), dtype=tl.float32)
        for p0 in range(0, P, BP):
            p = p0 + tl.arange(0, BP)
            pm = p < P
            if IS_C:
                U = tl.load(dy_ptr + pb * syb + r[:, None] * syl + head * syh + p[None, :] * syp,
                            mask=im[:, None] & pm[None, :], other=0.0)
            else:
                U = tl.load(x_ptr + pb * sxb + r[:, None] * sxl + head * sxh + p[None, :] * sxp,
                            mask=im[:, None] & pm[None, :], other=0.0)
            St = tl.load(S + p[:, None] * N + nn[None, :], mask=pm[:, None] & nm[None, :], other=0.0)
            part += dot(U, St, DTYPE, UPCAST)
        part *= scale[:, None]
        acc += part
        if IS_C:
            tl.atomic_add(dcs_ptr + cbase + i, tl.sum(part * Cr, axis=1), mask=i < T)
    tl.store(out_ptr + ((pb * l + r[:, None]) * (h // hpg) + pg) * N + nn[None, :], acc,
             mask=im[:, None] & nm[None, :])
