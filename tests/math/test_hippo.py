"""ssmkit.math.hippo: HiPPO matrices, NPLR / DPLR reconstructions, S4D inits."""

import math

import pytest
import torch

from ssmkit.math.hippo import MEASURES, dplr, nplr, rank_correction, s4d_init, transition


def _rank(measure):
    return 2 if measure == "legt" else 1


def test_legs_entries():
    A, B = transition("legs", 5)
    for n in range(5):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1), rel=1e-15)
        for k in range(5):
            want = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k].item() == pytest.approx(want, rel=1e-15, abs=0)
    assert A.dtype == torch.float64 and transition("legs", 4, dtype=torch.float32)[0].dtype == torch.float32


@pytest.mark.parametrize("measure", MEASURES)
def test_rank_correction_makes_normal(measure):
    N = 10
    A, _ = transition(measure, N)
    P = rank_correction(measure, N, _rank(measure))
    S = A + P.T @ P
    assert torch.allclose(S @ S.T, S.T @ S, atol=1e-10)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [8, 32])
def test_nplr_reconstructs(measure, N):
    A, B = transition(measure, N)
    Lambda, P, Bv, V = nplr(measure, N, rank=_rank(measure))
    assert Lambda.shape == (N,) and P.shape == (_rank(measure), N) and Bv.shape == (N,) and V.shape == (N, N)
    assert torch.allclose(V.conj().T @ V, torch.eye(N, dtype=V.dtype), atol=1e-12)
    rec = V @ (torch.diag(Lambda) - P.T @ P.conj()) @ V.conj().T
    scale = A.abs().max()
    assert (rec - A).abs().max() < 1e-12 * scale
    assert (V @ Bv - B).abs().max() < 1e-12 * scale


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [8, 32])
def test_dplr_reconstructs(measure, N):
    A, B = transition(measure, N)
    r = _rank(measure)
    Lambda, P, Bh, V = dplr(measure, N, rank=r)
    N2 = N // 2
    assert Lambda.shape == (N2,) and P.shape == (r, N2) and Bh.shape == (N2,) and V.shape == (N, N2)
    assert (Lambda.imag >= 0).all() and (Lambda.imag.diff() >= 0).all()
    P0 = 2 * (P @ V.T).real                                            # the real correction, (r, N)
    rec = 2 * (V @ torch.diag(Lambda) @ V.conj().T).real - P0.T @ P0
    scale = A.abs().max()
    assert (rec - A).abs().max() < 1e-12 * scale
    assert (P0 - rank_correction(measure, N, r)).abs().max() < 1e-12 * scale
    assert (2 * (V @ Bh).real - B).abs().max() < 1e-12 * scale


def test_legs_normal_part_real_is_minus_half():
    Lambda, *_ = dplr("legs", 16)
    assert torch.allclose(Lambda.real, torch.full((8,), -0.5, dtype=torch.float64), atol=1e-12)


def test_s4d_inits():
    N = 8
    A, B = s4d_init("lin", N)
    n = torch.arange(4, dtype=torch.float64)
    assert A.shape == (4,) and A.dtype == torch.complex128 and B.shape == (4,)
    assert torch.allclose(A, torch.complex(torch.full_like(n, -0.5), math.pi * n))
    A, _ = s4d_init("inv", N)
    assert torch.allclose(A.imag, N / math.pi * (N / (2 * n + 1) - 1)) and (A.real == -0.5).all()
    A, B = s4d_init("real", N)
    assert A.shape == (N,) and not A.is_complex() and B.shape == (N,)
    assert torch.equal(A, -(torch.arange(N, dtype=torch.float64) + 1))
    A, B = s4d_init("legs", N)
    Lambda, _, Bh, _ = dplr("legs", N)
    assert torch.equal(A, Lambda) and torch.equal(B, Bh)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="measure"):
        transition("legx", 4)
    with pytest.raises(ValueError, match="N"):
        transition("legs", 0)
    with pytest.raises(ValueError, match="rank must be >= 2"):
        rank_correction("legt", 4, rank=1)
    with pytest.raises(ValueError, match="N must be even"):
        dplr("legs", 5)
    with pytest.raises(ValueError, match="kind"):
        s4d_init("foo", 4)
    with pytest.raises(ValueError, match="N must be even"):
        s4d_init("lin", 5)
