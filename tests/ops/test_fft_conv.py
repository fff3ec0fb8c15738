"""ssmkit.ops.fft_conv: every tier (the FFT path) against the direct causal convolution (the oracle)."""

import numpy as np
import pytest
import torch

from ssmkit.ops import fft_conv
from ssmkit.ops._dispatch import resolve
from ssmkit.ops.fft_conv import fft, reference
from tests.helpers import TOL, assert_rel
from tests.ops.harness import Case, check_tiers


def _inputs(b, d, l, lk, dtype, channels=None, skip=True):
    u = torch.randn(b, d, l, dtype=dtype)
    kshape = (d, lk) if channels is None else (channels, d, lk)
    k = torch.randn(kshape, dtype=dtype) / lk**0.5
    D = torch.randn(kshape[:-1], dtype=dtype) if skip else None
    return u, k, D


def _case(b, d, l, lk, channels=None, skip=True):
    def make(dtype, gen):
        def r(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

        kshape = (d, lk) if channels is None else (channels, d, lk)
        return (r(b, d, l), r(*kshape) / lk**0.5), {"D": r(*kshape[:-1]) if skip else None}

    return Case("fft_conv", make, final_state=False, name=f"l={l} lk={lk} channels={channels} skip={skip}")


CASES = [_case(2, 4, l, lk, channels) for l, lk in ((64, 64), (37, 37), (101, 13), (50, 80), (1, 1))
         for channels in (None, 3)] + [_case(2, 3, 40, 40, skip=False)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_tier_matches_the_oracle(case, dtype):
    tol = 1e-10 if dtype == torch.float64 else None                # tighter than TOL: no recurrence here
    assert set(check_tiers(case, dtype, tol=tol)) >= {"reference", "fft"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_tier_matches_the_oracle_half_precision(dtype):
    assert set(check_tiers(_case(2, 3, 48, 48), dtype)) >= {"reference", "fft"}


def test_auto_runs_the_fft_on_any_device():
    u = torch.randn(1, 2, 8)
    assert resolve("fft_conv", "auto", u).name == "fft"
    assert resolve("fft_conv", "auto", u.to("meta")).name == "fft"


def test_reference_is_the_textbook_convolution():
    u, k, D = _inputs(1, 2, 23, 9, torch.float64)
    y = reference.fft_conv(u, k[None], D=D[None])[:, 0]
    for ch in range(2):
        want = np.convolve(u[0, ch].numpy(), k[ch].numpy())[:23] + D[ch].item() * u[0, ch].numpy()
        np.testing.assert_allclose(y[0, ch].numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [None, 3])
def test_output_shape(channels):
    u, k, D = _inputs(2, 4, 37, 13, torch.float32, channels)
    y = fft_conv(u, k, D=D)
    assert y.dtype == torch.float32 and y.shape == ((2, 4, 37) if channels is None else (2, channels, 4, 37))


def test_fft_is_causal():
    u, k, D = _inputs(1, 2, 33, 33, torch.float64)
    u2 = u.clone()
    u2[..., 20:] += torch.randn_like(u2[..., 20:])
    y, y2 = fft_conv(u, k, D=D), fft_conv(u2, k, D=D)
    assert (y[..., :20] - y2[..., :20]).abs().max() < 1e-12
    assert (y[..., 20:] - y2[..., 20:]).abs().max() > 1e-3


def test_gradcheck_fft_path():
    u, k, D = (t.requires_grad_(True) for t in _inputs(1, 2, 7, 5, torch.float64))
    assert torch.autograd.gradcheck(lambda u, k, D: fft_conv(u, k, D=D, backend="fft"), (u, k, D))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_upcast(dtype):
    u, k, D = _inputs(2, 3, 48, 48, torch.float32)
    y = fft_conv(u.to(dtype), k.to(dtype), D=D.to(dtype))
    assert y.dtype == dtype
    y_ref = fft_conv(u.to(dtype).float(), k.to(dtype).float(), D=D.to(dtype).float(), backend="reference")
    torch.testing.assert_close(y.float(), y_ref, rtol=TOL[dtype][0], atol=TOL[dtype][1])


def test_fft_size_covers_linear_convolution():
    for l in (1, 2, 3, 7, 8, 9, 1000, 4096):
        n = fft.fft_size(l)
        assert n >= 2 * l and n & (n - 1) == 0


def test_long_input_length_4096():
    u, k, D = _inputs(1, 2, 4096, 4096, torch.float32)
    want = fft_conv(u.double(), k.double(), D=D.double(), backend="reference")
    assert_rel(fft_conv(u, k, D=D), want, 1e-5, "l=4096")


@pytest.mark.parametrize(
    "args,match",
    [
        (((2, 3), (3, 4), None), "u must have 3 dimensions"),
        (((2, 3, 8), (4, 8), None), r"k must have shape \(3, l_k\)"),
        (((2, 3, 8), (3,), None), "k must have 2 or 3 dimensions"),
        (((2, 3, 8), (3, 0), None), "l_k >= 1"),
        (((2, 3, 8), (3, 8), (4,)), r"D must have shape \(3\)"),
        (((2, 3, 8), (2, 3, 8), (3,)), r"D must have shape \(2, 3\)"),
        (((2, 3, 0), (3, 4), None), "u must have length >= 1"),
    ],
)
def test_errors_name_the_argument(args, match):
    u, k, D = (None if s is None else torch.randn(s) for s in args)
    with pytest.raises(ValueError, match=match):
        fft_conv(u, k, D=D)


def test_dtype_and_backend_errors():
    with pytest.raises(TypeError, match="u must have dtype"):
        fft_conv(torch.zeros(1, 2, 4, dtype=torch.int64), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        fft_conv(torch.zeros(1, 2, 4), torch.zeros(2, 4), backend="fast")
    with pytest.raises(TypeError, match="positional"):
        fft_conv(torch.zeros(1, 2, 4), torch.zeros(2, 4), None)     # D is keyword-only


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("channels", [None, 3])
def test_fft_path_in_channel_blocks_matches_one_block(monkeypatch, channels, keep):
    """With a block budget of one channel's spectra, outputs and gradients equal the one-block path,
    the spectra kept for the backward or recomputed there."""
    u, k, D = _inputs(2, 5, 33, 20, torch.float64, channels)

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, k, D)]
        y = fft_conv(leaves[0], leaves[1], D=leaves[2], backend="fft")
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return [y.detach()] + [t.grad for t in leaves]

    whole = run()
    monkeypatch.setattr(fft, "BLOCK_BYTES", 1)
    monkeypatch.setattr(fft, "SAVE_BYTES", 1 << 30 if keep else 0)
    assert len(fft._blocks(2, channels or 1, 5, fft.fft_size(33), torch.float64)) == 5
    for got, want, name in zip(run(), whole, ("y", "du", "dk", "dD")):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
