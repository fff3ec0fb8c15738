"""Discretization of dx/dt = A x + B u with step dt into x_k = Ad x_{k-1} + Bd u_k.

Glossary (code name: paper symbol, shape):
    A          A          dense (..., n, n) or diagonal (..., n), real or complex
    B          B          (..., n) a vector, or (..., n, m) for m inputs
    dt         Delta      a scalar or a tensor broadcasting over A's batch dims (channels, step sizes)
    Ad, Bd     A-bar, B-bar   the discrete system, batch shape = broadcast of A's, B's and dt's

All four are the generalized bilinear transform (GBT) with alpha = 0 (euler), 1/2 (bilinear), 1
(backward_euler), and the exact zero-order hold; they match scipy.signal.cont2discrete's (Ad, Bd) for
methods 'euler', 'bilinear', 'backward_diff' and 'zoh'. Every function is differentiable.

Dense or diagonal: `diagonal=True/False` says which; None infers it from the shapes (A.dim() == 1, or
trailing dims not square) and refuses square trailing dims, which could be either.
B a vector or a matrix: B is (..., n, m) when B.shape[-2] == n and either B.shape[-1] != n or B has
more dims than a vector of A's batch would (B.dim() > A.dim() - 1 dense, > A.dim() diagonal).
"""

from __future__ import annotations

import torch

from ssmkit._checks import check_tensor


def _is_diagonal(A: torch.Tensor, diagonal: bool | None) -> bool:
    check_tensor("A", A)
    if A.dim() == 0:
        raise ValueError(f"A must have at least 1 dimension (n,) or (n, n), got shape {tuple(A.shape)}")
    if diagonal is not None:
        if not diagonal and (A.dim() < 2 or A.shape[-1] != A.shape[-2]):
            raise ValueError(f"A must be square (..., n, n) with diagonal=False, got shape {tuple(A.shape)}")
        return bool(diagonal)
    if A.dim() == 1 or A.shape[-1] != A.shape[-2]:
        return True
    raise ValueError(
        f"A has square trailing dims {tuple(A.shape)}: it could be dense (..., n, n) or diagonal "
        f"(..., n) with batch dim n; pass diagonal=True or diagonal=False"
    )


def _prepare(A, B, dt, diagonal):
    """Checked (diag, A, B as (..., n, m), dt shaped to broadcast, B_was_vector)."""
    diag = _is_diagonal(A, diagonal)
    check_tensor("B", B)
    n = A.shape[-1]
    batch_dims = A.dim() - (1 if diag else 2)
    if B.dim() >= 2 and B.shape[-2] == n and (B.shape[-1] != n or B.dim() > batch_dims + 1):
        vector = False
    elif B.dim() >= 1 and B.shape[-1] == n:
        vector = True
    else:
        raise ValueError(f"B must have shape (..., {n}) or (..., {n}, m) to match A {tuple(A.shape)}, "
                         f"got {tuple(B.shape)}")
    Bm = B.unsqueeze(-1) if vector else B                              # (..., n, m)
    if not isinstance(dt, torch.Tensor):
        dt = torch.as_tensor(dt, dtype=A.real.dtype, device=A.device)
    # dt broadcasts over A's batch dims: append the state dims (n) or (n, n)
    dt = dt.reshape(dt.shape + (1,) * (1 if diag else 2))
    try:
        torch.broadcast_shapes(A.shape, dt.shape)
    except RuntimeError:
        raise ValueError(f"dt of shape {tuple(dt.shape[: dt.dim() - (1 if diag else 2)])} does not "
                         f"broadcast over A's batch dims {tuple(A.shape[:batch_dims])}") from None
    return diag, Bm, dt, vector


def _finish(Ad, Bd, vector):
    return Ad, (Bd.squeeze(-1) if vector else Bd)


def _eye(A):
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _gbt(A, B, dt, alpha: float, diagonal):
    """Generalized bilinear transform: Ad = (I - alpha dt A)^{-1} (I + (1 - alpha) dt A),
    Bd = (I - alpha dt A)^{-1} dt B."""
    diag, Bm, dt, vector = _prepare(A, B, dt, diagonal)
    if diag:
        dtA = dt * A                                                   # (..., n)
        inv = 1 / (1 - alpha * dtA)
        Ad = inv * (1 + (1 - alpha) * dtA)
        Bd = (inv * dt).unsqueeze(-1) * Bm                             # (..., n, m)
        return _finish(Ad, Bd, vector)
    dtA, eye = dt * A, _eye(A)                                         # (..., n, n)
    rhs = dt * Bm                                                      # (..., n, m)
    if not alpha:
        return _finish(eye + dtA, rhs, vector)
    lhs = eye - alpha * dtA
    shape = torch.broadcast_shapes(lhs.shape[:-2], rhs.shape[:-2])
    lhs, dtype = lhs.expand(shape + lhs.shape[-2:]), torch.result_type(lhs, rhs)
    Ad = torch.linalg.solve(lhs, (eye + (1 - alpha) * dtA).expand(lhs.shape))
    Bd = torch.linalg.solve(lhs.to(dtype), rhs.to(dtype).expand(shape + rhs.shape[-2:]))
    return _finish(Ad, Bd, vector)


def zoh(A, B, dt, *, diagonal: bool | None = None):
    """Zero-order hold (exact for piecewise-constant u): Ad = exp(dt A), Bd = A^{-1} (Ad - I) B.

    Dense A: both from one matrix exponential, exp(dt [[A, B], [0, 0]]) = [[Ad, Bd], [0, I]], which
    also holds for singular A. Diagonal A: Bd = expm1(dt A) / A * B, with the limit dt B where A = 0.
    """
    diag, Bm, dt, vector = _prepare(A, B, dt, diagonal)
    if diag:
        dtA = dt * A                                                   # (..., n)
        Ad = torch.exp(dtA)
        zero = A == 0
        A_safe = torch.where(zero, torch.ones_like(A), A)
        gain = torch.where(zero, dt.to(Ad.dtype) * torch.ones_like(Ad), _expm1(dtA) / A_safe)
        return _finish(Ad, gain.unsqueeze(-1) * Bm, vector)
    n, m = A.shape[-1], Bm.shape[-1]
    dtype = torch.result_type(A, Bm)
    shape = torch.broadcast_shapes(A.shape[:-2], Bm.shape[:-2], dt.shape[:-2])
    top = torch.cat([A.to(dtype).expand(shape + (n, n)), Bm.to(dtype).expand(shape + (n, m))], -1)
    M = torch.cat([top, top.new_zeros(shape + (m, n + m))], -2)        # (..., n+m, n+m)
    E = torch.linalg.matrix_exp(dt * M)
    return _finish(E[..., :n, :n], E[..., :n, n:], vector)


def _expm1(z: torch.Tensor) -> torch.Tensor:
    """exp(z) - 1, accurate near 0 for real and complex z."""
    if not z.is_complex():
        return torch.expm1(z)
    # exp(x+iy) - 1 = expm1(x) cos y - 2 sin^2(y/2) + i exp(x) sin y
    x, y = z.real, z.imag
    re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2
    return torch.complex(re, torch.exp(x) * torch.sin(y))


def bilinear(A, B, dt, *, diagonal: bool | None = None):
    """Bilinear (Tustin, trapezoid; S4): Ad = (I - dt/2 A)^{-1} (I + dt/2 A), Bd = (I - dt/2 A)^{-1} dt B."""
    return _gbt(A, B, dt, 0.5, diagonal)


def euler(A, B, dt, *, diagonal: bool | None = None):
    """Forward Euler: Ad = I + dt A, Bd = dt B."""
    return _gbt(A, B, dt, 0.0, diagonal)


def backward_euler(A, B, dt, *, diagonal: bool | None = None):
    """Backward Euler: Ad = (I - dt A)^{-1}, Bd = (I - dt A)^{-1} dt B."""
    return _gbt(A, B, dt, 1.0, diagonal)


__all__ = ["zoh", "bilinear", "euler", "backward_euler"]
