"""SSD (Mamba-2's structured state space duality): the chunked algorithm and the plain recurrence.

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

Normalized backend signature (what `ssmkit.ops._dispatch` calls, every argument present):
    ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx,
        return_final_state) -> out | (out, final_state)
out has x's dtype; the final state is float32 (float64 for float64 inputs); accumulation likewise.

`ssd` is the reference tier's algorithm (chunked: a masked quadratic form inside each chunk, the
states passed between chunks); `ssd_recurrent` is the step-by-step oracle it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit):
    """Accumulation dtype, dt transform, B and C from groups to heads: B, C (b, l, h, n)."""
    acc = _acc(x)
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


def _finish(y, x, D, z, out_dtype):
    if D is not None:
        Dp = D.to(y.dtype)
        y = y + x * (Dp[:, None] if Dp.dim() == 1 else Dp)  # D: (h,) or (h, p)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _resets(seq_idx, l):
    """(b, l) bool: True where a new packed sequence starts (never at t = 0)."""
    r = torch.zeros_like(seq_idx, dtype=torch.bool)
    if l > 1:
        r[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return r


def ssd_recurrent(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D,
    z,
    dt_bias,
    dt_softplus,
    dt_limit,
    initial_state,
    seq_idx,
    return_final_state,
):
    """The oracle: one time step at a time (chunk_size is ignored)."""
    out_dtype = x.dtype
    x_, dt_, A_, B_, C_ = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit)
    b, l, h, p = x_.shape
    n = B_.shape[-1]
    s = x_.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x_.dtype)
    resets = _resets(seq_idx, l) if seq_idx is not None else None
    ys = []
    for t in range(l):
        if resets is not None:
            s = torch.where(resets[:, t, None, None, None], torch.zeros_like(s), s)
        decay = torch.exp(dt_[:, t] * A_)  # (b, h)  ZOH for the scalar A
        dBx = torch.einsum("bh,bhp,bhn->bhpn", dt_[:, t], x_[:, t], B_[:, t])  # Euler for B
        s = decay[..., None, None] * s + dBx
        ys.append(torch.einsum("bhpn,bhn->bhp", s, C_[:, t]))
    y = torch.stack(ys, dim=1) if ys else x_.new_zeros(b, 0, h, p)  # (b, l, h, p)
    out = _finish(y, x_, D, z, out_dtype)
    return (out, s) if return_final_state else out


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[..., t, s] = sum_{s<k<=t} a_k for s <= t, -inf above the diagonal.

    Built by a masked cumsum, never as a difference of cumsums, so a -inf entry (a reset) gives -inf
    for the segments that contain it and no inf - inf anywhere.
    """
    T = a.shape[-1]
    rep = a[..., None, :].expand(*a.shape, T).transpose(-1, -2)  # (..., T, T): rep[t, s] = a_t
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    out = torch.cumsum(rep.masked_fill(~strict, 0.0), dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device)), -torch.inf)


def ssd(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D,
    z,
    dt_bias,
    dt_softplus,
    dt_limit,
    initial_state,
    seq_idx,
    return_final_state,
):
    """Chunked SSD: quadratic (attention-like) form inside chunks, recurrence on chunk states between."""
    out_dtype = x.dtype
    x_, dt_, A_, B_, C_ = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit)
    b, l, h, p = x_.shape
    n = B_.shape[-1]
    T = chunk_size
    logA = dt_ * A_  # (b, l, h)  log of each step's decay
    if seq_idx is not None:
        # a reset is a step whose decay is exactly zero: log decay -inf
        logA = logA.masked_fill(_resets(seq_idx, l)[..., None], -torch.inf)
    X = x_ * dt_[..., None]  # (b, l, h, p)  Euler for B: dt x
    pad = (-l) % T
    if pad:
        # padded steps decay by exp(0) = 1 and add nothing: they leave the final state unchanged
        logA = F.pad(logA, (0, 0, 0, pad))
        X, B_, C_ = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (X, B_, C_))
    c = (l + pad) // T
    X = X.reshape(b, c, T, h, p)
    Bc, Cc = B_.reshape(b, c, T, h, n), C_.reshape(b, c, T, h, n)
    logA = logA.reshape(b, c, T, h).permute(0, 3, 1, 2)  # (b, h, c, T)
    seg = segsum(logA)  # (b, h, c, T, T)
    L = torch.exp(seg)

    # 1. inside each chunk: y_t = sum_{s<=t} C_t.B_s exp(sum_{s<k<=t} logA_k) X_s
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, X)
    # 2. each chunk's own contribution to the state at its end
    decay_to_end = L[..., -1, :]  # (b, h, c, T)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, X)  # (b, c, h, p, n)
    # 3. pass states between chunks (a recurrence over c chunks, written as one segsum)
    s0 = x_.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x_.dtype)
    states = torch.cat([s0[:, None], states], dim=1)  # (b, c+1, h, p, n)
    chunk_log = seg[..., -1, 0] + logA[..., 0]  # (b, h, c): log decay over a whole chunk
    chunk_decay = torch.exp(segsum(F.pad(chunk_log, (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    prev, final = states[:, :-1], states[:, -1]  # state entering each chunk; after the last
    # 4. the entering state's contribution: decay from the chunk start to t, inclusive
    decay_in = torch.exp(torch.cumsum(logA, dim=-1))  # (b, h, c, T)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, prev, decay_in)
    y = (y_diag + y_off).reshape(b, c * T, h, p)[:, :l]  # (b, l, h, p)
    out = _finish(y, x_, D, z, out_dtype)
    return (out, final) if return_final_state else out
