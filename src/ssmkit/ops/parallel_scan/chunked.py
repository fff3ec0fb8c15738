"""The plain-PyTorch fast path: the scan in chunks, two levels, about 2*sqrt(L) Python steps instead of L.

Split time into nc chunks of T steps (T ~ sqrt(L) by default). Level 1 runs the recurrence inside
every chunk at once, started from zero, with the running products of a:
    H[c, t] = a[c, t] H[c, t-1] + b[c, t],      P[c, t] = a[c, 0] ... a[c, t]     (T steps, all chunks)
Level 2 carries the state across chunks: S[0] = h_{-1}, S[c+1] = H[c, T-1] + P[c, T-1] S[c]  (nc steps),
and then h[c, t] = H[c, t] + P[c, t] S[c] in one elementwise pass. Each step touches b*nc*(d*n) or
b*(d*n) elements, so the Python overhead of the loop is paid 2*sqrt(L) times, not L; the work stays
O(L*d*n) (about 3 passes) and the temporaries H, P are the size of the output. No division by the
products, so no overflow when a is small (unlike cumprod/cumsum formulas).

Autograd does not record the steps: the backward is itself a linear recurrence run in reverse,
    g_t = dL/dh_t + conj(a_{t+1}) g_{t+1},   dL/db_t = g_t,   dL/da_t = g_t conj(h_{t-1}),
    dL/dh_{-1} = conj(a_0) g_0,
so it reuses the same chunked scan on the time-reversed sequence and only a, h are saved.
Arguments and returns as in reference.py; `chunk` = T (None: about sqrt(L), `_chunk_for`).
"""

from __future__ import annotations

import math

import torch

from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=10, fallback=True)
CHUNK = 64  # backend="auto" runs the loop of reference.py up to this length, this path above it


def _chunk_for(L: int) -> int:
    """A chunk near sqrt(L) that divides L if one is close (no padding copies), else ceil(sqrt(L))."""
    root = math.isqrt(L)
    for T in range(root, max(1, root // 2) - 1, -1):
        if L % T == 0:
            return T
    return max(1, math.ceil(math.sqrt(L)))


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, chunk: int | None) -> torch.Tensor:
    """h (batch, length, ...) of h_t = a_t h_{t-1} + b_t; a broadcasts against b; no autograd."""
    Bn, L = b.shape[:2]
    rest = b.shape[2:]
    T = chunk or _chunk_for(L)
    nc = -(-L // T)
    pad = nc * T - L
    a = a.expand(a.shape[0], L, *a.shape[2:]) if a.shape[1] == 1 else a
    if pad:                                   # padded steps (a=1, b=0) come after the end: no effect
        a = torch.cat([a, a.new_ones(a.shape[0], pad, *a.shape[2:])], dim=1)
        b = torch.cat([b, b.new_zeros(Bn, pad, *rest)], dim=1)
    a = a.reshape(a.shape[0], nc, T, *a.shape[2:])                      # (batch or 1, nc, T, ...)
    b = b.reshape(Bn, nc, T, *rest)                                       # (batch, nc, T, ...)
    H = torch.empty_like(b)
    P = torch.empty(a.shape, dtype=b.dtype, device=b.device)             # products keep a's broadcast dims
    H[:, :, 0], P[:, :, 0] = b[:, :, 0], a[:, :, 0]
    for t in range(1, T):                                                 # level 1: inside chunks
        torch.addcmul(b[:, :, t], a[:, :, t], H[:, :, t - 1], out=H[:, :, t])
        torch.mul(P[:, :, t - 1], a[:, :, t], out=P[:, :, t])
    S = torch.empty(Bn, nc, *rest, dtype=b.dtype, device=b.device)      # chunk start states
    S[:, 0] = 0 if h0 is None else h0
    for c in range(1, nc):                                                # level 2: across chunks
        torch.addcmul(H[:, c - 1, -1], P[:, c - 1, -1], S[:, c - 1], out=S[:, c])
    H.addcmul_(P, S.unsqueeze(2))                                         # (batch, nc, T, ...)
    return H.reshape(Bn, nc * T, *rest)[:, :L]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, chunk):
        with torch.no_grad():
            h = _scan(a, b, h0, chunk)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk = chunk
        return h

    @staticmethod
    def backward(ctx, dh):
        a, h, h0 = ctx.saved_tensors
        L = h.shape[1]
        aa = a.conj() if a.is_complex() else a
        # reversed time: g'_s = conj(a'_{s-1}) g'_{s-1} + dh'_s with a' the reversed a shifted by one
        if a.shape[1] > 1:
            a_next = torch.cat([aa[:, 1:], torch.zeros_like(aa[:, :1])], dim=1).flip(1)
        else:
            a_next = aa.expand(a.shape[0], L, *a.shape[2:]).clone()
            a_next[:, -1] = 0
            a_next = a_next.flip(1)
        g = _scan(a_next, dh.flip(1), None, ctx.chunk).flip(1)            # (batch, length, ...)
        da = dh0 = None
        if ctx.needs_input_grad[0]:
            h_prev = torch.cat([torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1), h[:, :-1]], 1)
            da = g * (h_prev.conj() if h.is_complex() else h_prev)
            da = da.sum_to_size(a.shape)
        if h0 is not None and ctx.needs_input_grad[2]:
            dh0 = g[:, 0] * aa[:, 0]
            dh0 = dh0.sum_to_size(h0.shape)
        return da, g if ctx.needs_input_grad[1] else None, dh0, None


def parallel_scan(a: torch.Tensor, b: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False, chunk: int | None = None):
    h = _ChunkedScan.apply(a, b, initial_state, chunk)
    return (h, h[:, -1]) if return_final_state else h
