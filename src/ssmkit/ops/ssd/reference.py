"""SSD (Mamba-2's structured state space duality), the oracle: the plain recurrence, one step at a time.

Glossary (code name: paper symbol, "Transformers are SSMs", Listing 1):
    x      : X, the input, per head                      (b, l, h, p)
    dt     : Delta, the step size per head               (b, l, h)
    A      : A, one scalar per head (A = a I)            (h,)
    B, C   : B, C, shared by the heads of a group        (b, l, g, n)
    D      : D, the skip connection                      (h,) or (h, p)
    z      : the gate, out = y * silu(z)                 (b, l, h, p)
    state  : the hidden state per head                   (b, h, p, n)
    seq_idx: which packed sequence each step belongs to  (b, l), nondecreasing per row
    h = heads, p = head dim, g = groups (h % g == 0), n = d_state, T = chunk_size.

Semantics: dt <- clamp(softplus(dt + dt_bias), *dt_limit) (softplus if dt_softplus; the clamp always);
state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T; y_t = state_t C_t + D x_t; out = y * silu(z).
Where seq_idx changes (t > 0 and seq_idx[t] != seq_idx[t-1]) the state restarts from zero, so no state
crosses a packed sequence boundary; `initial_state` therefore only reaches the first sequence of a row.

Normalized tier signature (what `ssmkit.ops.ssd` calls on every tier):
    ssd(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, inf), initial_state=None, seq_idx=None, return_final_state=False)
        -> out | (out, final_state)
out has x's dtype; the final state is float32 (float64 for float64 inputs); accumulation likewise.
The recurrence ignores chunk_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0, fallback=True)


def prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit):
    """Accumulation dtype, dt transform, B and C from groups to heads: B, C (b, l, h, n)."""
    acc = acc_dtype(x.dtype)
    h = x.shape[2]
    x, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    # head i reads group i // (h // g)
    B = B.to(acc).repeat_interleave(h // B.shape[2], dim=2)  # (b, l, h, n)
    C = C.to(acc).repeat_interleave(h // C.shape[2], dim=2)  # (b, l, h, n)
    return x, dt, A, B, C


def finish(y, x, D, z, out_dtype):
    """y + D x, gated by silu(z), cast to the output dtype."""
    if D is not None:
        Dp = D.to(y.dtype)
        y = y + x * (Dp[:, None] if Dp.dim() == 1 else Dp)  # D: (h,) or (h, p)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def resets(seq_idx, l):
    """(b, l) bool: True where a new packed sequence starts (never at t = 0)."""
    r = torch.zeros_like(seq_idx, dtype=torch.bool)
    if l > 1:
        r[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return r


def ssd(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, return_final_state=False):
    """The recurrence, one time step at a time (see the module docstring)."""
    out_dtype = x.dtype
    x_, dt_, A_, B_, C_ = prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit)
    b, l, h, p = x_.shape
    n = B_.shape[-1]
    s = x_.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x_.dtype)
    restart = resets(seq_idx, l) if seq_idx is not None else None
    ys = []
    for t in range(l):
        if restart is not None:
            s = torch.where(restart[:, t, None, None, None], torch.zeros_like(s), s)
        decay = torch.exp(dt_[:, t] * A_)  # (b, h)  ZOH for the scalar A
        dBx = torch.einsum("bh,bhp,bhn->bhpn", dt_[:, t], x_[:, t], B_[:, t])  # Euler for B
        s = decay[..., None, None] * s + dBx
        ys.append(torch.einsum("bhpn,bhn->bhp", s, C_[:, t]))
    y = torch.stack(ys, dim=1) if ys else x_.new_zeros(b, 0, h, p)  # (b, l, h, p)
    out = finish(y, x_, D, z, out_dtype)
    return (out, s) if return_final_state else out
