"""SSD by chunks (Mamba-2's algorithm, "Transformers are SSMs", Listing 1), any device.

Names, semantics and the normalized signature as in reference.py (read its glossary). The sequence
is cut into chunks of T = chunk_size steps: inside a chunk, a masked quadratic (attention-like) form;
between chunks, a recurrence on the chunk states. Every decay is exp of a segment sum (`segsum`),
never a ratio of cumulative products, so strong decay and resets (seq_idx) stay finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.ops._dispatch import Backend
from ssmkit.ops.ssd.reference import finish, prepare, resets

BACKEND = Backend(priority=10, fallback=True)


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


def ssd(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, return_final_state=False):
    """Chunked SSD: quadratic (attention-like) form inside chunks, recurrence on chunk states between."""
    out_dtype = x.dtype
    x_, dt_, A_, B_, C_ = prepare(x, dt, A, B, C, dt_bias, dt_softplus, dt_limit)
    b, l, h, p = x_.shape
    n = B_.shape[-1]
    T = chunk_size
    logA = dt_ * A_  # (b, l, h)  log of each step's decay
    if seq_idx is not None:
        # a reset is a step whose decay is exactly zero: log decay -inf
        logA = logA.masked_fill(resets(seq_idx, l)[..., None], -torch.inf)
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
    out = finish(y, x_, D, z, out_dtype)
    return (out, final) if return_final_state else out
