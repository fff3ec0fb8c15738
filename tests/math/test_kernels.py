"""ssmkit.math.kernels: Vandermonde and DPLR kernels against the dense reference, gradients, memory."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssmkit.math import discretize
from ssmkit.math.hippo import MEASURES, dplr, s4d_init
from ssmkit.math.kernels import (
    c_from_c_tilde,
    c_tilde,
    dense_kernel,
    diag_kernel,
    dplr_kernel,
    dplr_to_dense,
    vandermonde_kernel,
)
from tests.helpers import assert_rel

F64, C128 = torch.float64, torch.complex128
DT = torch.tensor([1e-3, 0.05, 0.3], dtype=F64)                       # one step size per channel


def _rank(measure):
    return 2 if measure == "legt" else 1


def _stable(Lambda, max_re=-0.05):
    """Lambda with Re <= max_re, as the S4 layer keeps it (lagt, legt, fout have Re Lambda = 0)."""
    return torch.complex(Lambda.real.clamp(max=max_re), Lambda.imag)


@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_diag_kernel_vs_dense_s4d(init, disc):
    g = torch.Generator().manual_seed(0)
    N, L = 8, 33
    A, B = s4d_init(init, N)
    A, B = A.expand(3, -1), B.expand(3, -1)
    C = torch.randn(3, A.shape[-1], dtype=A.dtype, generator=g)
    cs = A.is_complex()
    K = diag_kernel(A, B, C, DT, L, discretization=disc, conj_sym=cs, chunk=5)
    Ad, Bd = getattr(discretize, disc)(A, B, DT, diagonal=True)
    ref = dense_kernel(torch.diag_embed(Ad), Bd, C, L)
    assert_rel(K, 2 * ref.real if cs else ref, 1e-12, f"{init}/{disc}")


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_diag_kernel_vs_dense_hippo_diagonal(measure, disc):
    """The diagonal part of each measure's DPLR as a diagonal SSM (S4D-style), no conj_sym: complex K."""
    g = torch.Generator().manual_seed(1)
    Lambda, _, B, _ = dplr(measure, 8, rank=_rank(measure))
    A = _stable(Lambda)
    C = torch.randn(3, 4, dtype=C128, generator=g)
    K = diag_kernel(A, B, C, DT, 40, discretization=disc, chunk=16)
    Ad, Bd = getattr(discretize, disc)(A.expand(3, -1), B, DT, diagonal=True)
    assert_rel(K, dense_kernel(torch.diag_embed(Ad), Bd, C, 40), 1e-12, measure)


def test_vandermonde_real_and_chunk_independent():
    g = torch.Generator().manual_seed(2)
    dtA = -torch.rand(2, 5, dtype=F64, generator=g)
    BC = torch.randn(2, 5, dtype=F64, generator=g)
    K = vandermonde_kernel(dtA, BC, 17)
    assert K.dtype == F64 and K.shape == (2, 17)
    ref = dense_kernel(torch.diag_embed(dtA.exp()), BC, torch.ones_like(BC), 17)
    assert_rel(K, ref, 1e-13, "real")
    for chunk in (1, 3, 17, 100):
        assert_rel(vandermonde_kernel(dtA, BC, 17, chunk=chunk), K, 1e-14, f"chunk={chunk}")


def _random_dplr(g, d=3, N2=4, rank=2):
    re = -torch.rand(d, N2, dtype=F64, generator=g) - 0.1
    Lambda = torch.complex(re, 3 * torch.randn(d, N2, dtype=F64, generator=g))
    P = torch.randn(rank, d, N2, dtype=C128, generator=g) * 0.5
    B = torch.randn(d, N2, dtype=C128, generator=g)
    Ct = torch.randn(d, N2, dtype=C128, generator=g)
    return Lambda, P, B, Ct


def _dplr_reference(Lambda, P, B, Ct, dt, L):
    Ad, Bd, Ct_full = dplr_to_dense(Lambda, P, B, Ct, dt)
    K = dense_kernel(Ad, Bd, c_from_c_tilde(Ct_full, Ad, L), L)
    assert K.imag.abs().max() < 1e-9 * K.real.abs().max()             # conjugate-symmetric: K real
    return K.real


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("L", [16, 21])
def test_dplr_kernel_vs_dense_hippo(measure, L):
    g = torch.Generator().manual_seed(3)
    Lambda, P, B, _ = dplr(measure, 8, rank=_rank(measure))
    if measure != "legs":
        Lambda = _stable(Lambda)
    Lambda, P, B = Lambda[None], P[:, None], B.expand(3, -1)
    Ct = torch.randn(3, 4, dtype=C128, generator=g)
    K = dplr_kernel(Lambda, P, B, Ct, DT, L)
    assert K.shape == (3, L) and K.dtype == F64
    assert_rel(K, _dplr_reference(Lambda, P, B, Ct, DT, L), 1e-10, measure)


def test_dplr_kernel_random_per_channel_and_chunks():
    g = torch.Generator().manual_seed(4)
    Lambda, P, B, Ct = _random_dplr(g)
    ref = _dplr_reference(Lambda, P, B, Ct, DT, 24)
    for chunk in (None, 1, 5):
        assert_rel(dplr_kernel(Lambda, P, B, Ct, DT, 24, chunk=chunk), ref, 1e-10, f"chunk={chunk}")


def test_dplr_kernel_float32():
    g = torch.Generator().manual_seed(5)
    Lambda, P, B, Ct = _random_dplr(g)
    ref = _dplr_reference(Lambda, P, B, Ct, DT, 32)
    K = dplr_kernel(*(t.to(torch.complex64) for t in (Lambda, P, B, Ct)), DT.float(), 32)
    assert K.dtype == torch.float32
    assert_rel(K, ref, 1e-4, "float32")


def test_c_tilde_round_trip():
    g = torch.Generator().manual_seed(6)
    Lambda, P, B, Ct = _random_dplr(g)
    Ad, _, C = dplr_to_dense(Lambda, P, B, Ct, DT)
    assert_rel(c_tilde(c_from_c_tilde(C, Ad, 20), Ad, 20), C, 1e-12, "C -> C~ -> C")


def test_gradcheck_vandermonde():
    g = torch.Generator().manual_seed(7)
    dtA = torch.complex(-torch.rand(2, 3, dtype=F64, generator=g), torch.randn(2, 3, dtype=F64, generator=g))
    BC = torch.randn(2, 3, dtype=C128, generator=g)
    args = (dtA.requires_grad_(), BC.requires_grad_())
    # chunk=3 < L: several blocks, so both exp tables (W and V) carry gradient
    assert torch.autograd.gradcheck(lambda a, b: vandermonde_kernel(a, b, 7, conj_sym=True, chunk=3), args)
    assert torch.autograd.gradcheck(lambda a, b: vandermonde_kernel(a, b, 7, chunk=3), args)


def test_gradcheck_dplr():
    g = torch.Generator().manual_seed(8)
    Lambda, P, B, Ct = _random_dplr(g, d=2, N2=2, rank=1)
    dt = DT[:2].clone()
    args = tuple(t.requires_grad_() for t in (Lambda, P, B, Ct, dt))
    assert torch.autograd.gradcheck(lambda *a: dplr_kernel(*a, 8, chunk=2), args, fast_mode=True)


class _LargestTensor(TorchDispatchMode):
    """Records the largest size in bytes of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_vandermonde_memory_does_not_scale_with_d_n_L():
    d, n, L, T = 8, 16, 1024, 128
    dtA = torch.complex(-torch.rand(d, n), torch.randn(d, n)).requires_grad_()
    BC = torch.randn(d, n, dtype=torch.complex64).requires_grad_()
    with _LargestTensor() as mode:
        K = vandermonde_kernel(dtA, BC, L, conj_sym=True, chunk=T)
        K.square().sum().backward()
    assert dtA.grad is not None and BC.grad is not None
    # forward and backward: nothing bigger than one complex64 (d, n, T) block or the (d, L) kernel
    assert mode.largest <= 8 * max(d * n * T, d * L), mode.largest
    assert mode.largest * 8 <= 8 * d * n * L                           # the naive (d, n, L) tensor


def test_errors_name_the_argument():
    z = torch.zeros(2, 3, dtype=C128)
    with pytest.raises(ValueError, match="dtA and BC"):
        vandermonde_kernel(z, torch.zeros(2, 4, dtype=C128), 5)
    with pytest.raises(ValueError, match="L must be a positive int"):
        vandermonde_kernel(z, z, 0)
    with pytest.raises(ValueError, match="chunk"):
        vandermonde_kernel(z, z, 4, chunk=0)
    with pytest.raises(ValueError, match="Ad must have shape"):
        dense_kernel(torch.zeros(2, 3), torch.zeros(3), torch.zeros(3), 4)
    with pytest.raises(ValueError, match="Bd must have shape"):
        dense_kernel(torch.zeros(3, 3), torch.zeros(2), torch.zeros(3), 4)
    g = torch.Generator().manual_seed(9)
    Lambda, P, B, Ct = _random_dplr(g)
    with pytest.raises(ValueError, match="Ct must have shape"):
        dplr_kernel(Lambda, P, B, Ct[:, :3], DT, 8)
    with pytest.raises(ValueError, match="P must have shape"):
        dplr_kernel(Lambda, P[..., :3], B, Ct, DT, 8)
    with pytest.raises(ValueError, match="dt must have shape"):
        dplr_kernel(Lambda, P, B, Ct, DT[:2], 8)
    with pytest.raises(ValueError, match="discretization"):
        dplr_kernel(Lambda, P, B, Ct, DT, 8, discretization="zoh")
    with pytest.raises(ValueError, match="discretization"):
        diag_kernel(Lambda, B, Ct, DT, 8, discretization="euler")
