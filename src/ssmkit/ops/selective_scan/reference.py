"""Selective scan (Mamba-1), the oracle: the plain sequential recurrence in PyTorch.

Glossary (code name: paper symbol, Mamba paper Algorithm 2):
    u      : x, the input sequence                        (b, d, l)
    delta  : Delta, the input-dependent step size         (b, d, l)
    A      : A, diagonal state matrix per channel, real   (d, n)
    B, C   : B, C, input-dependent, shared by groups      (b, g, n, l)
    D      : D, the skip connection                       (d,)
    z      : the gate branch, out = y * silu(z)           (b, d, l)
    h      : the hidden state                             (b, d, n)
    d = channels (d_inner), n = d_state, g = groups, l = length.

Discretization, as in the Mamba reference: ZOH for A (dA = exp(delta * A)) and Euler for B
(dB u = delta * B * u). Then h_t = dA_t h_{t-1} + dB_t u_t and y_t = C_t h_t + D u_t.

Normalized tier signature (what `ssmkit.ops.selective_scan` calls on every tier):
    selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False) -> out | (out, final_state)
with B, C always (b, g, n, l), d % g == 0; out has u's dtype; final_state is float32 (float64 when u is).
Accumulation is float32, or float64 for float64 inputs (so the oracle can be gradchecked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0, fallback=True)


def prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to the accumulation dtype and apply delta_bias/softplus.

    Returns u, delta (b, d, l), A (d, n), B, C (b, g, n, l), all in the accumulation dtype.
    """
    acc = acc_dtype(u.dtype)
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B.to(acc), C.to(acc)


def expand_groups(B: torch.Tensor, d: int) -> torch.Tensor:
    """(b, g, n, ...) -> (b, d, n, ...): channel c reads group c // (d // g), as the published kernels do."""
    return B.repeat_interleave(d // B.shape[1], dim=1)


def finish(y, u, D, z, out_dtype):
    """y + D u, gated by silu(z), cast to the output dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """The sequential recurrence, one time step at a time (see the module docstring)."""
    out_dtype = u.dtype
    u_, delta_, A_, B_, C_ = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u_.shape
    n = A_.shape[1]
    if initial_state is None:
        h = u_.new_zeros(b, d, n)
    else:
        h = initial_state.to(u_.dtype)
    ys = []
    for t in range(l):
        dt = delta_[:, :, t, None]  # (b, d, 1)
        dA = torch.exp(dt * A_)  # (b, d, n)  ZOH for A
        dBu = dt * expand_groups(B_[..., t], d) * u_[:, :, t, None]  # (b, d, n)  Euler for B
        h = dA * h + dBu
        ys.append((h * expand_groups(C_[..., t], d)).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(b, d, 0)  # (b, d, l)
    out = finish(y, u_, D, z, out_dtype)
    return (out, h) if return_final_state else out
