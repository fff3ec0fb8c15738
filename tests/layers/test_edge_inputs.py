"""Every registered layer on the inputs that break naive code: no batch, no length, another dtype,
a state of another layer, and activations far beyond float32's square range (RMSNorm)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers import RMSNorm, registry
from ssmkit.layers.mlp import MLP, GatedMLP, MoE
from tests.models.tiny import LAYER_KW, PURE, tiny_lm


def build(name: str):
    kw = {"n_head": 4} if name == "attention" else dict(LAYER_KW.get(name, {}))
    return registry.get(name).cls(32, **kw)


@pytest.mark.parametrize("name", PURE)
@pytest.mark.parametrize("shape", [(0, 5, 32), (2, 0, 32)], ids=["batch0", "length0"])
def test_empty_input_gives_empty_output_and_a_state(name, shape):
    layer = build(name)
    x = torch.randn(*shape)
    assert layer(x).shape == shape
    y, st = layer(x, return_state=True)
    assert y.shape == shape and all(v.shape[0] == shape[0] for v in st.values())
    if shape[0]:  # a length-0 chunk leaves a carried state as it was
        st0 = layer.init_state(2)
        _, st1 = layer(torch.randn(2, 3, 32), state=st0, return_state=True)
        _, st2 = layer(x, state=st1, return_state=True)
        assert all(torch.equal(st1[k], st2[k]) for k in st1)
    y_t, st = layer.step(torch.randn(0, 32), layer.init_state(0))
    assert y_t.shape == (0, 32)


@pytest.mark.parametrize("pattern", ["mamba2*3,attention", "s4d,hyena", "s5,h3,mamba"])
def test_generate_and_forward_with_batch_0(pattern):
    model = tiny_lm(pattern)
    ids = torch.zeros(0, 4, dtype=torch.long)
    assert model(ids).logits.shape == (0, 4, 37)
    assert model.generate(ids, max_new_tokens=5).shape == (0, 9)
    assert list(model.generate(ids, max_new_tokens=5, stream=True)) == []


@pytest.mark.parametrize("name", PURE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_input_of_another_dtype_computes_or_names_the_layer_dtype(name, dtype):
    layer = build(name)
    x = torch.randn(2, 5, 32, dtype=dtype)
    if layer.any_input_dtype:  # S4, S4D, S5 compute in the input's precision
        assert layer(x).dtype == dtype
        return
    with pytest.raises(
        TypeError, match=rf"{type(layer).__name__}: x has dtype {str(dtype)[6:]} .* are float32"
    ):
        layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does the casts
        assert torch.isfinite(layer(x.float()).float()).all()


@pytest.mark.parametrize("cls", [MLP, GatedMLP, lambda d, h: MoE(d, h, n_experts=4, top_k=2)])
def test_channel_mixers_name_the_dtype(cls):
    with pytest.raises(TypeError, match="has dtype float64 but the layer's parameters are float32"):
        cls(8, 16)(torch.randn(3, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    "make, foreign",
    [
        (lambda: build("s4"), lambda: build("s4d").init_state(2)),  # same shape, other layer
        (lambda: build("mamba"), lambda: build("mamba2").init_state(2)),
        (lambda: build("mamba2"), lambda: {"conv": torch.zeros(2, 96, 3)}),  # a key missing
        (lambda: build("s5"), lambda: {"x": torch.zeros(2, 9, dtype=torch.complex64)}),  # wrong size
    ],
    ids=["s4<-s4d", "mamba<-mamba2", "missing-key", "wrong-size"],
)
def test_foreign_or_malformed_state_is_one_clear_error(make, foreign):
    layer = make()
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: state"):
        layer(torch.randn(2, 3, 32), state=foreign())
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: state"):
        layer.step(torch.randn(2, 32), foreign())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rmsnorm_of_huge_and_tiny_inputs(dtype):
    norm = RMSNorm(4)
    big = 1e20 if dtype == torch.float32 else 1e200
    assert torch.equal(norm(torch.full((1, 4), big, dtype=dtype)), torch.ones(1, 4, dtype=dtype))
    assert torch.allclose(
        norm(torch.tensor([[-big, big, 0.0, 0.0]], dtype=dtype)),
        torch.tensor([[-(2**0.5), 2**0.5, 0, 0]], dtype=dtype),
    )
    tiny = torch.full((1, 4), 1e-30, dtype=dtype)
    torch.testing.assert_close(norm(tiny), tiny / 1e-5**0.5)  # x / sqrt(eps), as without scaling
    x = torch.randn(16, 4, dtype=dtype)
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    # the scaled form (what other devices always run) equals the plain one, values and gradients
    x = torch.cat([torch.randn(15, 4, dtype=dtype), tiny]).requires_grad_()
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    scaled = norm._scaled(x.view(16, 1, 4)).view(16, 4)
    torch.testing.assert_close(scaled, plain)
    g = torch.randn_like(plain)
    torch.testing.assert_close(torch.autograd.grad(scaled, x, g)[0], torch.autograd.grad(plain, x, g)[0])


def test_mamba2_at_input_scale_1e5_is_finite_and_not_zero():
    from ssmkit.layers import Mamba2

    layer = Mamba2(32, d_state=16, headdim=16, chunk_size=16)
    y = layer(torch.randn(2, 40, 32) * 1e5)
    assert torch.isfinite(y).all() and (y != 0).all()
