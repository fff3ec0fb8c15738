"""RMSNorm of many rows on CPU (numba): the prefill path of `ssmkit.layers.RMSNorm` and, with gradients,
its training path.

One pass per row, parallel over rows: the gate (if any), the mean square of each group of `group`
channels, the scale by rsqrt(mean square + eps) and the weight, where the PyTorch form makes ~8 passes
over (rows, d) tensors (a Mamba-2 layer's gated norm of 2048 x 1536 float32: ~7 ms vs ~1 ms, 2 threads).
    gate 0: out = RMSNorm_groups(x) w
    gate 1: out = RMSNorm_groups(x silu(z)) w          (Mamba-2's gated norm)
    gate 2: out = RMSNorm_groups(x) w silu(z)          (Mamba-2's norm_before_gate, Falcon-H1)
The mean square is summed in float64, where x^2 cannot overflow (the reference rescales by max|x| where
it does), so results equal the reference in `ssmkit.layers.norm` to float32 rounding. Inputs are read
where they lie: a row-strided slice (Mamba-2's gate z is a column slice of in_proj's output) comes
as a view (`ssmkit.ops._numba.arrays.rows`), not a copy.

Training (`rms_norm_rows_grad`, an autograd Function): the forward also keeps r = rsqrt(mean square +
eps) per row and group (float64); the backward recomputes v (the normalized input: x, or x silu(z)) and,
with g = dL/d(v r w) (dy, or dy silu(z) for gate 2), per group
    dv = r (g w - v r^2 mean(g w v));  dw = sum over rows of g v r
then dx = dv (gate 0, 2) or dv silu(z) (gate 1), dz = dv x silu'(z) (gate 1) or dy v r w silu'(z)
(gate 2). One pass per row each way, where autograd through the PyTorch form makes ~20 passes.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._numba import njit, num_threads, prange
from ssmkit.ops._numba.arrays import rows
from ssmkit.ops._numba.buffers import out_tensor
from ssmkit.ops._numba.numerics import ONE, sigmoid, silu

__all__ = ["rms_norm_rows", "rms_norm_rows_grad"]


@njit(parallel=True, fastmath=True)
def _rms_rows(x, x0, z, z0, w, eps, group, gate, out, r):
    """out = the norm of x's rows (gate: 0 none, 1 silu(z) before, 2 after); r (R, d / group) float64:
    keeps rsqrt(mean square + eps) of row i's group k for the backward, or (0, 0) to keep nothing."""
    R, d = out.shape
    keep = r.shape[0] > 0
    for i in prange(R):
        xi = x[i, x0: x0 + d]
        o = out[i]
        if gate == 1:
            zi = z[i, z0: z0 + d]
            for c in range(d):
                o[c] = xi[c] * silu(zi[c])
        else:
            for c in range(d):
                o[c] = xi[c]
        for k in range(d // group):
            g0 = k * group
            seg = o[g0: g0 + group]
            wg = w[g0: g0 + group]
            ss = 0.0  # float64: x^2 cannot overflow
            for c in range(group):
                ss += np.float64(seg[c]) * np.float64(seg[c])
            inv = 1.0 / np.sqrt(ss / group + eps)
            if keep:
                r[i, k] = inv
            inv32 = np.float32(inv)
            for c in range(group):
                seg[c] = seg[c] * inv32 * wg[c]
        if gate == 2:
            zi = z[i, z0: z0 + d]
            for c in range(d):
                o[c] *= silu(zi[c])


_KEEP_NOTHING = np.zeros((0, 0))


def _as_rows(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """(..., d) -> (2-D C-contiguous array whose rows hold t's rows from column col0, col0): a view for
    a contiguous tensor or a column slice of a wider one, else a copy. `rows` may answer a tensor
    whose rows are columns in memory (a transposed channels-first view, e.g. (1, l, d) of a (1, d, l))
    with its (d, rows) form: that one is copied into rows (read as rows it ran past the array's end)."""
    d = t.shape[-1]
    arr, col0, channels_last = rows(t.reshape(1, -1, d).transpose(1, 2))
    if not channels_last:
        return t.detach().float().reshape(-1, d).contiguous().numpy(), 0
    return arr, col0


def _forward(x, z, weight, eps, group, gate_after, keep: bool):
    """The norm's kernel call, shared by inference and training: (out, r: the kept inverse RMS per row
    and group, or an empty array when keep is False, gate: _rms_rows' code)."""
    d = x.shape[-1]
    xa, x0 = _as_rows(x)
    if z is None:
        za, z0, gate = xa, x0, 0
    else:
        za, z0 = _as_rows(z)
        gate = 2 if gate_after else 1
    out = out_tensor(x.shape)
    r = np.empty((xa.shape[0], d // group), dtype=np.float64) if keep else _KEEP_NOTHING
    w = weight.detach().numpy()
    _rms_rows(xa, x0, za, z0, w, float(eps), int(group), gate, out.view(-1, d).numpy(), r)
    return out, r, gate


def rms_norm_rows(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float, group: int,
                  gate_after: bool) -> torch.Tensor:
    """x, z (..., d) float32, weight (d,) -> (..., d) float32: RMSNorm within groups of `group` channels
    times weight, gated by silu(z) before the norm, or after it if gate_after (the module docstring)."""
    return _forward(x, z, weight, eps, group, gate_after, keep=False)[0]


@njit(parallel=True, fastmath=True)
def _rms_rows_backward(x, x0, z, z0, w, group, gate, r, dy, dy0, dx, dz, dwp):
    R, d = dx.shape
    nwork = dwp.shape[0]
    chunk = (R + nwork - 1) // nwork
    for job in prange(nwork):
        vb = np.empty(group, dtype=np.float32)  # the normalized input of a group
        gb = np.empty(group, dtype=np.float32)  # dL/d(v r w)
        for i in range(job * chunk, min(R, (job + 1) * chunk)):
            for k in range(d // group):
                g0 = k * group
                xs = x[i, x0 + g0: x0 + g0 + group]
                zs = z[i, z0 + g0: z0 + g0 + group]
                ds = dy[i, dy0 + g0: dy0 + g0 + group]
                ws = w[g0: g0 + group]
                dws = dwp[job, g0: g0 + group]
                dxs = dx[i, g0: g0 + group]
                dzs = dz[i, g0: g0 + group]
                if gate == 1:
                    for c in range(group):
                        vb[c] = xs[c] * silu(zs[c])
                else:
                    for c in range(group):
                        vb[c] = xs[c]
                if gate == 2:
                    for c in range(group):
                        gb[c] = ds[c] * silu(zs[c])
                else:
                    for c in range(group):
                        gb[c] = ds[c]
                dot = 0.0  # float64: with huge v, r^2 underflows float32
                for c in range(group):
                    dot += np.float64(gb[c] * ws[c]) * np.float64(vb[c])
                inv = r[i, k]
                m = np.float32(dot * inv * inv / group)
                inv32 = np.float32(inv)
                for c in range(group):
                    dws[c] += gb[c] * vb[c] * inv32
                if gate == 1:
                    for c in range(group):
                        sg = sigmoid(zs[c])
                        dv = inv32 * (gb[c] * ws[c] - vb[c] * m)
                        dxs[c] = dv * zs[c] * sg
                    for c in range(group):
                        sg = sigmoid(zs[c])
                        dv = inv32 * (gb[c] * ws[c] - vb[c] * m)
                        dzs[c] = dv * xs[c] * sg * (ONE + zs[c] * (ONE - sg))
                else:
                    for c in range(group):
                        dxs[c] = inv32 * (gb[c] * ws[c] - vb[c] * m)
                if gate == 2:
                    for c in range(group):
                        sg = sigmoid(zs[c])
                        dzs[c] = ds[c] * vb[c] * inv32 * ws[c] * sg * (ONE + zs[c] * (ONE - sg))


class _RMSNormFn(torch.autograd.Function):
    """(x, z or None, weight) -> RMSNorm_groups with the gate (see rms_norm_rows), float32."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, group, gate_after):
        out, r, gate = _forward(x, z, weight, eps, group, gate_after, keep=True)
        ctx.save_for_backward(x, z, weight)
        ctx.r, ctx.group, ctx.gate = r, int(group), gate
        return out

    @staticmethod
    def backward(ctx, dy):
        x, z, weight = ctx.saved_tensors
        d = x.shape[-1]
        xa, x0 = _as_rows(x)
        za, z0 = (xa, x0) if z is None else _as_rows(z)
        dya, dy0 = _as_rows(dy)
        dx = out_tensor(x.shape)
        dz = out_tensor(x.shape) if z is not None else dx
        dwp = np.zeros((num_threads(), d), dtype=np.float32)
        _rms_rows_backward(xa, x0, za, z0, weight.detach().numpy(), ctx.group, ctx.gate, ctx.r, dya, dy0,
                           dx.view(-1, d).numpy(), dz.view(-1, d).numpy(), dwp)
        return dx, (dz if z is not None else None), torch.from_numpy(dwp.sum(0)), None, None, None


def rms_norm_rows_grad(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float, group: int,
                       gate_after: bool) -> torch.Tensor:
    """rms_norm_rows, differentiable in x, z and weight (the module docstring's backward)."""
    return _RMSNormFn.apply(x, z, weight, eps, group, gate_after)
