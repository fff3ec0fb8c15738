"""The plain-PyTorch fast path: a log-depth scan inside chunks, state carried across chunks.

Inside a chunk of T steps, Hillis-Steele doubling composes the affine maps h -> a h + b:
after the pass with offset k, (A_t, B_t) is the composition of steps t-2k+1 .. t, so after
ceil(log2 T) passes B_t is h_t started from zero at the chunk start and A_t = a_{start} ... a_t.
The chunk's states are then B + A * h_prev. Memory holds one chunk's temporaries: O(b*T*d*n).

Autograd does not record the passes: the backward is itself a linear recurrence run in reverse,
    g_t = dL/dh_t + conj(a_{t+1}) g_{t+1},   dL/db_t = g_t,   dL/da_t = g_t conj(h_{t-1}),
    dL/dh_{-1} = conj(a_0) g_0,
so it reuses the same chunked scan on the time-reversed sequence and only a, h are saved.
Arguments and returns as in reference.py.
"""

from __future__ import annotations

import torch

CHUNK = 64


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """h (batch, length, ...) of h_t = a_t h_{t-1} + b_t; a broadcasts against b; no autograd."""
    B, L = b.shape[:2]
    h = torch.empty_like(b)
    prev = h0
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        Bc = b[:, s:e].clone()                                            # (batch, T, ...)
        Ac = (a[:, s:e] if a.shape[1] > 1 else a).expand_as(Bc).clone()   # (batch, T, ...)
        k = 1
        while k < e - s:
            # right sides first: they read the old left sides
            Bc[:, k:] += Ac[:, k:] * Bc[:, :-k]
            Ac[:, k:] *= Ac[:, :-k].clone()
            k *= 2
        if prev is not None:
            Bc += Ac * prev.unsqueeze(1)
        h[:, s:e] = Bc
        prev = Bc[:, -1]
    return h


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


def parallel_scan(
    a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None, chunk: int = CHUNK
):
    h = _ChunkedScan.apply(a, b, initial_state, chunk)
    return h, h[:, -1]
