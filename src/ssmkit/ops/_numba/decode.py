"""One decoding step of the Mamba and Mamba-2 mixers on CPU (numba), in place, for the layers' `step_`.

    Mamba:   conv_step_ (conv update + silu) -> x_proj, dt_proj (PyTorch matmuls) ->
             selective_state_update_: softplus(delta + bias), h = exp(dt A) h + dt B u, C h + D u, gate.
    Mamba-2: mamba2_step_: conv update of x, B, C; softplus(dt + bias) clamped; S = exp(dt A) S + dt x B;
             y = S C + D x; then the gated group RMSNorm (or the plain gate): one kernel per token
             between in_proj and out_proj (the PyTorch matmuls).
Inner loops run over 1-D/2-D views of the state rows (4-D indexing there kept LLVM from
vectorizing: Mamba-2-130M's layer step took 270 us, 100 us with views, 1 thread). The states are
overwritten in place (the caller owns them: Mixer.step_); nothing is allocated but y.
Results equal the layers' unfused step (the reference ops at length 1) to float32 rounding: Mamba's
A = -exp(A_log) once per layer (`mamba_prepared`, kept by ssmkit.ops._decode), exp(dt A) by `vexp`,
softplus and silu by ssmkit.ops._numba.numerics, sums in float32 (the norm's mean square in float64,
so it cannot overflow where the reference rescales by max|x|).
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

__all__ = [
    "PARALLEL_ABOVE", "array", "conv_step_", "mamba2_prepared", "mamba2_step_", "mamba_prepared", "rms_norm",
    "selective_state_update_",
]


def array(t: torch.Tensor | None) -> np.ndarray:
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


def rms_norm(x: torch.Tensor, weight: np.ndarray, eps: float) -> torch.Tensor:
    """x (..., d) float32, weight (d,) -> x rsqrt(mean(x^2) + eps) weight, the mean square in float64."""
    out = torch.empty_like(x)
    d = x.shape[-1]
    _rms_rows(x.detach().reshape(-1, d).numpy(), weight, float(eps), out.view(-1, d).numpy())
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


def conv_step_(x: torch.Tensor, conv_state: torch.Tensor, weight: np.ndarray, bias: np.ndarray,
               silu_on: bool):
    """x (b, d) float32, conv_state (b, d, k-1) written in place, weight (d, k), bias (d,) or empty
    -> the conv output (b, d) (silu applied if `silu_on`)."""
    out = torch.empty_like(x)
    _conv_rows(array(x), array(conv_state), weight, bias, silu_on, out.numpy())
    return out


# ---- Mamba: the selective state update ------------------------------------------------------------
@njit(fastmath=True)
def _ssu_row(h, u, delta, A, B, C, D, z, bias, do_softplus, i, c0, c1, y):
    """Channels c0..c1 of batch row i: h (b, d, n) updated, y (b, d) written; A = -exp(A_log).
    Three loops over the channels (dt into y; the state; the gate) rather than one: the scalar
    softplus and silu then vectorize across channels (Mamba-130M's layer: 75 -> 43 us, 1 thread)."""
    d, n = A.shape
    per_group = d // B.shape[1]
    for c in range(c0, c1):  # y holds dt until the state loop overwrites it
        dt = delta[i, c] + (bias[c] if bias.size else ZERO)
        y[i, c] = softplus(dt) if do_softplus else dt
    h2, B2, C2 = h[i], B[i], C[i]  # 2-D views: the inner loop vectorizes
    for c in range(c0, c1):
        g = c // per_group
        dt = y[i, c]
        du = dt * u[i, c]
        acc = ZERO
        for s in range(n):
            v = vexp(dt * A[c, s]) * h2[c, s] + du * B2[g, s]
            h2[c, s] = v
            acc += v * C2[g, s]
        y[i, c] = acc + (D[c] * u[i, c] if D.size else ZERO)
    if z.size:
        for c in range(c0, c1):
            y[i, c] *= silu(z[i, c])


@njit(fastmath=True)
def _ssu_serial(h, u, delta, A, B, C, D, z, bias, do_softplus, y):
    for i in range(h.shape[0]):
        _ssu_row(h, u, delta, A, B, C, D, z, bias, do_softplus, i, 0, h.shape[1], y)


@njit(parallel=True, fastmath=True)
def _ssu_parallel(h, u, delta, A, B, C, D, z, bias, do_softplus, y):
    b, d = h.shape[0], h.shape[1]
    blk = 64
    nb = (d + blk - 1) // blk
    for job in prange(b * nb):
        i, c0 = job // nb, (job % nb) * blk
        _ssu_row(h, u, delta, A, B, C, D, z, bias, do_softplus, i, c0, min(d, c0 + blk), y)


def mamba_prepared(conv_weight, conv_bias, A_log, D, delta_bias) -> tuple:
    """What Mamba's step reads besides its input and state: conv weight (d, k) and bias, A = -exp(A_log)
    (d, n), D and delta_bias (d,) or empty, as arrays (ssmkit.ops._decode keeps them per layer)."""
    A = -np.exp(array(A_log).astype(np.float32))
    return array(conv_weight), array(conv_bias), A, array(D), array(delta_bias)


def selective_state_update_(h, u, delta, B, C, z, prepared: tuple, delta_softplus: bool = True):
    """h (b, d, n) float32 written in place; u, delta, z (b, d) (z None: no gate); B, C (b, n) or
    (b, g, n); prepared: `mamba_prepared` -> y (b, d)."""
    _, _, A, D, bias = prepared
    B3, C3 = (B[:, None] if B.dim() == 2 else B), (C[:, None] if C.dim() == 2 else C)
    y = torch.empty_like(u)
    fn = _ssu_parallel if h.numel() > PARALLEL_ABOVE else _ssu_serial
    fn(array(h), array(u), array(delta), A, array(B3), array(C3), D, array(z), bias, bool(delta_softplus),
       y.numpy())
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
    Bg, Cg = xbc[b0 : b0 + N], xbc[c0 : c0 + N]
    for r in range(P):
        xr = xbc[j * P + r]
        dx = dt * xr
        acc = ZERO
        row = S[i, j, r]  # 1-D views: the inner loop vectorizes (4-D indexing there ran ~6x slower)
        for s in range(N):
            v = a * row[s] + dx * Bg[s]
            row[s] = v
            acc += v * Cg[s]
        if D.size == H:
            acc += D[j] * xr
        elif D.size:
            acc += D[j * P + r] * xr
        y[i, j * P + r] = acc


@njit(fastmath=True)
def _m2_finish(zxbcdt, norm_w, eps, group, gate, i, y):
    """Row i of y: times silu(z) (gate 1: before the norm, 2: after it, 0: none) and RMSNorm within
    groups of `group` channels times norm_w (if given)."""
    d_inner = y.shape[1]
    if gate == 1:
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
    if gate == 2:
        for c in range(d_inner):
            y[i, c] *= silu(zxbcdt[i, c])


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


def mamba2_prepared(conv_weight, conv_bias, dt_bias, A_log, D, *, ngroups: int, dt_limit=(0.0, float("inf")),
                    norm_weight=None, norm_eps=1e-5, group_size=None, gate=True,
                    norm_before_gate=False) -> tuple:
    """What Mamba-2's step reads besides in_proj's output and the state, as arrays and scalars:
    conv_weight (conv_dim, k); conv_bias (conv_dim,) or None; dt_bias, A_log (H,); D (H,) or (H, P) or
    None; norm_weight (d_inner,): the gated group RMSNorm RMSNorm_groups(y silu(z)) norm_weight (groups
    of group_size channels; with norm_before_gate RMSNorm_groups(y) norm_weight silu(z)), else y silu(z)
    if `gate`, else y (ssmkit.ops._decode keeps it per layer)."""
    mode = 0 if not gate else 2 if norm_before_gate and norm_weight is not None else 1
    return (array(conv_weight), array(conv_bias), array(dt_bias), array(A_log),
            array(None if D is None else D.reshape(-1)), float(dt_limit[0]), float(dt_limit[1]),
            array(norm_weight), float(norm_eps), int(group_size or 0), mode, int(ngroups))


def mamba2_step_(zxbcdt, conv_state, ssm_state, prepared: tuple):
    """zxbcdt (b, 2 d_inner + 2 G N + H): in_proj's output (z, x, B, C, dt); conv_state
    (b, d_inner + 2 G N, k-1) and ssm_state (b, H, P, N) float32, both written in place; prepared:
    `mamba2_prepared` -> (b, d_inner)."""
    b, H, P, N = ssm_state.shape
    conv_w, conv_b, dt_bias, A_log, D, lo, hi, norm_w, eps, group, gate, G = prepared
    y = torch.empty(b, H * P, dtype=torch.float32)
    fn = _m2_parallel if ssm_state.numel() > PARALLEL_ABOVE else _m2_serial
    zx = zxbcdt if zxbcdt.stride(-1) == 1 else zxbcdt.contiguous()
    fn(array(zx), array(conv_state), conv_w, conv_b, dt_bias, A_log, D, lo, hi, norm_w, eps, group or H * P,
       gate, G, array(ssm_state), y.numpy())
    return y
