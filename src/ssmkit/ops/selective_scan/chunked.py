"""Selective scan by chunks: a parallel pure-PyTorch path, any device, never holding (b, d, l, n) at once.

Same recurrence, names and normalized signature as `reference.py` (read its glossary). The sequence
is cut into chunks of T steps; the state h (b, d, n) is carried from chunk to chunk. Inside a chunk:

    S_t = cumsum_{k<=t} delta_k A              (log of the decay, (b, d, T, n); S is decreasing)
    x_t = delta_t B_t u_t                      (Euler for B)
    h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) x_s

The sum is a Hillis-Steele scan in log2(T) doubling steps: at offset k, x_t += exp(S_t - S_{t-k}) x_{t-k}.
Every exponent is a segment sum S_t - S_{t-k} <= 0, so nothing overflows (never exp(-S_s) alone).
Peak memory is a few (b, d, T, n) tensors; with grad enabled each chunk is checkpointed, so the
backward pass also keeps only the (b, d, n) states between chunks and recomputes one chunk at a time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ssmkit.ops._dispatch import Backend
from ssmkit.ops.selective_scan.reference import expand_groups, finish, prepare

BACKEND = Backend(priority=10, fallback=True)
CHUNK = 64


def _chunk(h0, u, delta, A, B, C):
    """One chunk: h0 (b, d, n); u, delta (b, d, T); B, C (b, g, n, T) -> y (b, d, T), h_T (b, d, n)."""
    d = u.shape[1]
    B, C = expand_groups(B, d), expand_groups(C, d)  # (b, d, n, T)
    dA = delta[..., None] * A[:, None, :]  # (b, d, T, n)  log of the ZOH decay
    S = torch.cumsum(dA, dim=2)  # (b, d, T, n)
    x = (delta * u)[..., None] * B.transpose(-1, -2)  # (b, d, T, n)
    T = u.shape[-1]
    k = 1
    while k < T:
        # x_t <- x_t + exp(S_t - S_{t-k}) x_{t-k}: after this step x_t sums the last 2k inputs
        decay = torch.exp(S[:, :, k:] - S[:, :, :-k])  # (b, d, T-k, n), exponents <= 0
        x = torch.cat([x[:, :, :k], x[:, :, k:] + decay * x[:, :, :-k]], dim=2)
        k *= 2
    h = x + torch.exp(S) * h0[:, :, None, :]  # (b, d, T, n) every state of the chunk
    y = torch.einsum("bdtn,bdnt->bdt", h, C)  # (b, d, T)
    return y, h[:, :, -1]


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, chunk_size=CHUNK):
    """Chunked selective scan (normalized signature of `reference.selective_scan`, plus chunk_size)."""
    out_dtype = u.dtype
    u_, delta_, A_, B_, C_ = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u_.shape
    h = u_.new_zeros(b, d, A_.shape[1]) if initial_state is None else initial_state.to(u_.dtype)
    recompute = torch.is_grad_enabled()
    ys = []
    for a in range(0, l, chunk_size):
        e = min(a + chunk_size, l)
        args = (h, u_[..., a:e], delta_[..., a:e], A_, B_[..., a:e], C_[..., a:e])
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if ys else u_.new_zeros(b, d, 0)  # (b, d, l)
    out = finish(y, u_, D, z, out_dtype)
    return (out, h) if return_final_state else out
