"""What a carried-in state does in a diagonal SSM run as a convolution (S4D, H3).

    x_k = Ad x_{k-1} + Bd u_k        elementwise in the state index n, Ad = exp(log_Ad)
    y_k = C x_k (+ the convolution of u, computed elsewhere)

A chunk of length L that starts from the state x0 (the state before its first input) adds
    free response   C Ad^(k+1) x0                        at output k < L
and ends in
    final state     Ad^L x0 + Bd sum_j Ad^(L-1-j) u_j    (the state after input L-1).
With `conj_sym`, complex states hold one of each conjugate pair and outputs are 2 Re(.).
Powers are exp(l log_Ad) of the exact product (no repeated multiplication), in log_Ad's precision.
"""

from __future__ import annotations

import torch

from ssmkit.math.kernels import vandermonde_kernel

TIME_CHUNK = 512  # time positions per block of the final-state sum (bounds its memory)


def free_response(
    log_Ad: torch.Tensor, C: torch.Tensor, x0: torch.Tensor, L: int, *, conj_sym: bool
) -> torch.Tensor:
    """C Ad^(k+1) x0 for k < L, summed over n: log_Ad, C (..., n) broadcast against x0 (b, ..., n);
    returns (b, ..., L)."""
    BC = C * torch.exp(log_Ad) * x0
    K = vandermonde_kernel(log_Ad.expand(BC.shape), BC.to(log_Ad.dtype), L, conj_sym=conj_sym)
    return K.real if K.is_complex() else K


def final_state(
    log_Ad: torch.Tensor, Bd: torch.Tensor, u: torch.Tensor, x0: torch.Tensor | None
) -> torch.Tensor:
    """Ad^L x0 + Bd sum_j Ad^(L-1-j) u_j: log_Ad, Bd (*S, n); u (b, *S, L); x0 (b, *S, n) or None.

    Returns (b, *S, n) in log_Ad's dtype; the time sum runs in blocks of TIME_CHUNK positions.
    """
    L = u.shape[-1]
    acc = torch.zeros(*u.shape[:-1], log_Ad.shape[-1], dtype=log_Ad.dtype, device=u.device)
    for start in range(0, L, TIME_CHUNK):
        stop = min(start + TIME_CHUNK, L)
        powers = torch.arange(L - 1 - start, L - 1 - stop, -1, device=u.device, dtype=log_Ad.real.dtype)
        V = torch.exp(log_Ad[..., None] * powers)                                 # (*S, n, T)
        acc = acc + torch.einsum("b...t,...nt->b...n", u[..., start:stop].to(V.dtype), V)
    acc = Bd * acc
    if x0 is not None:
        acc = acc + torch.exp(L * log_Ad) * x0.to(log_Ad.dtype)
    return acc
