"""ssmkit.math.discretize against scipy.signal.cont2discrete, dense and diagonal, batched dt."""

import numpy as np
import pytest
import torch
from scipy.signal import cont2discrete

from ssmkit.math import discretize
from ssmkit.math.hippo import transition

METHODS = [("zoh", "zoh"), ("bilinear", "bilinear"), ("euler", "euler"), ("backward_euler", "backward_diff")]


def _scipy(A, B, dt, method):
    n = A.shape[-1]
    ad, bd, *_ = cont2discrete((A, B, np.eye(n), 0), dt, method=method)
    return ad, bd


@pytest.mark.parametrize("name,method", METHODS)
@pytest.mark.parametrize("measure", ["legs", "fout"])
def test_dense_vs_scipy(name, method, measure):
    n = 6
    A, B = transition(measure, n)                                      # fout's A is singular: zoh must cope
    dt = torch.tensor([1e-3, 0.1, 0.7], dtype=torch.float64)
    Ad, Bd = getattr(discretize, name)(A, B, dt, diagonal=False)
    assert Ad.shape == (3, n, n) and Bd.shape == (3, n)
    for i in range(3):
        ad, bd = _scipy(A.numpy(), B.numpy()[:, None], dt[i].item(), method)
        np.testing.assert_allclose(Ad[i].numpy(), ad, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Bd[i].numpy(), bd[:, 0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,method", METHODS)
def test_dense_matrix_B_per_channel(name, method):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 5, 5, dtype=torch.float64, generator=g) - 2 * torch.eye(5, dtype=torch.float64)
    B = torch.randn(4, 5, 2, dtype=torch.float64, generator=g)
    dt = torch.rand(4, dtype=torch.float64, generator=g)
    Ad, Bd = getattr(discretize, name)(A, B, dt, diagonal=False)
    assert Bd.shape == (4, 5, 2)
    for i in range(4):
        ad, bd = _scipy(A[i].numpy(), B[i].numpy(), dt[i].item(), method)
        np.testing.assert_allclose(Ad[i].numpy(), ad, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Bd[i].numpy(), bd, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,method", METHODS)
@pytest.mark.parametrize("complex_", [False, True])
def test_diagonal_vs_scipy(name, method, complex_):
    g = torch.Generator().manual_seed(1)
    d, n = 4, 5
    A = -torch.rand(d, n, dtype=torch.float64, generator=g) * 3
    B = torch.randn(d, n, dtype=torch.float64, generator=g)
    if complex_:
        A = torch.complex(A, 5 * torch.randn(d, n, dtype=torch.float64, generator=g))
        B = torch.complex(B, torch.randn(d, n, dtype=torch.float64, generator=g))
    A[0, 0] = 0                                                        # zoh's A = 0 limit
    dt = torch.rand(d, dtype=torch.float64, generator=g)
    Ad, Bd = getattr(discretize, name)(A, B, dt, diagonal=True)
    assert Ad.shape == (d, n) and Bd.shape == (d, n)
    for i in range(d):
        ad, bd = _scipy(np.diag(A[i].numpy()), B[i].numpy()[:, None], dt[i].item(), method)
        np.testing.assert_allclose(Ad[i].numpy(), np.diag(ad), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Bd[i].numpy(), bd[:, 0], rtol=1e-12, atol=1e-13)


def test_dt_broadcasts_over_channels():
    A, B = transition("legs", 4)
    dt = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype=torch.float64)
    Ad, Bd = discretize.bilinear(A, B, dt, diagonal=False)
    assert Ad.shape == (3, 2, 4, 4) and Bd.shape == (3, 2, 4)
    Ad1, Bd1 = discretize.bilinear(A, B, 0.4, diagonal=False)
    assert torch.allclose(Ad[1, 1], Ad1) and torch.allclose(Bd[1, 1], Bd1)
    a = -torch.rand(3, 4, dtype=torch.float64)                        # diagonal inferred: (3, 4) not square
    Ad, Bd = discretize.zoh(a, torch.ones(4, dtype=torch.float64), torch.rand(3, dtype=torch.float64))
    assert Ad.shape == (3, 4) and Bd.shape == (3, 4)


@pytest.mark.parametrize("name", [m[0] for m in METHODS])
def test_gradcheck(name):
    g = torch.Generator().manual_seed(2)
    A = (torch.randn(3, 3, dtype=torch.float64, generator=g) - 2 * torch.eye(3, dtype=torch.float64))
    B = torch.randn(3, dtype=torch.float64, generator=g)
    dt = torch.tensor([0.2, 0.5], dtype=torch.float64)
    fn = getattr(discretize, name)
    args = (A.requires_grad_(), B.requires_grad_(), dt.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, t: fn(a, b, t, diagonal=False), args, fast_mode=True)
    re = torch.rand(2, 3, dtype=torch.float64, generator=g)
    im = torch.randn(2, 3, dtype=torch.float64, generator=g)
    a = torch.complex(-re, im)
    b = torch.randn(2, 3, dtype=torch.complex128, generator=g)
    args = (a.requires_grad_(), b.requires_grad_(), dt.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, t: fn(a, b, t, diagonal=True), args, fast_mode=True)


def test_errors():
    A, B = transition("legs", 4)
    with pytest.raises(ValueError, match="diagonal=True or diagonal=False"):
        discretize.zoh(A, B, 0.1)
    with pytest.raises(ValueError, match="B must have shape"):
        discretize.zoh(A, torch.ones(3, dtype=torch.float64), 0.1, diagonal=False)
    with pytest.raises(ValueError, match="dt"):
        discretize.zoh(A.expand(3, 4, 4), B, torch.ones(5, dtype=torch.float64), diagonal=False)
    with pytest.raises(ValueError, match="A must be square"):
        discretize.zoh(torch.ones(3, 4), torch.ones(4), 0.1, diagonal=False)
    with pytest.raises(TypeError, match="A must be a torch.Tensor"):
        discretize.euler([[1.0]], B, 0.1)
