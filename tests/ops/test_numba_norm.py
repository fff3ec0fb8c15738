"""The numba RMSNorm of many rows (ssmkit.ops._numba.norm), RMSNorm's prefill path, against
RMSNorm.reference: plain, grouped, gated before and after the norm, a row-strided gate, huge inputs;
the reference wherever a gradient is wanted, under SSMKIT_BACKEND=reference, or for float64."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norm import RMSNorm
from ssmkit.ops._decode import NORM_ELEMENTS
from ssmkit.ops._numba import norm as kernels

SHAPE = (3, 50, 128)  # above NORM_ELEMENTS: the prefill kernel, not the decode one
assert SHAPE[0] * SHAPE[1] * SHAPE[2] > NORM_ELEMENTS


def _norm(group_size):
    norm = RMSNorm(SHAPE[-1], eps=1e-5, group_size=group_size)
    with torch.no_grad():
        norm.weight.normal_()
    return norm


def _spy(monkeypatch):
    calls = []
    orig = kernels.rms_norm_rows
    monkeypatch.setattr(kernels, "rms_norm_rows", lambda *a, **k: calls.append(1) or orig(*a, **k))
    return calls


@pytest.mark.parametrize("gate", ["none", "before", "after"])
@pytest.mark.parametrize("group_size", [128, 32])
def test_prefill_kernel_equals_the_reference(gate, group_size, monkeypatch):
    monkeypatch.setenv("SSMKIT_POISON", "1")  # an element the kernel forgets to write stays NaN
    calls = _spy(monkeypatch)
    norm = _norm(group_size)
    x = torch.randn(SHAPE) * 3
    wide = torch.randn(*SHAPE[:2], 2 * SHAPE[2] + 5)
    z = None if gate == "none" else wide[..., 3 : 3 + SHAPE[2]]  # a column slice: row-strided
    with torch.no_grad():
        got = norm(x, z, gate_after=gate == "after")
    assert calls == [1]
    ref = norm.reference(x, z, gate_after=gate == "after")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # a strided x (a slice of a wider tensor) reads the same
    xs = torch.cat([torch.randn(*SHAPE[:2], 7), x], dim=-1)[..., 7:]
    with torch.no_grad():
        torch.testing.assert_close(norm(xs, z, gate_after=gate == "after"), ref, rtol=1e-5, atol=1e-5)


def test_prefill_kernel_of_huge_inputs_keeps_the_direction():
    norm = _norm(128)
    x = torch.randn(SHAPE)
    x[0, :3] *= 1e25  # x^2 overflows float32 in these rows
    with torch.no_grad():
        got = norm(x)
    ref = norm.reference(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_reference_where_gradients_are_wanted_or_asked_for(monkeypatch):
    calls = _spy(monkeypatch)
    norm = _norm(32)
    x = torch.randn(SHAPE, requires_grad=True)
    z = torch.randn(SHAPE)
    y = norm(x, z)
    y.sum().backward()  # the reference ran: the gradient flows
    assert calls == [] and x.grad is not None
    with torch.no_grad():
        norm.double()(x.double(), z.double())  # float64: the reference
        assert calls == []
        norm.float()
        monkeypatch.setenv("SSMKIT_BACKEND", "reference")
        norm(x, z)
        assert calls == []
        monkeypatch.delenv("SSMKIT_BACKEND")
        norm(x, z)
        assert calls == [1]


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_mamba2_forward_with_the_prefill_norm_equals_the_reference(norm_before_gate, monkeypatch):
    calls = _spy(monkeypatch)
    layer = Mamba2(32, d_state=8, headdim=8, ngroups=2, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 300, 32)  # y: 2 x 300 x 64 elements, above NORM_ELEMENTS
    with torch.no_grad():
        got = layer(x)
    assert calls == [1]
    monkeypatch.setattr(layer.norm, "_prefill_kernel", lambda *a: False)
    with torch.no_grad():
        ref = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
