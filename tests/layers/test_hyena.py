"""Hyena: the five laws (order 2 and 3), the filter's prefix property, the state's growth, l_max errors."""


import pytest
import torch

from ssmkit.layers import Hyena
from tests.helpers import assert_rel, check_laws


@pytest.fixture
def exact_conv(monkeypatch):
    """The laws on the direct-convolution backend: FFT round-off gives the future a ~1e-8 (not 0)
    gradient, which the exact causality law would flag; test_fft_backend_matches covers the FFT path."""
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")


@pytest.mark.parametrize("order,short", [(2, 3), (3, 2)])
def test_laws(order, short, exact_conv):
    layer = Hyena(8, l_max=32, order=order, filter_order=16, emb_dim=5, short_filter_order=short)
    check_laws(layer, torch.randn(2, 13, 8))


def test_laws_float64(exact_conv):
    layer = Hyena(6, l_max=16, filter_order=8).double()
    check_laws(layer, torch.randn(2, 12, 6, dtype=torch.float64), tol=1e-9)


def test_fft_backend_matches(monkeypatch):
    layer = Hyena(8, l_max=64, filter_order=16).double()
    x = torch.randn(2, 50, 8, dtype=torch.float64)
    y_fft = layer(x)
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    assert_rel(y_fft, layer(x), 1e-10, "fft vs direct")


def test_filter_prefix_and_window():
    layer = Hyena(4, l_max=64, filter_order=8)
    h_long, h_short = layer.filter(64, torch.float64), layer.filter(20, torch.float64)
    assert torch.equal(h_long[:, :20], h_short), "a filter prefix depends on the length asked"
    assert h_long.shape == (2 * 4, 64)
    # the exponential window makes the tail small relative to the start, per channel on average
    assert h_long[:, -8:].abs().mean() < h_long[:, :8].abs().mean()


def test_state_grows_and_l_max():
    layer = Hyena(4, l_max=10, filter_order=8)
    x = torch.randn(2, 6, 4)
    _, st = layer(x, return_state=True)
    assert st["history"].shape == (2, 2, 4, 6)
    _, st2 = layer.step(x[:, 0], st)
    assert st2["history"].shape == (2, 2, 4, 7)
    with pytest.raises(ValueError, match="l_max=10"):
        layer(x, state=st)
    with pytest.raises(ValueError, match="l_max=10"):
        layer(torch.randn(1, 11, 4))


def test_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        Hyena(4, l_max=8, bidirectional=True)
    with pytest.raises(ValueError, match="emb_dim must be odd"):
        Hyena(4, l_max=8, emb_dim=4)
    with pytest.raises(ValueError, match="l_max must be a positive int"):
        Hyena(4, l_max=0)
