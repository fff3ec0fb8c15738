"""A whole block's decoding step as one numba kernel (ssmkit.ops._numba.block_decode), and a whole stack
of blocks as one call: against the blocks' unfused step on the reference ops, outputs and every state,
on fresh random weights and states; taken where it applies (float32 CPU inference, a few rows) and
nowhere else, with the same results."""

from __future__ import annotations

import pytest
import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.models.int8 import quantize_int8
from ssmkit.ops import _decode

MODELS = {
    "mamba": ("mamba", {"d_state": 8}),
    "mamba_biases": ("mamba", {"d_state": 4, "d_conv": 3, "bias": True}),
    "mamba_no_conv_bias": ("mamba", {"d_state": 4, "conv_bias": False}),
    "falcon_mamba": ("mamba", {"d_state": 8, "bcdt_rms_eps": 1e-6}),
    "jamba_mamba": ("mamba", {"d_state": 8, "bcdt_rms_eps": 1e-6, "bcdt_norm_weights": True}),
    "mamba2": ("mamba2", {"d_state": 16, "headdim": 8}),
    "mamba2_groups_hdimD": ("mamba2", {"d_state": 8, "headdim": 8, "ngroups": 2, "D_has_hdim": True}),
    "mamba2_gate_no_norm": ("mamba2", {"d_state": 8, "headdim": 16, "rmsnorm": False, "d_conv": 2}),
    "mamba2_dt_limit_bias": ("mamba2", {"d_state": 8, "headdim": 8, "dt_limit": (0.01, 0.05), "bias": True}),
    "mamba2_norm_before_gate": ("mamba2", {"d_state": 8, "headdim": 8, "ngroups": 2,
                                           "norm_before_gate": True}),
}


def _model(name, n_layer=3, **cfg):
    kind, kw = MODELS[name]
    torch.manual_seed(0)
    config = SSMConfig(d_model=32, n_layer=n_layer, vocab_size=41, layers=kind, layer_kwargs={kind: kw},
                       **cfg)
    model = SSMForCausalLM(config).eval()
    with torch.no_grad():  # weights away from their init (D = 1, zero biases) so every term counts
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _warm_state(model, b):
    state = model.init_state(b)
    with torch.no_grad():
        model(torch.randint(0, 41, (b, 5)), state=state)
    return state


def _reference(model):
    for blk in model.backbone.layers:
        blk.mixer.backend = "reference"
    return model


def _auto(model):
    for blk in model.backbone.layers:
        blk.mixer.backend = "auto"
    return model


def _assert_states(got, want):
    # the kernels' dot products sum in another order than PyTorch's GEMV: float32 rounding of O(1) values
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            torch.testing.assert_close(g[k], w[k], rtol=1e-5, atol=1e-5, msg=k)


def _assert_steps_match_reference(model, b: int, steps: int) -> None:
    """`steps` tokens through model.step_ (the kernels where they apply) == the reference ops' step,
    logits and every state."""
    ids = torch.randint(0, 41, (b,))
    state = _warm_state(model, b)
    owned = state.clone()
    with torch.no_grad():
        for _ in range(steps):
            want = _reference(model).step(ids, state)
            got = _auto(model).step_(ids, owned)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            _assert_states(owned.layers, state.layers)


@pytest.mark.parametrize("mlp", [False, True])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_block_kernel_equals_the_unfused_block(name, b, mlp):
    model = _model(name, residual_multiplier=0.7, d_intermediate=24 if mlp else 0)
    state = _warm_state(model, b)
    for blk, s in zip(model.backbone.layers, state.layers):
        residual = torch.randn(b, 32)
        with torch.no_grad():
            want, want_state = _reference(model) and blk.step(residual, s)
            _auto(model)
            owned = {k: v.clone() for k, v in s.items()}
            got = blk.step_(residual, owned)
        assert _decode._blocks[blk.mixer][1] is not None  # the kernel ran
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        _assert_states([owned], [want_state])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stack_kernel_equals_the_unfused_model(name):
    model = _model(name)
    _assert_steps_match_reference(model, b=2, steps=3)
    assert _decode._stacks[model.backbone][1] is not None


def test_parallel_blocks_threads_agree_with_one_thread():
    model = _model("mamba2_groups_hdimD", n_layer=2)
    ids = torch.randint(0, 41, (3,))
    state = _warm_state(model, 3)
    one, two = state.clone(), state.clone()
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            a = model.step_(ids, one)
            torch.set_num_threads(2)
            b = model.step_(ids, two)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    _assert_states(one.layers, two.layers)


def test_not_taken_where_it_does_not_apply_and_results_agree():
    model = _model("mamba", n_layer=2)
    _assert_steps_match_reference(model, b=_decode.BLOCK_ROWS + 1, steps=1)  # a matrix product: PyTorch's
    assert model.backbone not in _decode._stacks
    # a hybrid with an MLP sublayer: no stack kernel, the blocks one by one
    hybrid = _model("mamba2", n_layer=2, d_intermediate=16)
    with torch.no_grad():
        hybrid.step_(torch.randint(0, 41, (2,)), _warm_state(hybrid, 2))
    assert hybrid.backbone not in _decode._stacks


def test_falcon_h1_multipliers_take_the_per_part_path():
    model = _model("mamba2", n_layer=1)
    model.backbone.layers[0].mixer.in_proj_multipliers = (0.5, 1.5, 0.7, 1.2, 0.9)
    _assert_steps_match_reference(model, b=1, steps=1)


def test_a_state_of_the_wrong_shape_is_refused_clearly():
    model = _model("mamba", n_layer=2)
    state = _warm_state(model, 1)
    state.layers[1]["ssm"] = torch.zeros(1, 64, 3)
    with torch.no_grad(), pytest.raises(ValueError, match="ssm"):
        model.backbone.step_(torch.tensor([1]), state.layers)


@pytest.mark.parametrize("mlp", [False, True])
@pytest.mark.parametrize("name", ["mamba", "jamba_mamba", "mamba2", "mamba2_groups_hdimD"])
def test_int8_projections_take_the_kernels_too(name, mlp):
    model = quantize_int8(_model(name, d_intermediate=24 if mlp else 0))
    _assert_steps_match_reference(model, b=2, steps=3)
    bb = model.backbone
    table, key = (_decode._blocks, bb.layers[0].mixer) if mlp else (_decode._stacks, bb)
    assert table.get(key) is not None and table[key][1] is not None
