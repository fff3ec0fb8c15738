"""H3: the five laws (head_dim 1 and 2, zoh and bilinear), the shift SSM as an FIR, the diagonal SSM
against its own recurrence, errors."""


import pytest
import torch

from ssmkit.layers import H3
from tests.helpers import assert_rel, check_laws


@pytest.fixture
def exact_conv(monkeypatch):
    """The laws on the direct-convolution backend: the FFT's round-off gives the future a ~1e-8 (not 0)
    gradient, which the exact causality law would flag; test_fft_backend_matches covers the FFT path."""
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")


@pytest.mark.parametrize("head_dim,discretization", [(1, "zoh"), (2, "bilinear")])
def test_laws(head_dim, discretization, exact_conv):
    layer = H3(8, d_state=6, head_dim=head_dim, discretization=discretization)
    check_laws(layer, torch.randn(2, 13, 8))


def test_laws_float64_long_fir(exact_conv):
    # d_state longer than the chunks: the shift state spans several chunks
    layer = H3(4, d_state=16, head_dim=2).double()
    check_laws(layer, torch.randn(2, 12, 4, dtype=torch.float64), tol=1e-9)


def test_fft_backend_matches(monkeypatch):
    layer = H3(8, d_state=6, head_dim=2).double()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    y_fft, s_fft = layer(x, return_state=True)
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    y_ref, s_ref = layer(x, return_state=True)
    assert_rel(y_fft, y_ref, 1e-10, "fft vs direct")
    assert_rel(s_fft["diag"], s_ref["diag"], 1e-10, "fft vs direct: state")


def test_matches_explicit_recurrence():
    """q * SSM_diag(shift(k) * v) written out as plain loops (head_dim 1), float64."""
    torch.manual_seed(2)
    layer = H3(3, d_state=4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    q, k, v = layer.in_proj(x).chunk(3, dim=-1)
    m = layer.d_state
    K = layer.shift_kernel
    ks = torch.stack([sum(K[:, l] * k[:, t - l] for l in range(m) if t - l >= 0) for t in range(9)], 1)
    kv = ks * v
    _, _, C, _, Ad, Bd = layer._diag(torch.float64)
    s = torch.zeros(2, 3, m // 2, dtype=torch.complex128)
    ys = []
    for t in range(9):
        s = Ad * s + Bd * kv[:, t, :, None]
        ys.append(q[:, t] * (2 * (C * s).sum(-1).real + layer.D * kv[:, t]))
    want = layer.out_proj(torch.stack(ys, 1))
    assert_rel(layer(x), want, 1e-10, "H3 vs loops")


def test_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        H3(8, bidirectional=True)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        H3(6, head_dim=4)
    with pytest.raises(ValueError, match="n_heads \\* head_dim"):
        H3(8, head_dim=2, n_heads=3)
    with pytest.raises(ValueError, match="d_state must be even"):
        H3(8, d_state=5)
