"""One decoding step of the Mamba and Mamba-2 mixers on CPU (numba), in place, for the layers' `step_`.

    Mamba:   conv_step_ (conv update + silu) -> x_proj, dt_proj (PyTorch matmuls) ->
             selective_state_update_: softplus(delta + bias), h = exp(dt A) h + dt B u, C h + D u, gate.
    Mamba-2: mamba2_step_: conv update of x, B, C; softplus(dt + bias) clamped; S = exp(dt A) S + dt x B;
             y = S C + D x; then the gated group RMSNorm (or the plain gate): one kernel per token
             between in_proj and out_proj (the PyTorch matmuls).
The states are overwritten in place (the caller owns them: Mixer.step_); nothing is allocated but y.
Results equal the layers' unfused step (the reference ops at length 1) to float32 rounding: A = -exp(A_log)
and exp(dt A) by `vexp`, softplus and silu by ssmkit.ops._numba.numerics, sums in float32 (the norm's
mean square in float64, so it cannot overflow where the reference rescales by max|x|).
Whether a layer takes this path: ssmkit.ops._decode.numba_step. RMSNorm takes `rms_norm` for a few
float32 rows without gradients (ssmkit.ops._decode.numba_norm).
Threads: a batch-1 step of a 130M model is ~25k-200k state elements, microseconds of work: the kernels
run on the calling thread below PARALLEL_ABOVE state elements and over rows with numba's threads above
it. Measured (2 threads, random-weight 130M models, decode ms/token, serial vs parallel): Mamba-2 (196k
per layer) 29.4 vs 26.8 on an idle machine, 66-67 vs 63-68 beside two busy processes; Mamba (25k)
26.3-26.9 either way, so the threshold sits between them.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.numerics import ZERO, silu, softplus, vexp

PARALLEL_ABOVE = 1 << 17  # state elements (b x d x n, or b x H x P x N) per step

__all__ = ["PARALLEL_ABOVE", "conv_step_", "mamba2_step_", "rms_norm", "selective_state_update_"]


def _np(t: torch.Tensor | None) -> np.ndarray:
    """A float32 tensor's array (no copy); None -> an empty array (the kernels test .size)."""
    if t is None:
        return np.empty(0, np.float32)
    return t.detach().numpy()


# ---- RMSNorm of a few rows (the blocks' norms while decoding) -------------------------------------
@njit(fastmath=True)
def _rms_rows(x, w, eps, out):
    d = x.shape[1]
    for i in range(x.shape[0]):
        ss = 0.0  # float64: x^2 cannot overflow
        for c in range(d):
            ss += np.float64(x[i, c]) * np.float64(x[i, c])
        inv = np.float32(1.0 / np.sqrt(ss / d + eps))
        for c in range(d):
            out[i, c] = x[i, c] * inv * w[c]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., d) float32 -> x rsqrt(mean(x^2) + eps) weight, the mean square in float64."""
    out = torch.empty_like(x)
    d = x.shape[-1]
    _rms_rows(_np(x.reshape(-1, d)), _np(weight), float(eps), out.view(-1, d).numpy())
    return out


# ---- the causal conv update (both mixers) -------------------------------------------------------
@njit(inline="always", fastmath=True)
def _conv_channel(x, state, w, bias, c):
    """The conv output of channel c for the new input x; the channel's state shifted left, x appended."""
    k = w.shape[1]
    acc = bias[c] if bias.size else ZERO
    for j in range(k - 1):
        acc += w[c, j] * state[c, j]
    acc += w[c, k - 1] * x
    for j in range(k - 2):
        state[c, j] = state[c, j + 1]
    if k > 1:
        state[c, k - 2] = x
    return acc


@njit(fastmath=True)
def _conv_rows(x, state, w, bias, silu_on, out):
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            v = _conv_channel(x[i, c], state[i], w, bias, c)
            out[i, c] = silu(v) if silu_on else v


def conv_step_(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias, silu_on: bool):
    """x (b, d) float32, conv_state (b, d, k-1) written in place, weight (d, k), bias (d,) or None
    -> the conv output (b, d) (silu applied if `silu_on`)."""
    out = torch.empty_like(x)
    _conv_rows(_np(x), _np(conv_state), _np(weight), _np(bias), silu_on, out.numpy())
    return out


# ---- Mamba: the selective state update ------------------------------------------------------------
@njit(fastmath=True)
def _ssu_row(h, u, delta, A_log, B, C, D, z, bias, do_softplus, i, c0, c1, y):
    """Channels c0..c1 of batch row i: h (b, d, n) updated, y (b, d) written."""
    d, n = A_log.shape
    per_group = d // B.shape[1]
    for c in range(c0, c1):
        g = c // per_group
        dt = delta[i, c] + (bias[c] if bias.size else ZERO)
        if do_softplus:
            dt = softplus(dt)
        du = dt * u[i, c]
        acc = ZERO
        for s in range(n):
            a = vexp(-dt * vexp(A_log[c, s]))
            v = a * h[i, c, s] + du * B[i, g, s]
            h[i, c, s] = v
            acc += v * C[i, g, s]
        if D.size:
            acc += D[c] * u[i, c]
        if z.size:
            acc *= silu(z[i, c])
        y[i, c] = acc


@njit(fastmath=True)
def _ssu_serial(h, u, delta, A_log, B, C, D, z, bias, do_softplus, y):
    for i in range(h.shape[0]):
        _ssu_row(h, u, delta, A_log, B, C, D, z, bias, do_softplus, i, 0, h.shape[1], y)


@njit(parallel=True, fastmath=True)
def _ssu_parallel(h, u, delta, A_log, B, C, D, z, bias, do_softplus, y):
    b, d = h.shape[0], h.shape[1]
    blk = 64
    nb = (d + blk - 1) // blk
    for job in prange(b * nb):
        i, c0 = job // nb, (job % nb) * blk
        _ssu_row(h, u, delta, A_log, B, C, D, z, bias, do_softplus, i, c0, min(d, c0 + blk), y)


def selective_state_update_(h, u, delta, A_log, B, C, *, D=None, z=None, delta_bias=None,
                            delta_softplus=False):
    """h (b, d, n) float32 written in place; u, delta, z (b, d); A_log (d, n) (A = -exp(A_log));
    B, C (b, n) or (b, g, n); D, delta_bias (d,) -> y (b, d)."""
    B3, C3 = (B[:, None] if B.dim() == 2 else B), (C[:, None] if C.dim() == 2 else C)
    y = torch.empty_like(u)
    fn = _ssu_parallel if h.numel() > PARALLEL_ABOVE else _ssu_serial
    fn(_np(h), _np(u), _np(delta), _np(A_log), _np(B3), _np(C3), _np(D), _np(z), _np(delta_bias),
       bool(delta_softplus), y.numpy())
    return y


# ---- Mamba-2: conv, SSD state update, output, gated group norm ------------------------------------
@njit(fastmath=True)
def _m2_head(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, S, H, G, N, i, j, xbc, y):
    """Head j of batch row i: its x channels through the conv (B and C already in xbc), S[i, j]
    updated, y[i, j*P:(j+1)*P] = S C + D x (before the gate)."""
    P = S.shape[2]
    d_inner = H * P
    gi = j // (H // G)
    for r in range(P):  # this head's x channels
        c = j * P + r
        xbc[c] = silu(_conv_channel(zxbcdt[i, d_inner + c], conv_state[i], conv_w, conv_b, c))
    dt = softplus(zxbcdt[i, 2 * d_inner + 2 * G * N + j] + (dt_bias[j] if dt_bias.size else ZERO))
    dt = min(max(dt, np.float32(lo)), np.float32(hi))
    a = vexp(-dt * vexp(A_log[j]))
    b0, c0 = d_inner + gi * N, d_inner + G * N + gi * N
    for r in range(P):
        xr = xbc[j * P + r]
        dx = dt * xr
        acc = ZERO
        for s in range(N):
            v = a * S[i, j, r, s] + dx * xbc[b0 + s]
            S[i, j, r, s] = v
            acc += v * xbc[c0 + s]
        if D.size == H:
            acc += D[j] * xr
        elif D.size:
            acc += D[j * P + r] * xr
        y[i, j * P + r] = acc


@njit(fastmath=True)
def _m2_finish(zxbcdt, norm_w, eps, group, gate, i, y):
    """Row i of y: times silu(z), then RMSNorm within groups of `group` channels times norm_w (if given)."""
    d_inner = y.shape[1]
    if gate:
        for c in range(d_inner):
            y[i, c] *= silu(zxbcdt[i, c])
    if norm_w.size:
        for g0 in range(0, d_inner, group):
            ss = 0.0
            for c in range(g0, g0 + group):
                ss += np.float64(y[i, c]) * np.float64(y[i, c])
            inv = np.float32(1.0 / np.sqrt(ss / group + eps))
            for c in range(g0, g0 + group):
                y[i, c] = y[i, c] * inv * norm_w[c]


@njit(fastmath=True)
def _m2_bc(zxbcdt, conv_state, conv_w, conv_b, d_inner, GN2, i, xbc):
    """B and C channels of batch row i through the conv (shared by the heads of a group)."""
    for c in range(d_inner, d_inner + GN2):
        xbc[c] = silu(_conv_channel(zxbcdt[i, d_inner + c], conv_state[i], conv_w, conv_b, c))


@njit(fastmath=True)
def _m2_serial(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, norm_w, eps, group, gate, G, S,
               y):
    b, H, P, N = S.shape
    d_inner = H * P
    xbc = np.empty(d_inner + 2 * G * N, np.float32)
    for i in range(b):
        _m2_bc(zxbcdt, conv_state, conv_w, conv_b, d_inner, 2 * G * N, i, xbc)
        for j in range(H):
            _m2_head(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, S, H, G, N, i, j, xbc, y)
        _m2_finish(zxbcdt, norm_w, eps, group, gate, i, y)


@njit(parallel=True, fastmath=True)
def _m2_parallel(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, norm_w, eps, group, gate, G,
                 S, y):
    b, H, P, N = S.shape
    d_inner = H * P
    xbc = np.empty((b, d_inner + 2 * G * N), np.float32)
    for i in prange(b):
        _m2_bc(zxbcdt, conv_state, conv_w, conv_b, d_inner, 2 * G * N, i, xbc[i])
    for job in prange(b * H):
        i, j = job // H, job % H
        _m2_head(zxbcdt, conv_state, conv_w, conv_b, dt_bias, A_log, D, lo, hi, S, H, G, N, i, j, xbc[i], y)
    for i in prange(b):
        _m2_finish(zxbcdt, norm_w, eps, group, gate, i, y)


def mamba2_step_(zxbcdt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D, *, ngroups: int,
                 dt_limit=(0.0, float("inf")), norm_weight=None, norm_eps=1e-5, group_size=None, gate=True):
    """zxbcdt (b, 2 d_inner + 2 G N + H): in_proj's output (z, x, B, C, dt); conv_state
    (b, d_inner + 2 G N, k-1) and ssm_state (b, H, P, N) float32, both written in place; conv_weight
    (conv_dim, k); conv_bias (conv_dim,) or None; dt_bias, A_log (H,); D (H,) or (H, P) or None;
    norm_weight (d_inner,): the gated group RMSNorm RMSNorm_groups(y silu(z)) norm_weight (groups of
    group_size channels), else y silu(z) if `gate`, else y -> (b, d_inner)."""
    b, H, P, N = ssm_state.shape
    y = torch.empty(b, H * P, dtype=torch.float32)
    fn = _m2_parallel if ssm_state.numel() > PARALLEL_ABOVE else _m2_serial
    zx = zxbcdt if zxbcdt.stride(-1) == 1 else zxbcdt.contiguous()
    fn(_np(zx), _np(conv_state), _np(conv_weight), _np(conv_bias), _np(dt_bias), _np(A_log),
       _np(None if D is None else D.reshape(-1)), float(dt_limit[0]), float(dt_limit[1]), _np(norm_weight),
       float(norm_eps), int(group_size or H * P), bool(gate), int(ngroups), _np(ssm_state), y.numpy())
    return y
