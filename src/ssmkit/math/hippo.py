"""HiPPO transition matrices and their normal-plus-low-rank (NPLR) and diagonal-plus-low-rank (DPLR)
forms (Gu et al., "HiPPO", NeurIPS 2020; "S4", ICLR 2022), and the S4D diagonal inits (Gu et al.,
"On the Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022).

Convention: dx/dt = A x + B u (A already carries its minus sign).

Glossary (code name: paper symbol, shape):
    N          N          state size (d_state)
    N2         N/2        one state of each conjugate pair (DPLR, S4D complex inits)
    A, B       A, B       (N, N), (N,) the continuous system
    P          P          (rank, N) real low-rank correction: S = A + P^T P is normal
    Lambda     Lambda     eigenvalues of S (complex), A = V (diag(Lambda) - P P^*) V^*
    V          V          unitary eigenvectors of S, columns
    measure    mu         "legs" (scaled Legendre), "legt" (translated Legendre), "lagt" (translated
                          Laguerre), "fout" (translated Fourier)

Low-rank convention. P is stored as rows (rank, N); "P P^*" means sum_r p_r p_r^*, the (N, N) matrix
P^T conj(P). In the eigenbasis, P <- V^* P, i.e. each row p_r becomes V^* p_r.
"""

from __future__ import annotations

import math

import torch

from ssmkit._checks import check_choice, check_positive_int

MEASURES = ("legs", "legt", "lagt", "fout")
S4D_INITS = ("legs", "lin", "inv", "real")
_MIN_RANK = {"legs": 1, "legt": 2, "lagt": 1, "fout": 1}


def transition(measure: str, N: int, dtype: torch.dtype = torch.float64):
    """The HiPPO system (A (N, N), B (N,)) for `measure`, dx/dt = A x + B u, as in S4.

    legs: A[n,k] = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k); B[n] = sqrt(2n+1).
    legt: A[n,k] = -1/2 sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)^(n-k)), B[n] = 1/2 sqrt(2n+1)
          (the LMU matrix, halved for the window length 1 timescale, as S4 does).
    lagt: A = I/2 - tril(ones), B = ones (generalized Laguerre with beta = 1).
    fout: A = pi * blockdiag_k([[0, -k], [k, 0]]) - B B^T, k = 0 .. N/2-1, B = (1, 0, sqrt2, 0, sqrt2, ...)
          on states (cos_0, sin_0, cos_1, sin_1, ...); B B^T is the window's other endpoint (as in S4).
    """
    check_choice("measure", measure, MEASURES)
    check_positive_int("N", N)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)                                          # (N,)
    row, col = n[:, None], n[None, :]
    if measure == "legs":
        A = -torch.where(row > col, r[:, None] * r[None, :], torch.zeros(()))
        A = A - torch.diag(n + 1)
        B = r.clone()
    elif measure == "legt":
        sign = torch.where(row >= col, torch.ones(()), (-1.0) ** (row - col))
        A = -0.5 * r[:, None] * sign * r[None, :]
        B = 0.5 * r
    elif measure == "lagt":
        A = torch.eye(N, dtype=torch.float64) / 2 - torch.tril(torch.ones(N, N, dtype=torch.float64))
        B = torch.ones(N, dtype=torch.float64)
    else:  # fout: states (cos_0, sin_0, cos_1, sin_1, ...); pair (2k, 2k+1) rotates at pi k
        B = _fout_vector(N)
        freq = torch.zeros(N - 1, dtype=torch.float64)                 # off-diagonal entry j couples j, j+1
        freq[0::2] = torch.arange(len(freq[0::2]), dtype=torch.float64)
        A = math.pi * (torch.diag(freq, -1) - torch.diag(freq, 1))
        A = A - B[:, None] * B[None, :]
    return A.to(dtype), B.to(dtype)


def _fout_vector(N: int) -> torch.Tensor:
    v = torch.zeros(N, dtype=torch.float64)
    v[0::2] = math.sqrt(2)
    v[0] = 1.0
    return v


def rank_correction(measure: str, N: int, rank: int = 1, dtype: torch.dtype = torch.float64):
    """P (rank, N) real such that S = A + P^T P is normal: S = skew-symmetric + c I.

    legs: P = sqrt(n + 1/2), c = -1/2.   legt: rank >= 2, P = sqrt(2n+1)/sqrt2 split into even and
    odd n rows, c = 0.   lagt: P = sqrt(1/2) ones, c = 0.   fout: P = B, c = 0.
    Extra rows (rank above the measure's own) are zero.
    """
    check_choice("measure", measure, MEASURES)
    check_positive_int("N", N)
    check_positive_int("rank", rank)
    if rank < _MIN_RANK[measure]:
        raise ValueError(f"rank must be >= {_MIN_RANK[measure]} for measure={measure!r}, got {rank}")
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        P = torch.sqrt(n + 0.5)[None]
    elif measure == "legt":
        p = torch.sqrt(2 * n + 1) / math.sqrt(2)
        even, odd = p.clone(), p.clone()
        even[1::2], odd[0::2] = 0.0, 0.0
        P = torch.stack([even, odd])
    elif measure == "lagt":
        P = torch.full((1, N), math.sqrt(0.5), dtype=torch.float64)
    else:
        P = _fout_vector(N)[None]
    P = torch.cat([P, P.new_zeros(rank - P.shape[0], N)])
    return P.to(dtype)


def _normal_part(measure: str, N: int, rank: int):
    """A, B, P and the eigendecomposition S = A + P^T P = V diag(Lambda) V^*, float64/complex128.

    S = K + c I with K real skew-symmetric; -i K is Hermitian, so eigh gives real w and unitary V with
    K = V diag(i w) V^*, Lambda = c + i w, sorted by Im Lambda ascending.
    """
    A, B = transition(measure, N)
    P = rank_correction(measure, N, rank)
    S = A + P.T @ P
    c = torch.diagonal(S).mean()
    K = S - c * torch.eye(N, dtype=S.dtype)
    skew_err = (K + K.T).abs().max().item()
    if skew_err > 1e-8 * max(1.0, K.abs().max().item()):
        raise RuntimeError(
            f"A + P^T P - cI is not skew-symmetric for measure={measure!r} (error {skew_err:.2e})"
        )
    K = (K - K.T) / 2                                                  # exactly skew
    w, V = torch.linalg.eigh(-1j * K.to(torch.complex128))              # ascending w
    Lambda = c + 1j * w
    return A, B, P, Lambda, V


def nplr(measure: str, N: int, rank: int = 1):
    """Normal plus low-rank form, complex128: A = V (diag(Lambda) - P P^*) V^*.

    Returns Lambda (N,), P (rank, N) = rows V^* p_r, B (N,) = V^* B, V (N, N) unitary.
    """
    _, B, P, Lambda, V = _normal_part(measure, N, rank)
    Vh = V.conj().T
    return Lambda, P.to(V.dtype) @ Vh.T, Vh @ B.to(V.dtype), V


def dplr(measure: str, N: int, rank: int = 1):
    """Conjugate-symmetric half of `nplr`: the N2 = N/2 eigenvalues with Im Lambda >= 0 (ascending).

    Returns Lambda (N2,), P (rank, N2), B (N2,), V (N, N2); the other half is the complex conjugate,
    so that A = 2 Re(V diag(Lambda) V^*) - P0^T P0 with P0 = 2 Re(P V^T) the real correction, and the
    full system (x, conj x) reads out 2 Re(C x). N must be even. A pair of zero eigenvalues of S gets
    eigenvectors (u1 -+ i u2)/sqrt2 from a real basis (u1, u2) of its null space, so pairs stay conjugate.
    """
    if N % 2:
        raise ValueError(f"N must be even for the conjugate-symmetric DPLR form, got {N}")
    _, B, P, Lambda, V = _normal_part(measure, N, rank)
    N2 = N // 2
    w = Lambda.imag
    tol = 1e-9 * max(1.0, w.abs().max().item())
    zero = (w.abs() <= tol).nonzero().flatten()
    if len(zero) % 2:
        raise RuntimeError(f"odd number ({len(zero)}) of zero eigenvalues of the normal part: cannot pair")
    if len(zero):
        # real orthonormal basis of the null space of the skew part, then conjugate pairs
        U = torch.linalg.svd(torch.cat([V[:, zero].real, V[:, zero].imag], 1))[0][:, : len(zero)]
        U = U.to(torch.complex128)
        pairs = [(U[:, 2 * j] - 1j * U[:, 2 * j + 1]) / math.sqrt(2) for j in range(len(zero) // 2)]
        V = V.clone()
        for j, v in enumerate(pairs):
            V[:, zero[2 * j]], V[:, zero[2 * j + 1]] = v.conj(), v
        w = w.clone()
        w[zero] = 0.0
    keep = torch.arange(N - N2, N)                                     # the upper half of ascending Im
    Lambda_h = torch.complex(Lambda.real[keep], w[keep])
    V_h = V[:, keep]                                                   # (N, N2)
    Vh = V_h.conj().T                                                  # (N2, N)
    return Lambda_h, P.to(V.dtype) @ Vh.T, Vh @ B.to(V.dtype), V_h


def s4d_init(kind: str, N: int):
    """S4D initializations of a diagonal A with its B.

    legs: A = Lambda, B = V^* B of `dplr("legs", N)` (the diagonal part of S4's LegS DPLR), (N//2,).
    lin:  A_n = -1/2 + i pi n, B_n = 1, (N//2,) complex.
    inv:  A_n = -1/2 + i N/pi (N/(2n+1) - 1), B_n = 1, (N//2,) complex.
    real: A_n = -(n+1), B_n = 1, (N,) float64.
    Complex inits store one of each conjugate pair (read out 2 Re(C x)).
    """
    check_choice("kind", kind, S4D_INITS)
    check_positive_int("N", N)
    if kind == "real":
        return -(torch.arange(N, dtype=torch.float64) + 1), torch.ones(N, dtype=torch.float64)
    if N % 2:
        raise ValueError(f"N must be even for the complex S4D init {kind!r} (conjugate pairs), got {N}")
    if kind == "legs":
        Lambda, _, B, _ = dplr("legs", N)
        return Lambda, B
    n = torch.arange(N // 2, dtype=torch.float64)
    imag = math.pi * n if kind == "lin" else N / math.pi * (N / (2 * n + 1) - 1)
    A = torch.complex(torch.full_like(n, -0.5), imag)
    return A, torch.ones(N // 2, dtype=torch.complex128)


__all__ = ["transition", "rank_correction", "nplr", "dplr", "s4d_init", "MEASURES", "S4D_INITS"]
