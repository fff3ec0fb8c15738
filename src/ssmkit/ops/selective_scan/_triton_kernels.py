"""Triton kernels of the selective scan (imports Triton; see ssmkit.ops.selective_scan.triton).

One program owns BD channels of one batch row (all in one group of B and C) and walks the sequence in
chunks of T steps, the state h (BD, N) held in registers between chunks. Inside a chunk the recurrence
h_t = dA_t h_{t-1} + dBu_t is an associative scan over T (ZOH for A: dA = exp(delta A); Euler for B:
dBu = delta B u), so the chunk's T steps run in parallel: a (BD, N, T) tile, never written out.

The forward writes y * silu(z) (+ D u) and the final state, and, when a backward will follow, the
state entering each chunk (b, d, chunks, N): the backward walks the chunks last to first, recomputes
each chunk's states from its entering state, and runs the adjoint recurrence
    g_t = C_t dy_t + dA_{t+1} g_{t+1}            (g_t = dL/dh_t; the last one also gets dL/dfinal)
as a reverse scan. Then, with dA_t h_{t-1} = h_t - dBu_t (no shifted register tile needed):
    du_t = sum_n g dt B + D dy;  ddelta_t = sum_n g (B u + A (h_t - dBu_t));  dA = sum_t g dt (h_t - dBu_t)
    dB_t = sum_c g dt u;  dC_t = sum_c dy h_t      (summed over the group's channels: atomics)
and d initial_state = dA_0 g_0.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops._triton.common import scan_combine, sigmoid, silu, silu_grad, softplus


@triton.jit
def _delta(delta_ptr, bias, c, t, cm, tm, sdd, sdl, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (BD, T) as the scan uses it (bias, softplus), 0 outside the sequence; also the raw sum."""
    raw = tl.load(delta_ptr + c[:, None] * sdd + t[None, :] * sdl, mask=cm[:, None] & tm[None, :],
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dl = raw
    if SOFTPLUS:
        dl = softplus(raw)
    return tl.where(tm[None, :], dl, 0.0), raw


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, c, s, cm, sm, sad, san,
                    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A (BD, BN), delta_bias and D (BD,) of channels c, float32 (zeros where absent)."""
    A = tl.load(A_ptr + c[:, None] * sad + s[None, :] * san, mask=cm[:, None] & sm[None, :],
                other=0.0).to(tl.float32)
    bias = tl.zeros(c.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    Dv = tl.zeros(c.shape, dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=cm, other=0.0).to(tl.float32)
    return A, bias, Dv


@triton.jit
def _last(x, T: tl.constexpr):
    """x[..., T-1] of a (BD, N, T) tile."""
    return tl.sum(tl.where(tl.arange(0, T)[None, None, :] == T - 1, x, 0.0), axis=2)


@triton.jit
def _first(x, T: tl.constexpr):
    """x[..., 0] of a (BD, N, T) tile."""
    return tl.sum(tl.where(tl.arange(0, T)[None, None, :] == 0, x, 0.0), axis=2)


@triton.jit
def scan_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
             out_ptr, hT_ptr, hs_ptr,
             d, n, l, chans_per_group,
             sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbg, sbn, sbl, scb, scg, scn, scl,
             szb, szd, szl, s0b, s0d, s0n, sob, sod, sol,
             HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr,
             BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    pb, pd = tl.program_id(0), tl.program_id(1)
    c = pd * BD + tl.arange(0, BD)
    s = tl.arange(0, BN)
    cm, sm = c < d, s < n
    grp = (pd * BD) // chans_per_group
    u_ptr += pb * sub
    delta_ptr += pb * sdb
    z_ptr += pb * szb
    out_ptr += pb * sob
    B_ptr += pb * sbb + grp * sbg
    C_ptr += pb * scb + grp * scg
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, c, s, cm, sm, sad, san, HAS_BIAS, HAS_D)
    h = tl.zeros((BD, BN), dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pb * s0b + c[:, None] * s0d + s[None, :] * s0n,
                    mask=cm[:, None] & sm[None, :], other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(l, T)
    for k in range(0, n_chunks):
        if SAVE_STATES:
            tl.store(hs_ptr + ((pb * d + c[:, None]) * n_chunks + k) * n + s[None, :], h,
                     mask=cm[:, None] & sm[None, :])
        t = k * T + tl.arange(0, T)
        tm = t < l
        dl, _ = _delta(delta_ptr, bias, c, t, cm, tm, sdd, sdl, HAS_BIAS, SOFTPLUS)      # (BD, T)
        u = tl.load(u_ptr + c[:, None] * sud + t[None, :] * sul, mask=cm[:, None] & tm[None, :],
                    other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + s[:, None] * sbn + t[None, :] * sbl, mask=sm[:, None] & tm[None, :],
                     other=0.0).to(tl.float32)                                              # (BN, T)
        Ct = tl.load(C_ptr + s[:, None] * scn + t[None, :] * scl, mask=sm[:, None] & tm[None, :],
                     other=0.0).to(tl.float32)
        dA = tl.exp(dl[:, None, :] * A[:, :, None])                                         # (BD, BN, T)
        dBu = (dl * u)[:, None, :] * Bt[None, :, :]
        aa, hh = tl.associative_scan((dA, dBu), 2, scan_combine)
        hh += aa * h[:, :, None]
        h = _last(hh, T)
        y = tl.sum(hh * Ct[None, :, :], axis=1)                                             # (BD, T)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + c[:, None] * szd + t[None, :] * szl, mask=cm[:, None] & tm[None, :],
                         other=0.0).to(tl.float32)
            y *= silu(zt)
        tl.store(out_ptr + c[:, None] * sod + t[None, :] * sol, y.to(out_ptr.dtype.element_ty),
                 mask=cm[:, None] & tm[None, :])
    tl.store(hT_ptr + (pb * d + c[:, None]) * n + s[None, :], h, mask=cm[:, None] & sm[None, :])


@triton.jit
def scan_bwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, hs_ptr, dout_ptr, dhT_ptr,
             du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, dh0_ptr,
             d, n, l, n_groups, chans_per_group,
             sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbg, sbn, sbl, scb, scg, scn, scl,
             szb, szd, szl, sgb, sgd, sgl,
             HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             HAS_DHT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):
    """Gradients of scan_fwd. dout, du, ddelta, dz share the strides sg*; dB, dC are float32
    (b, g, n, l) contiguous; dA (d, n), dD, dbias (d,) float32 accumulated with atomics."""
    pb, pd = tl.program_id(0), tl.program_id(1)
    c = pd * BD + tl.arange(0, BD)
    s = tl.arange(0, BN)
    cm, sm = c < d, s < n
    cs_mask = cm[:, None] & sm[None, :]
    grp = (pd * BD) // chans_per_group
    u_ptr += pb * sub
    delta_ptr += pb * sdb
    z_ptr += pb * szb
    dout_ptr += pb * sgb
    du_ptr += pb * sgb
    ddelta_ptr += pb * sgb
    dz_ptr += pb * sgb
    B_ptr += pb * sbb + grp * sbg
    C_ptr += pb * scb + grp * scg
    dB_ptr += (pb * n_groups + grp) * n * l
    dC_ptr += (pb * n_groups + grp) * n * l
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, c, s, cm, sm, sad, san, HAS_BIAS, HAS_D)
    g_next = tl.zeros((BD, BN), dtype=tl.float32)                # g at the first step of the next chunk
    if HAS_DHT:
        g_next = tl.load(dhT_ptr + (pb * d + c[:, None]) * n + s[None, :], mask=cs_mask, other=0.0)
        g_next = g_next.to(tl.float32)
    dA_acc = tl.zeros((BD, BN), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    dbias_acc = tl.zeros((BD,), dtype=tl.float32)
    dA_first = tl.zeros((BD, BN), dtype=tl.float32)
    n_chunks = tl.cdiv(l, T)
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        t = k * T + tl.arange(0, T)
        tm = t < l
        ctm = cm[:, None] & tm[None, :]
        stm = sm[:, None] & tm[None, :]
        h_in = tl.load(hs_ptr + ((pb * d + c[:, None]) * n_chunks + k) * n + s[None, :], mask=cs_mask,
                       other=0.0)
        dl, raw = _delta(delta_ptr, bias, c, t, cm, tm, sdd, sdl, HAS_BIAS, SOFTPLUS)
        dl_next, _ = _delta(delta_ptr, bias, c, t + 1, cm, (t + 1) < l, sdd, sdl, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + c[:, None] * sud + t[None, :] * sul, mask=ctm, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + s[:, None] * sbn + t[None, :] * sbl, mask=stm, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + s[:, None] * scn + t[None, :] * scl, mask=stm, other=0.0).to(tl.float32)
        # 1. recompute the chunk's states
        dA = tl.exp(dl[:, None, :] * A[:, :, None])                                         # (BD, BN, T)
        dBu = (dl * u)[:, None, :] * Bt[None, :, :]
        aa, hh = tl.associative_scan((dA, dBu), 2, scan_combine)
        hh += aa * h_in[:, :, None]
        # 2. the output's gradient before the gate and D
        dy = tl.load(dout_ptr + c[:, None] * sgd + t[None, :] * sgl, mask=ctm, other=0.0).to(tl.float32)
        if HAS_Z:
            y = tl.sum(hh * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            zt = tl.load(z_ptr + c[:, None] * szd + t[None, :] * szl, mask=ctm, other=0.0).to(tl.float32)
            tl.store(dz_ptr + c[:, None] * sgd + t[None, :] * sgl,
                     (dy * y * silu_grad(zt)).to(dz_ptr.dtype.element_ty), mask=ctm)
            dy *= silu(zt)
        # 3. the adjoint recurrence g_t = C_t dy_t + dA_{t+1} g_{t+1}, as a reverse scan
        dA_next = tl.exp(dl_next[:, None, :] * A[:, :, None])
        ag, g = tl.associative_scan((dA_next, Ct[None, :, :] * dy[:, None, :]), 2, scan_combine,
                                    reverse=True)
        g += ag * g_next[:, :, None]
        g_next = _first(g, T)
        dA_first = _first(dA, T)
        # 4. gradients of this chunk's inputs
        decayed = hh - dBu                                                                  # dA_t h_{t-1}
        gdl = g * dl[:, None, :]
        du = tl.sum(gdl * Bt[None, :, :], axis=1)
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        ddl = tl.sum(g * (Bt[None, :, :] * u[:, None, :] + A[:, :, None] * decayed), axis=1)  # (BD, T)
        if SOFTPLUS:
            ddl *= sigmoid(raw)
        ddl = tl.where(tm[None, :], ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        dA_acc += tl.sum(gdl * decayed, axis=2)
        tl.store(du_ptr + c[:, None] * sgd + t[None, :] * sgl, du.to(du_ptr.dtype.element_ty), mask=ctm)
        tl.store(ddelta_ptr + c[:, None] * sgd + t[None, :] * sgl, ddl.to(ddelta_ptr.dtype.element_ty),
                 mask=ctm)
        tl.atomic_add(dB_ptr + s[:, None] * l + t[None, :], tl.sum(gdl * u[:, None, :], axis=0), mask=stm)
        tl.atomic_add(dC_ptr + s[:, None] * l + t[None, :], tl.sum(hh * dy[:, None, :], axis=0), mask=stm)
    tl.store(dh0_ptr + (pb * d + c[:, None]) * n + s[None, :], dA_first * g_next, mask=cs_mask)
    tl.atomic_add(dA_ptr + c[:, None] * n + s[None, :], dA_acc, mask=cs_mask)
    if HAS_D:
        tl.atomic_add(dD_ptr + c, dD_acc, mask=cm)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + c, dbias_acc, mask=cm)
