"""The bilinear step of a diagonal-plus-low-rank (DPLR) SSM, through the Woodbury identity (S4).

Per channel h: A = Lambda - P P^* with Lambda (N2,) complex diagonal and P (r, N2), on conjugate-half
states: the full state is x_full = (x, conj x) (N = 2 N2), so P^* x_full = 2 Re(P^* x) is real and
every map below is real-linear in the stored half x. The bilinear discretization is

    x' = (I - dt/2 A)^{-1} ((I + dt/2 A) x + dt B u),

and with E = 1 - dt/2 Lambda (diagonal) Woodbury gives
    (I - dt/2 A)^{-1} w = E^{-1} w - E^{-1} P (dt/2) R P^* E^{-1} w,  R = (I + dt/2 P^* E^{-1} P)^{-1}
(R is r x r real), so a step costs O(N r) instead of an N x N solve.

Shapes: Lambda, B (H, N2); P (r, H, N2); dt (H,); states x (..., H, N2); inputs u (..., H).
"""

from __future__ import annotations

import torch


def pstar(P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """P^* x_full: (r, H, N2), (..., H, N2) -> (..., r, H) real."""
    return 2 * torch.einsum("rhn,...hn->...rh", P.conj(), x).real


def woodbury(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, dt: torch.Tensor) -> dict:
    """Everything `bilinear_step` needs: Lambda, P, B, dt, E^{-1} (H, N2) and R (H, r, r)."""
    half = (dt / 2)[:, None]                                               # (H, 1)
    E_inv = 1 / (1 - half * Lambda)                                        # (H, N2)
    PEP = 2 * torch.einsum("ahn,hn,bhn->hab", P.conj(), E_inv, P).real     # (H, r, r)
    eye = torch.eye(P.shape[0], dtype=PEP.dtype, device=PEP.device)
    R = torch.linalg.inv(eye + (dt / 2)[:, None, None] * PEP)              # (H, r, r)
    return {"Lambda": Lambda, "P": P, "B": B, "dt": dt, "E_inv": E_inv, "R": R}


def bilinear_step(w: dict, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """One bilinear step of x (..., H, N2) with input u (..., H) (None: no input), w from `woodbury`."""
    Lambda, P, dt, E_inv, R = w["Lambda"], w["P"], w["dt"], w["E_inv"], w["R"]
    half = (dt / 2)[:, None]
    v = x + half * (Lambda * x - torch.einsum("rhn,...rh->...hn", P, pstar(P, x).to(P.dtype)))
    if u is not None:
        v = v + (dt[:, None] * w["B"]) * u[..., None]                      # (I + dt/2 A) x + dt B u
    z = E_inv * v
    corr = torch.einsum("hab,...bh->...ah", R, pstar(P, z))                # (..., r, H) real
    return z - E_inv * half * torch.einsum("rhn,...rh->...hn", P, corr.to(P.dtype))


def to_real(x: torch.Tensor) -> torch.Tensor:
    """Conjugate-half complex state (..., N2) -> real coordinates (Re x, Im x) (..., N)."""
    return torch.cat([x.real, x.imag], -1)


def from_real(v: torch.Tensor) -> torch.Tensor:
    """Real coordinates (..., N) -> conjugate-half complex state (..., N2)."""
    n = v.shape[-1] // 2
    return torch.complex(v[..., :n], v[..., n:])


def recurrence_matrix(w: dict) -> torch.Tensor:
    """M (H, N, N) real: the input-free bilinear step on real coordinates, x_real' = M[h] @ x_real."""
    H, n = w["Lambda"].shape
    basis = torch.eye(2 * n, dtype=w["dt"].dtype, device=w["dt"].device)  # rows e_k, real coordinates
    cols = bilinear_step(w, from_real(basis)[:, None].expand(-1, H, -1), None)
    return to_real(cols).permute(1, 2, 0)                                  # [h, i, k] = (M e_k)_i
