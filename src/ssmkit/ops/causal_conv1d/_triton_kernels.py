"""Triton kernels of the depthwise causal convolution (imports Triton; see ssmkit.ops.causal_conv1d.triton).

Index m runs over xs = state ‖ x (length k-1+l): xs[m] is the state's column m for m < k-1, else
x[m-(k-1)]. Output t reads xs[t..t+k-1]: pre[t] = bias + sum_j w[j] xs[t+j]. With seq_idx a tap counts
only inside t's own sequence; the state's columns belong to the row's first sequence.
Every program owns a (BD channels) x (BL positions) tile of one batch row; tensors are read through
their strides, so a channels-last x (a slice of in_proj's output) is read in place.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops._triton.common import silu, silu_grad


@triton.jit
def _load_xs(x_ptr, init_ptr, m, c, cm, tm, sxd, sxl, sid, sil, K: tl.constexpr, HAS_INIT: tl.constexpr):
    """xs[c, m] for a (BD,) channel block and (BL,) positions m, 0 where m is outside [0, k-1+l)."""
    pos = m - (K - 1)
    v = tl.load(x_ptr + c[:, None] * sxd + pos[None, :] * sxl,
                mask=cm[:, None] & (tm & (pos >= 0))[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_ptr + c[:, None] * sid + m[None, :] * sil,
                     mask=cm[:, None] & (tm & (m >= 0) & (pos < 0))[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _seq_at(seq_ptr, m, ssl, l, K: tl.constexpr):
    """seq_idx of xs position m (the state's columns: the first sequence's)."""
    pos = tl.minimum(tl.maximum(m - (K - 1), 0), l - 1)
    return tl.load(seq_ptr + pos * ssl)


@triton.jit
def conv_fwd(x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, dy_ptr, out_ptr,
             d, l, sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, sob, sod, sol,
             K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
             SILU: tl.constexpr, GRAD: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    """out = act(pre), or with GRAD the gradient of pre: dy * act'(pre) (float32), pre recomputed."""
    pb, pd, pl = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pd * BD + tl.arange(0, BD)
    t = pl * BL + tl.arange(0, BL)
    cm, tm = c < d, t < l
    x_ptr += pb * sxb
    if HAS_INIT:
        init_ptr += pb * sib
    if HAS_SEQ:
        seq_ptr += pb * ssb
    acc = tl.zeros((BD, BL), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    if HAS_SEQ:
        seq_t = _seq_at(seq_ptr, t + K - 1, ssl, l, K)
    for j in tl.static_range(K):
        w = tl.load(w_ptr + c * swd + j * swk, mask=cm, other=0.0).to(tl.float32)
        term = w[:, None] * _load_xs(x_ptr, init_ptr, t + j, c, cm, tm, sxd, sxl, sid, sil, K, HAS_INIT)
        if HAS_SEQ:
            term = tl.where((_seq_at(seq_ptr, t + j, ssl, l, K) == seq_t)[None, :], term, 0.0)
        acc += term
    offs = pb * sob + c[:, None] * sod + t[None, :] * sol
    mask = cm[:, None] & tm[None, :]
    if GRAD:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if SILU:
            dy = dy * silu_grad(acc)
        tl.store(out_ptr + offs, dy, mask=mask)
    else:
        if SILU:
            acc = silu(acc)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_bwd(x_ptr, w_ptr, init_ptr, seq_ptr, dpre_ptr, dx_ptr, dinit_ptr, dw_ptr, dbias_ptr,
             d, l, sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, spb, spd, spl,
             sdxb, sdxd, sdxl, sdib, sdid, sdil,
             K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
             BD: tl.constexpr, BL: tl.constexpr):
    """dxs[m] = sum_j w[j] dpre[m-j] (to dx, or to d initial state for m < k-1);
    dw[j] += sum_m xs[m] dpre[m-j]; dbias += sum_t dpre[t] (atomics over batch rows and blocks)."""
    pb, pd, pm = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pd * BD + tl.arange(0, BD)
    m = pm * BL + tl.arange(0, BL)
    cm, mm = c < d, m < l + K - 1
    x_ptr += pb * sxb
    if HAS_INIT:
        init_ptr += pb * sib
    if HAS_SEQ:
        seq_ptr += pb * ssb
    dpre_ptr += pb * spb
    xs = _load_xs(x_ptr, init_ptr, m, c, cm, mm, sxd, sxl, sid, sil, K, HAS_INIT)
    if HAS_SEQ:
        seq_m = _seq_at(seq_ptr, m, ssl, l, K)
    dxs = tl.zeros((BD, BL), dtype=tl.float32)
    for j in tl.static_range(K):
        t = m - j                                           # the output that reads xs[m] through tap j
        g = tl.load(dpre_ptr + c[:, None] * spd + t[None, :] * spl,
                    mask=cm[:, None] & (mm & (t >= 0) & (t < l))[None, :], other=0.0)
        if HAS_SEQ:
            g = tl.where((_seq_at(seq_ptr, t + K - 1, ssl, l, K) == seq_m)[None, :], g, 0.0)
        w = tl.load(w_ptr + c * swd + j * swk, mask=cm, other=0.0).to(tl.float32)
        dxs += w[:, None] * g
        tl.atomic_add(dw_ptr + c * K + j, tl.sum(xs * g, axis=1), mask=cm)
    if HAS_BIAS:
        g0 = tl.load(dpre_ptr + c[:, None] * spd + m[None, :] * spl,
                     mask=cm[:, None] & (m < l)[None, :], other=0.0)
        tl.atomic_add(dbias_ptr + c, tl.sum(g0, axis=1), mask=cm)
    pos = m - (K - 1)
    tl.store(dx_ptr + pb * sdxb + c[:, None] * sdxd + pos[None, :] * sdxl,
             dxs.to(dx_ptr.dtype.element_ty), mask=cm[:, None] & (mm & (pos >= 0))[None, :])
    if HAS_INIT:
        tl.store(dinit_ptr + pb * sdib + c[:, None] * sdid + m[None, :] * sdil,
                 dxs.to(dinit_ptr.dtype.element_ty), mask=cm[:, None] & (pos < 0)[None, :])


@triton.jit
def conv_update(x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, new_ptr,
                d, sxb, sxd, ssb, ssd_, ssk, swd, swk, syb, syd, snb, snd, snk,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr):
    """One token: window = state ‖ x_t; y = act(bias + w . window); the new state is window[1:]."""
    pb, pd = tl.program_id(0), tl.program_id(1)
    c = pd * BD + tl.arange(0, BD)
    cm = c < d
    x = tl.load(x_ptr + pb * sxb + c * sxd, mask=cm, other=0.0)
    acc = tl.load(w_ptr + c * swd + (K - 1) * swk, mask=cm, other=0.0).to(tl.float32) * x.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    for j in tl.static_range(K - 1):
        s = tl.load(state_ptr + pb * ssb + c * ssd_ + j * ssk, mask=cm, other=0.0)
        acc += tl.load(w_ptr + c * swd + j * swk, mask=cm, other=0.0).to(tl.float32) * s.to(tl.float32)
        if j > 0:
            tl.store(new_ptr + pb * snb + c * snd + (j - 1) * snk, s.to(new_ptr.dtype.element_ty), mask=cm)
    if K > 1:
        tl.store(new_ptr + pb * snb + c * snd + (K - 2) * snk, x.to(new_ptr.dtype.element_ty), mask=cm)
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + pb * syb + c * syd, acc.to(y_ptr.dtype.element_ty), mask=cm)
