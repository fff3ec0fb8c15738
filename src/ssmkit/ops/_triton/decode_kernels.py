"""Triton kernels of one decoding step (imports Triton; see ssmkit.ops._triton.decode)."""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops._triton.common import silu, softplus


@triton.jit
def selective_state_update(h_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                           new_ptr, d, n, chans_per_group, shb, shd, shn, sub, sud, sdb, sdd, sad, san,
                           sbb, sbg, sbn, scb, scg, scn, szb, szd, syb, syd,
                           HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """Mamba's scan for one token: h' = exp(delta A) h + delta B u; y = (C h' + D u) silu(z).
    h' goes to new_ptr (float32, contiguous (b, d, n)); h is not modified."""
    pb, pd = tl.program_id(0), tl.program_id(1)
    c = pd * BD + tl.arange(0, BD)
    s = tl.arange(0, BN)
    cm, sm = c < d, s < n
    m2 = cm[:, None] & sm[None, :]
    grp = c // chans_per_group
    h = tl.load(h_ptr + pb * shb + c[:, None] * shd + s[None, :] * shn, mask=m2, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + pb * sub + c * sud, mask=cm, other=0.0).to(tl.float32)
    dl = tl.load(delta_ptr + pb * sdb + c * sdd, mask=cm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dl += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dl = softplus(dl)
    A = tl.load(A_ptr + c[:, None] * sad + s[None, :] * san, mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + pb * sbb + grp[:, None] * sbg + s[None, :] * sbn, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pb * scb + grp[:, None] * scg + s[None, :] * scn, mask=m2, other=0.0).to(tl.float32)
    h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bv          # ZOH for A, Euler for B
    tl.store(new_ptr + (pb * d + c[:, None]) * n + s[None, :], h, mask=m2)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + c, mask=cm, other=0.0).to(tl.float32) * u
    if HAS_Z:
        y *= silu(tl.load(z_ptr + pb * szb + c * szd, mask=cm, other=0.0).to(tl.float32))
    tl.store(y_ptr + pb * syb + c * syd, y.to(y_ptr.dtype.element_ty), mask=cm)


@triton.jit
def _conv_channels(xbc_ptr, cs_ptr, w_ptr, bias_ptr, new_cs_ptr, c, cm, wm, sxd, scd, sck, swd, swk, snd, snk,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """silu of the causal conv's next output for channels c (rounded to the input's dtype, as the
    unfused step's conv output is); the shifted conv state of the channels where wm is written."""
    x = tl.load(xbc_ptr + c * sxd, mask=cm, other=0.0)
    acc = tl.load(w_ptr + c * swd + (K - 1) * swk, mask=cm, other=0.0).to(tl.float32) * x.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    for j in tl.static_range(K - 1):
        v = tl.load(cs_ptr + c * scd + j * sck, mask=cm, other=0.0)
        acc += tl.load(w_ptr + c * swd + j * swk, mask=cm, other=0.0).to(tl.float32) * v.to(tl.float32)
        if j > 0:
            tl.store(new_cs_ptr + c * snd + (j - 1) * snk, v.to(new_cs_ptr.dtype.element_ty), mask=wm)
    if K > 1:
        tl.store(new_cs_ptr + c * snd + (K - 2) * snk, x.to(new_cs_ptr.dtype.element_ty), mask=wm)
    return silu(acc).to(xbc_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def mamba2_step(xbc_ptr, cs_ptr, w_ptr, cbias_ptr, dt_ptr, dt_bias_ptr, A_ptr, D_ptr, z_ptr, h_ptr,
                y_ptr, new_cs_ptr, new_h_ptr, H, P, G, N, d_inner, lo, hi,
                sxb, sxd, scb, scd, sck, swd, swk, sdtb, sdth, szb, szd, shb, shh, shp, shn, syb, syd,
                snb, snd, snk,
                K: tl.constexpr, HAS_CBIAS: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """Mamba-2's step for one (row, head): conv update of the head's x channels and its group's B, C
    channels, dt = clamp(softplus(dt + dt_bias)), state' = exp(dt A) state + dt x B^T,
    y = (state' C + D x) [* silu(z)]."""
    pb, ph = tl.program_id(0), tl.program_id(1)
    hpg = H // G
    g = ph // hpg
    p, s = tl.arange(0, BP), tl.arange(0, BN)
    pm, sm = p < P, s < N
    xbc_ptr += pb * sxb
    cs_ptr += pb * scb
    new_cs_ptr += pb * snb
    cx = ph * P + p
    x = _conv_channels(xbc_ptr, cs_ptr, w_ptr, cbias_ptr, new_cs_ptr, cx, pm, pm, sxd, scd, sck, swd, swk,
                       snd, snk, K, HAS_CBIAS)
    own = sm & ((s * 0 + ph % hpg) == 0)               # B, C: computed by every head, stored by the first
    cb = d_inner + g * N + s
    Bv = _conv_channels(xbc_ptr, cs_ptr, w_ptr, cbias_ptr, new_cs_ptr, cb, sm, own, sxd, scd, sck, swd, swk,
                        snd, snk, K, HAS_CBIAS)
    Cv = _conv_channels(xbc_ptr, cs_ptr, w_ptr, cbias_ptr, new_cs_ptr, cb + G * N, sm, own, sxd, scd, sck,
                        swd, swk, snd, snk, K, HAS_CBIAS)
    dt = tl.load(dt_ptr + pb * sdtb + ph * sdth).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + ph).to(tl.float32)
    dt = tl.minimum(tl.maximum(softplus(dt), lo), hi)
    decay = tl.exp(dt * tl.load(A_ptr + ph).to(tl.float32))
    m2 = pm[:, None] & sm[None, :]
    h = tl.load(h_ptr + pb * shb + ph * shh + p[:, None] * shp + s[None, :] * shn, mask=m2, other=0.0)
    h = decay * h.to(tl.float32) + (dt * x)[:, None] * Bv[None, :]
    tl.store(new_h_ptr + ((pb * H + ph) * P + p[:, None]) * N + s[None, :], h, mask=m2)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        if D_PER_P:
            y += tl.load(D_ptr + ph * P + p, mask=pm, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + ph).to(tl.float32) * x
    if HAS_Z:
        y *= silu(tl.load(z_ptr + pb * szb + (ph * P + p) * szd, mask=pm, other=0.0).to(tl.float32))
    tl.store(y_ptr + pb * syb + (ph * P + p) * syd, y.to(y_ptr.dtype.element_ty), mask=pm)
