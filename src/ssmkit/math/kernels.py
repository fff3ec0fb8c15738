"""SSM convolution kernels K_l = C Ad^l Bd, l = 0 .. L-1, so that y = K * u for x_k = Ad x_{k-1} + Bd u_k,
y_k = C x_k (Gu, Goel & Re, "S4", ICLR 2022; Gu et al., "S4D", NeurIPS 2022).

Three ways, one oracle:
    dense_kernel        the reference: materializes the powers Ad^l Bd, any (dense) Ad.
    vandermonde_kernel  diagonal Ad = exp(dtA): K_l = sum_n BC_n exp(dtA_n l), blocked as one batched
                        matmul of two exp tables (n x sqrt L each), so memory is O(d n sqrt(L) + d L),
                        never O(d n L), in the forward and the backward pass.
    dplr_kernel         A = Lambda - P P^* (DPLR): S4's truncated generating function at the roots of
                        unity, Cauchy sums with a Woodbury correction, then an inverse FFT.

Glossary (code name: paper symbol, shape):
    d, n, L      H, N, L         channels, state size, kernel length
    N2           N/2             one state of each conjugate pair
    dtA          Delta A         (..., n) log of the diagonal Ad (Ad = exp(dtA))
    BC           C * B-bar       (..., n) products C_n Bd_n
    conj_sym     -               the n states are one of each conjugate pair: K = 2 Re(sum_n ...)
    Lambda       Lambda          (d or 1, N2) complex, the diagonal of A on one half of the pairs
    P            P               (rank, d or 1, N2) complex; the full system's P is (P, conj P)
    Ct           C~              (d, N2): C~ = C (I - Ad^L), trained directly by S4 (see dplr_kernel)
    z            omega^k         the L-th roots of unity exp(-2 pi i k / L)
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from ssmkit._checks import check_choice, check_positive_int, check_tensor
from ssmkit._dtypes import complex_of

# Elements (of the complex dtype) in one chunk's Cauchy block (dplr_kernel): 2^21 = 32 MiB complex128.
_CHUNK_ELEMENTS = 1 << 21


def _run(fn, *args):
    """fn(*args), recomputed in the backward pass when gradients flow (so its blocks are not kept)."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# ---- the reference -------------------------------------------------------------------------------

def dense_kernel(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """K_l = C Ad^l Bd for l < L by stepping x <- Ad x from x = Bd: (..., L). The oracle.

    Ad (..., n, n), Bd (..., n), C (..., n); batch dims broadcast. Real or complex.
    """
    check_tensor("Ad", Ad, legend="(..., n, n)")
    if Ad.dim() < 2 or Ad.shape[-1] != Ad.shape[-2]:
        raise ValueError(f"Ad must have shape (..., n, n), got {tuple(Ad.shape)}")
    n = Ad.shape[-1]
    for name, t in (("Bd", Bd), ("C", C)):
        check_tensor(name, t)
        if t.dim() < 1 or t.shape[-1] != n:
            raise ValueError(
                f"{name} must have shape (..., {n}) to match Ad {tuple(Ad.shape)}, got {tuple(t.shape)}"
            )
    check_positive_int("L", L)
    x, out = Bd, []
    for _ in range(L):
        out.append((C * x).sum(-1))
        x = (Ad @ x.unsqueeze(-1)).squeeze(-1)
    return torch.stack(out, -1)


# ---- diagonal A: Vandermonde -----------------------------------------------------------------------

def _powers(dtA: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """exp(dtA_n l) for every n and l: (..., n) x (T,) -> (..., n, T); exactly 1 at l = 0, also where
    Ad = 0 (dtA = -inf, where -inf * 0 would give nan; the mask keeps nan out of the gradient too)."""
    x = dtA.unsqueeze(-1) * l
    return torch.exp(torch.where(l == 0, torch.zeros((), dtype=x.dtype, device=x.device), x))


def _powers_re_im(dtA: torch.Tensor, l: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re and Im of exp(dtA_n l) for complex dtA, from real exp, cos and sin, with l's axis inserted at
    `dim` (-2: (..., T, n); -1: (..., n, T)) and, as `_powers`, exactly 1 at l = 0."""
    at_zero = (l == 0) if dim == -1 else (l == 0)[:, None]
    l = l if dim == -1 else l[:, None]
    a, b = dtA.real.unsqueeze(dim), dtA.imag.unsqueeze(dim)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    r = torch.exp(torch.where(at_zero, zero, a * l))
    phase = torch.where(at_zero, zero, b * l)
    return r * torch.cos(phase), r * torch.sin(phase)


def vandermonde_kernel(dtA: torch.Tensor, BC: torch.Tensor, L: int, *, conj_sym: bool = False,
                       chunk: int | None = None) -> torch.Tensor:
    """K_l = sum_n BC_n exp(dtA_n l), l < L (2 Re of it if conj_sym): (..., L).

    dtA, BC (..., n), real or complex, batch dims broadcast. For ZOH pass dtA = dt A and BC = C Bd;
    for bilinear dtA = log(Ad) (see diag_kernel). The result is real when conj_sym or when dtA and BC
    are both real, complex otherwise.

    Blocked as a matrix product: with l = c T + j (block c, offset j < T),
        K_{cT+j} = sum_n [BC_n exp(dtA_n c T)] exp(dtA_n j) = (W V)_{c j},
    W (..., L/T, n) and V (..., n, T): two small exp tables and one batched matmul (BLAS), so the
    d n L work is multiply-adds, not complex exps, and memory is O(batch n (T + L/T) + batch L),
    never O(batch n L). `chunk` = T (default ceil(sqrt(L)), which makes both tables smallest).
    Autograd keeps only W and V. Each power is one exp of the exact product (no repeated
    multiplication), so error does not grow with l beyond the rounding of dtA * l itself.
    """
    check_tensor("dtA", dtA, legend="(..., n)")
    check_tensor("BC", BC, legend="(..., n)")
    if dtA.dim() < 1 or BC.dim() < 1 or dtA.shape[-1] != BC.shape[-1]:
        raise ValueError(f"dtA and BC must both be (..., n) with the same n, got dtA {tuple(dtA.shape)} "
                         f"and BC {tuple(BC.shape)}")
    try:
        torch.broadcast_shapes(dtA.shape[:-1], BC.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"batch dims of dtA {tuple(dtA.shape)} and BC {tuple(BC.shape)} do not broadcast"
        ) from None
    check_positive_int("L", L)
    if chunk is not None:
        check_positive_int("chunk", chunk)
    T = min(chunk or math.isqrt(L - 1) + 1, L)
    n_blocks = -(-L // T)
    if dtA.is_complex() or BC.is_complex():
        dtype = complex_of(torch.promote_types(dtA.real.dtype, BC.real.dtype))
    else:
        dtype = torch.promote_types(dtA.dtype, BC.dtype)
    dtA, BC = dtA.to(dtype), BC.to(dtype)
    real = dtA.real.dtype
    j = torch.arange(T, device=dtA.device, dtype=real)
    c = torch.arange(n_blocks, device=dtA.device, dtype=real) * T
    if conj_sym and dtype.is_complex:
        # 2 Re(W V) = 2 [Re W, -Im W] @ [Re V; Im V]: one real matmul over 2n, the tables built from real
        # exp, cos and sin (a complex exp costs several times those, and torch's batched matmul of the
        # strided .real/.imag views runs matrix by matrix)
        Vr, Vi = _powers_re_im(dtA, j, -1)                             # (..., n, T) each
        Pr, Pi = _powers_re_im(dtA, c, -2)                             # (..., L/T, n) each
        Br, Bi = BC.real.unsqueeze(-2), BC.imag.unsqueeze(-2)
        W = torch.cat([Br * Pr - Bi * Pi, -(Br * Pi + Bi * Pr)], -1)   # (..., L/T, 2n)
        K = 2 * (W @ torch.cat([Vr, Vi], -2))                          # (..., L/T, T)
        return K.flatten(-2)[..., :L]
    V = _powers(dtA, j)                                                # (..., n, T)
    W = (BC.unsqueeze(-1) * _powers(dtA, c)).transpose(-1, -2)         # (..., L/T, n)
    K = W @ V
    K = 2 * K.real if conj_sym else K                                  # (..., L/T, T)
    return K.flatten(-2)[..., :L]


def diag_kernel(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt, L: int, *, discretization: str = "zoh",
                conj_sym: bool = False, chunk: int | None = None) -> torch.Tensor:
    """Kernel of the diagonal SSM (A, B, C) (..., n) with step dt (broadcast over A's batch dims).

    ZOH: Ad = exp(dt A), so dtA = dt A exactly. Bilinear: Ad = (1 + dt/2 A) / (1 - dt/2 A), and
    dtA = log(Ad) (complex log, so a negative real Ad works too). Then BC = C Bd and the Vandermonde
    kernel. Returns (..., L), real if conj_sym or if A, B, C are real.
    """
    from ssmkit.math import discretize

    check_choice("discretization", discretization, ("zoh", "bilinear"))
    Ad, Bd = getattr(discretize, discretization)(A, B, dt, diagonal=True)   # (..., n)
    if discretization == "zoh":
        dt_t = torch.as_tensor(dt, dtype=A.real.dtype, device=A.device)
        dtA = dt_t.reshape(dt_t.shape + (1,)) * A
    else:
        dtA = torch.log(Ad.to(complex_of(Ad.dtype)))
    K = vandermonde_kernel(dtA, C * Bd, L, conj_sym=conj_sym, chunk=chunk)
    real_system = not (A.is_complex() or B.is_complex() or C.is_complex())
    return K.real if (real_system and K.is_complex()) else K


# ---- DPLR: Cauchy + Woodbury ----------------------------------------------------------------------

def _pair_sum(v, r1, r2):
    """sum over the full (conjugate-paired) system: sum_n v_n r1_n + conj(v_n) r2_n.

    v (..., d, n) and r1, r2 (d, k, n) -> (..., d, k).
    """
    return torch.einsum("...dn,dkn->...dk", v, r1) + torch.einsum("...dn,dkn->...dk", v.conj(), r2)


def _dplr_block(Lambda, P, B, Ct, dt, z):
    """K^(z) = C~ (I - Ad z)^{-1} Bd at the points z (k,): (d, k) complex.

    Bilinear: (I - z Ad)^{-1} Bd = dt [(1 - z) I - s A]^{-1} B with s = dt (1 + z) / 2; with
    A = Lambda - P P^* and R = [(1 - z) - s Lambda]^{-1} (diagonal), Woodbury gives
        K^ = dt [C~ R B - s C~ R P (I + s P^* R P)^{-1} P^* R B],
    finite at z = -1 (s = 0) unlike the 2/(1+z) form.
    """
    s = dt[:, None] * (1 + z) / 2                                      # (d, k)
    one_minus_z = (1 - z)[None, :, None]                               # (1, k, 1)
    r1 = 1 / (one_minus_z - s[..., None] * Lambda[:, None, :])         # (d, k, N2)
    r2 = 1 / (one_minus_z - s[..., None] * Lambda.conj()[:, None, :])  # the conjugate half
    k00 = _pair_sum(Ct * B, r1, r2)                                    # (d, k)     C~ R B
    k01 = _pair_sum(Ct * P, r1, r2)                                    # (r, d, k)  C~ R P
    k10 = _pair_sum(P.conj() * B, r1, r2)                              # (r, d, k)  P^* R B
    k11 = _pair_sum(P.conj()[:, None] * P[None], r1, r2)               # (r, r, d, k) [b, a]: p_b^* R p_a
    rank = P.shape[0]
    M = torch.eye(rank, dtype=k11.dtype, device=k11.device) + s[..., None, None] * k11.permute(2, 3, 0, 1)
    w = torch.linalg.solve(M, k10.permute(1, 2, 0).unsqueeze(-1)).squeeze(-1)   # (d, k, r)
    return dt[:, None] * (k00 - s * (k01.permute(1, 2, 0) * w).sum(-1))


def dplr_kernel(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor, dt: torch.Tensor,
                L: int, *, discretization: str = "bilinear", chunk: int | None = None) -> torch.Tensor:
    """Kernel (d, L), real, of the full conjugate-symmetric DPLR system, S4's algorithm.

    The full system has N = 2 N2 states (x, conj x): A = diag(Lambda, conj Lambda) - p p^* (summed over
    rank) with p = (P, conj P), B_full = (B, conj B), C~_full = (Ct, conj Ct); it reads out 2 Re(C x).
    Bilinear discretization (Ad, Bd), see discretize.bilinear.

    C~: S4 trains C~ = C (I - Ad^L) in place of C. The generating function truncated at L terms is
    sum_{l<L} K_l z^l = C (I - Ad^L z^L)(I - Ad z)^{-1} Bd, and at the L-th roots of unity z^L = 1, so
    it is C~ (I - Ad z)^{-1} Bd: a Cauchy sum with a rank-r Woodbury correction, no powers of Ad.
    K is then the inverse FFT of those L values (irfft of the L//2+1 non-negative frequencies).
    Use c_tilde / c_from_c_tilde to convert between C and C~ for a given L.

    Lambda (d or 1, N2) complex, P (rank, d or 1, N2), B (d, N2), Ct (d, N2), dt (d,) positive.
    Needs (1 - z) - s Lambda != 0 at every root z, which Re Lambda < 0 guarantees (the S4 layer keeps
    Re Lambda <= -1e-4); a purely imaginary Lambda (fout, lagt) can make a Cauchy term blow up.
    Frequencies are done `chunk` at a time (recomputed in backward), bounding the (d, chunk, N2) blocks.
    """
    check_choice("discretization", discretization, ("bilinear",))
    check_tensor("Lambda", Lambda, ndim=2, legend="(d or 1, N2)")
    N2 = Lambda.shape[-1]
    check_tensor("B", B, ndim=2, legend="(d, N2)")
    d = B.shape[0]
    check_tensor("B", B, shape=(d, N2), legend="(d, N2)")
    check_tensor("Ct", Ct, shape=(d, N2), legend="(d, N2)")
    check_tensor("P", P, ndim=3, legend="(rank, d or 1, N2)")
    if P.shape[-1] != N2 or P.shape[1] not in (1, d):
        raise ValueError(f"P must have shape (rank, {d} or 1, {N2}), got {tuple(P.shape)}")
    if Lambda.shape[0] not in (1, d):
        raise ValueError(f"Lambda must have shape ({d} or 1, {N2}), got {tuple(Lambda.shape)}")
    check_tensor("dt", dt, shape=(d,), legend="(d,)")
    check_positive_int("L", L)
    if chunk is not None:
        check_positive_int("chunk", chunk)
    real = torch.promote_types(dt.dtype, Lambda.real.dtype)
    ctype = complex_of(real)
    Lambda, P, B, Ct = (t.to(ctype) for t in (Lambda, P, B, Ct))
    dt = dt.to(real)
    Lambda = Lambda.expand(d, N2)
    P = P.expand(P.shape[0], d, N2)
    k = torch.arange(L // 2 + 1, device=dt.device, dtype=real)
    z = torch.exp(torch.complex(torch.zeros_like(k), -2 * math.pi * k / L))   # (L//2+1,) roots of unity
    T = chunk or max(1, _CHUNK_ELEMENTS // max(1, d * N2 * P.shape[0] ** 2))
    Kf = torch.cat([_run(_dplr_block, Lambda, P, B, Ct, dt, z[s : s + T]) for s in range(0, len(z), T)], -1)
    return torch.fft.irfft(Kf, n=L)                                    # (d, L)


def dplr_to_dense(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor,
                  discretization: str = "bilinear"):
    """The full DPLR system as dense complex tensors per channel: (Ad (d, N, N), Bd (d, N), C (d, N)).

    A = diag(Lambda, conj Lambda) - sum_r p_r p_r^* with p_r = (P_r, conj P_r); B, C likewise stacked
    with their conjugates (N = 2 N2). Shapes as in dplr_kernel; discretization is any of
    ssmkit.math.discretize ("zoh", "bilinear", "euler", "backward_euler").
    """
    from ssmkit.math import discretize

    check_choice("discretization", discretization, ("zoh", "bilinear", "euler", "backward_euler"))
    d = B.shape[0]
    full = lambda t: torch.cat([t, t.conj()], -1)                      # noqa: E731  (..., N2) -> (..., N)
    Lf = full(Lambda.to(torch.promote_types(Lambda.dtype, torch.complex64))).expand(d, -1)
    Pf = full(P.to(Lf.dtype)).expand(P.shape[0], d, -1)                # (r, d, N)
    A = torch.diag_embed(Lf) - torch.einsum("rdi,rdj->dij", Pf, Pf.conj())   # (d, N, N)
    Ad, Bd = getattr(discretize, discretization)(A, full(B.to(Lf.dtype)), dt, diagonal=False)
    return Ad, Bd, full(C.to(Lf.dtype))


def c_tilde(C: torch.Tensor, Ad: torch.Tensor, L: int) -> torch.Tensor:
    """C~ = C (I - Ad^L), dense: C (..., N), Ad (..., N, N) -> (..., N)."""
    check_positive_int("L", L)
    return C - (C.unsqueeze(-2) @ torch.linalg.matrix_power(Ad, L)).squeeze(-2)


def c_from_c_tilde(Ct: torch.Tensor, Ad: torch.Tensor, L: int) -> torch.Tensor:
    """C = C~ (I - Ad^L)^{-1}, dense: Ct (..., N), Ad (..., N, N) -> (..., N)."""
    check_positive_int("L", L)
    eye = torch.eye(Ad.shape[-1], dtype=Ad.dtype, device=Ad.device)
    M = eye - torch.linalg.matrix_power(Ad, L)
    return torch.linalg.solve(M.mT, Ct.unsqueeze(-1).to(M.dtype)).squeeze(-1)


__all__ = ["dense_kernel", "vandermonde_kernel", "diag_kernel", "dplr_kernel", "dplr_to_dense", "c_tilde",
           "c_from_c_tilde"]
