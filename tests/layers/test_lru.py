"""LRU: the five laws, the explicit recurrence of the paper, the ring initialization, errors."""

import pytest
import torch

from ssmkit.layers import LRU
from tests.helpers import assert_rel, check_laws


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_laws(dtype, tol):
    check_laws(LRU(8, 16, r_min=0.5, r_max=0.99).to(dtype), torch.randn(2, 14, 8, dtype=dtype), tol=tol)


def test_matches_the_explicit_recurrence():
    layer = LRU(5, 6, r_min=0.4, r_max=0.95).double()
    u = torch.randn(2, 11, 5, dtype=torch.float64)
    lam = torch.exp(torch.complex(-layer.nu_log.exp(), layer.theta_log.exp()))
    gamma = layer.gamma_log.exp()
    B, C = torch.view_as_complex(layer.B), torch.view_as_complex(layer.C)
    x = torch.zeros(2, 6, dtype=torch.complex128)
    ys = []
    for k in range(11):
        x = lam * x + gamma * (u[:, k].to(B.dtype) @ B.T)
        ys.append((x @ C.T).real + layer.D * u[:, k])
    assert_rel(layer(u), torch.stack(ys, 1), 1e-12, "LRU vs its recurrence")


def test_ring_initialization_and_normalization():
    layer = LRU(4, 4096, r_min=0.9, r_max=0.999, max_phase=0.5)
    r = torch.exp(-layer.nu_log.exp())
    assert r.min() >= 0.9 - 1e-6 and r.max() <= 0.999 + 1e-6
    assert layer.theta_log.exp().max() <= 0.5 + 1e-6
    torch.testing.assert_close(layer.gamma_log.exp(), torch.sqrt(1 - r**2), rtol=1e-5, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="r_min < r_max"):
        LRU(4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="bidirectional"):
        LRU(4, bidirectional=True)
