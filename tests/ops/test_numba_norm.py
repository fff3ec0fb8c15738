"""The numba RMSNorm of many rows (ssmkit.ops._numba.norm), RMSNorm's prefill and training paths, against
RMSNorm.reference: plain, grouped, gated before and after the norm, a row-strided gate, huge inputs,
outputs and the gradients of x, z and the weight; the reference under SSMKIT_BACKEND=reference or for
float64."""

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


def _spy(monkeypatch, name="rms_norm_rows"):
    calls = []
    orig = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a, **k: calls.append(1) or orig(*a, **k))
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


@pytest.mark.parametrize("gate", ["none", "before", "after"])
@pytest.mark.parametrize("group_size", [128, 32])
def test_training_kernel_equals_the_reference_with_gradients(gate, group_size, monkeypatch):
    monkeypatch.setenv("SSMKIT_POISON", "1")
    calls = _spy(monkeypatch, "rms_norm_rows_grad")
    norm = _norm(group_size)
    wide = torch.randn(*SHAPE[:2], 2 * SHAPE[2] + 5)
    x = (torch.randn(SHAPE) * 3).requires_grad_()
    z = None if gate == "none" else wide[..., 3 : 3 + SHAPE[2]].clone().requires_grad_()
    dy = torch.randn(SHAPE)
    got = norm(x, z, gate_after=gate == "after")
    assert calls == [1]
    ins = [x, norm.weight] + ([] if z is None else [z])
    g_got = torch.autograd.grad(got, ins, dy)
    ref = norm.reference(x, z, gate_after=gate == "after")
    g_ref = torch.autograd.grad(ref, ins, dy)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(["x", "weight", "z"], g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")
    # a row-strided x and a transposed (non-contiguous) output gradient read the same
    xs = torch.cat([torch.randn(*SHAPE[:2], 7), x.detach()], dim=-1)[..., 7:].requires_grad_()
    dyt = dy.transpose(0, 1).contiguous().transpose(0, 1)
    got_s = norm(xs, z, gate_after=gate == "after")
    torch.testing.assert_close(got_s, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got_s, xs, dyt)[0], g_ref[0], rtol=1e-4, atol=1e-4)


def test_training_kernel_of_huge_inputs_keeps_the_direction():
    norm = _norm(32)
    x = torch.randn(SHAPE)
    x[0, :3] *= 1e25  # x^2 overflows float32 in these rows
    x.requires_grad_()
    dy = torch.randn(SHAPE)
    got = norm(x)
    (gx,) = torch.autograd.grad(got, x, dy)
    ref = norm.reference(x)
    (rx,) = torch.autograd.grad(ref, x, dy)
    assert torch.isfinite(got).all() and torch.isfinite(gx).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)


def test_reference_where_asked_for_or_float64(monkeypatch):
    calls, grad_calls = _spy(monkeypatch), _spy(monkeypatch, "rms_norm_rows_grad")
    norm = _norm(32)
    x = torch.randn(SHAPE, requires_grad=True)
    z = torch.randn(SHAPE)
    norm.double()(x.double(), z.double()).sum().backward()  # float64: the reference
    assert calls == grad_calls == [] and x.grad is not None
    norm.float()
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    norm(x, z)
    with torch.no_grad():
        norm(x, z)
    assert calls == grad_calls == []
    monkeypatch.delenv("SSMKIT_BACKEND")
    norm(x, z)
    with torch.no_grad():
        norm(x, z)
    assert calls == grad_calls == [1]


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
    monkeypatch.setattr(layer.norm, "_rows_kernel", lambda *a: None)
    with torch.no_grad():
        ref = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [64, 1])
def test_kernels_read_a_transposed_channels_first_input(d, monkeypatch):
    """x and dy as (1, l, d) views of contiguous (1, d, l) tensors (S4D's channels-first activations at
    batch 1): their rows are columns in memory; both kernels once read such a view past its end."""
    monkeypatch.setenv("SSMKIT_POISON", "1")
    norm = RMSNorm(d)
    x = (torch.randn(1, d, 300) * 3).transpose(1, 2).requires_grad_()   # (1, 300, d), channels-first
    dy = torch.randn(1, d, 300).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(kernels.rms_norm_rows(x, None, norm.weight, norm.eps, d, False),
                                   norm.reference(x), rtol=1e-5, atol=1e-5)
    got = kernels.rms_norm_rows_grad(x, None, norm.weight, norm.eps, d, False)
    ref = norm.reference(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    ins = [x, norm.weight]
    for a, b in zip(torch.autograd.grad(got, ins, dy), torch.autograd.grad(ref, ins, dy)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
