"""The numba decode kernels (ssmkit.ops._numba.decode) behind Mamba's and Mamba-2's CPU `step` /
`step_`, against the layers' unfused step on the reference ops: outputs and both states, on fresh
random inputs and states, one thread and the parallel driver; the states written in place; the
unfused path wherever a gradient is wanted or a tensor is not float32."""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.ops._numba import decode

LAYERS = {
    "mamba": lambda: Mamba(24, d_state=8),
    "mamba_no_conv_bias": lambda: Mamba(24, d_state=4, d_conv=3, conv_bias=False),
    "mamba_bcdt_norms": lambda: Mamba(24, d_state=8, bcdt_rms_eps=1e-6, bcdt_norm_weights=True),
    "mamba2": lambda: Mamba2(32, d_state=16, headdim=8),
    "mamba2_groups_hdimD": lambda: Mamba2(32, d_state=8, headdim=8, ngroups=2, D_has_hdim=True),
    "mamba2_gate_no_norm": lambda: Mamba2(32, d_state=8, headdim=16, rmsnorm=False, d_conv=2),
    "mamba2_dt_limit": lambda: Mamba2(32, d_state=8, headdim=8, dt_limit=(0.01, 0.05), conv_bias=False),
    "mamba2_norm_before_gate": lambda: Mamba2(32, d_state=8, headdim=8, ngroups=2, norm_before_gate=True),
    "mamba2_multipliers": lambda: Mamba2(
        32, d_state=8, headdim=8, in_proj_multipliers=(0.5, 1.5, 0.7, 1.2, 0.9), out_bias=True
    ),
}


def _layer(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    with torch.no_grad():  # weights away from their init (D = 1, zero biases) so every term counts
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def _unfused(layer, x, state):
    layer.backend = "reference"
    try:
        return layer.step(x, state)
    finally:
        layer.backend = "auto"


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fused_step_equals_the_reference(name, parallel, monkeypatch):
    monkeypatch.setattr(decode, "PARALLEL_ABOVE", 0 if parallel else 1 << 30)
    layer = _layer(name)
    state = {k: torch.randn_like(v) for k, v in layer.init_state(3).items()}
    owned = {k: v.clone() for k, v in state.items()}
    ptrs = {k: v.data_ptr() for k, v in owned.items()}
    calls = []
    for fn in ("mamba2_step_", "selective_state_update_"):
        orig = getattr(decode, fn)
        monkeypatch.setattr(decode, fn, lambda *a, _f=orig, **k: calls.append(1) or _f(*a, **k))
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(3, layer.d_model)
            y_ref, state = _unfused(layer, x, state)
            before = {k: v.clone() for k, v in owned.items()}
            y_new, new = layer.step(x, owned)  # fused, on copies
            for k in owned:
                torch.testing.assert_close(owned[k], before[k], rtol=0, atol=0, msg=f"step wrote {k}")
            y = layer.step_(x, owned)  # fused, in place
            for got in (y, y_new):
                torch.testing.assert_close(got, y_ref, rtol=1e-5, atol=2e-6)
            for k in state:
                torch.testing.assert_close(new[k], state[k], rtol=1e-5, atol=2e-6, msg=k)
                torch.testing.assert_close(owned[k], state[k], rtol=1e-5, atol=2e-6, msg=k)
                assert owned[k].data_ptr() == ptrs[k], f"state[{k!r}] was replaced, not written in place"
    assert len(calls) == 8  # the kernels ran: step and step_, four tokens


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_unfused_where_a_gradient_is_wanted(name):
    layer = _layer(name)
    state = {k: torch.randn_like(v) for k, v in layer.init_state(2).items()}
    x = torch.randn(2, layer.d_model, requires_grad=True)
    y, new = layer.step(x, state)
    y.square().sum().backward()
    assert x.grad is not None and layer.A_log.grad is not None
    y_ref, _ = _unfused(layer, x.detach(), state)
    torch.testing.assert_close(y.detach(), y_ref)


@pytest.mark.filterwarnings("ignore:ssmkit.ops:RuntimeWarning")  # float64 takes the slow tiers
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_float64_layers_take_the_unfused_path(name, monkeypatch):
    layer = _layer(name).double()
    monkeypatch.setattr(decode, "mamba2_step_", None)  # would raise if called
    monkeypatch.setattr(decode, "selective_state_update_", None)
    state = {k: torch.randn_like(v) for k, v in layer.init_state(2).items()}
    with torch.no_grad():
        y = layer.step_(torch.randn(2, layer.d_model, dtype=torch.float64), state)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e-30])
def test_rms_norm_kernel_equals_the_reference(scale, monkeypatch):
    from ssmkit.layers import RMSNorm

    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 48) * scale
    calls = []
    orig = decode.rms_norm
    monkeypatch.setattr(decode, "rms_norm", lambda *a: calls.append(1) or orig(*a))
    ref = norm(x)  # the weight wants a gradient: the reference
    with torch.no_grad():
        got = norm(x)
    assert calls == [1]
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-6 if scale <= 1 else 1e-5)


@pytest.mark.filterwarnings("ignore:ssmkit.ops:RuntimeWarning")  # float64 takes the slow tiers
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_what_the_kernels_read_follows_the_parameters(name):
    """ssmkit.ops._decode keeps each layer's arrays (Mamba's A = -exp(A_log) among them) between
    steps: an in-place update, a replaced parameter and a cast must each be seen by the next step."""
    layer = _layer(name)
    state = {k: torch.randn_like(v) for k, v in layer.init_state(2).items()}
    x = torch.randn(2, layer.d_model)

    def check():
        with torch.no_grad():
            y, _ = layer.step(x, state)
            y_ref, _ = _unfused(copy.deepcopy(layer), x, state)  # a copy: this layer's key stays put
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
        return y

    y0 = check()
    with torch.no_grad():
        layer.A_log.add_(0.5)  # in place (as an optimizer step): the prepared A must follow
        (layer.norm.weight if name == "mamba2" else layer.dt_proj.bias).mul_(1.5)
    assert not torch.allclose(check(), y0)
    layer.D = torch.nn.Parameter(layer.D.detach() + 1.0)  # replaced
    check()
    layer.double()
    state = {k: v.double() for k, v in state.items()}
    x = x.double()
    check()
