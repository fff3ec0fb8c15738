"""SSMConfig's options for the transformers families: the MLP pattern (mlp_layers, mlp_kwargs) and the
embedding / residual / logits multipliers; and hashes of configs that use none of them unchanged."""

from __future__ import annotations

import pytest
import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.layers.mlp import MLP, GatedMLP, MoE
from tests.helpers import assert_rel


def test_hashes_of_configs_without_the_new_fields_are_unchanged():
    """Values computed before mlp_layers, mlp_kwargs and the multipliers existed: States saved then
    still fit, because a field added later is left out of to_dict while at its default."""
    assert SSMConfig().config_hash() == "a667a6ef90929bee"
    cfg = SSMConfig(
        d_model=64,
        n_layer=3,
        layers="mamba2*2,attention",
        d_intermediate=128,
        mlp="moe",
        layer_kwargs={"mamba2": {"headdim": 16}},
    )
    assert cfg.config_hash() == "8485eced89eb585a"
    assert "mlp_layers" not in cfg.to_dict() and "logits_multiplier" not in cfg.to_dict()
    scaled = SSMConfig(residual_multiplier=0.5)
    assert (
        scaled.to_dict()["residual_multiplier"] == 0.5 and scaled.config_hash() != SSMConfig().config_hash()
    )
    assert SSMConfig.from_dict(scaled.to_dict()) == scaled


def test_mlp_pattern_gives_each_block_its_kind_and_width():
    cfg = SSMConfig(
        d_model=16,
        n_layer=5,
        vocab_size=11,
        layers="attention",
        n_head=2,
        d_intermediate=24,
        mlp_layers="gated,moe,none",
        mlp_kwargs={"moe": {"d_intermediate": 8, "n_experts": 3, "d_shared": 4}},
    )
    assert cfg.mlp_types == ["gated", "moe", None, "gated", "moe"]
    model = SSMForCausalLM(cfg)
    kinds = [type(b.mlp) for b in model.backbone.layers]
    assert kinds == [GatedMLP, MoE, type(None), GatedMLP, MoE]
    assert model.backbone.layers[0].mlp.fc2.weight.shape == (16, 24)
    moe = model.backbone.layers[1].mlp
    assert moe.n_experts == 3 and moe.experts[0].fc2.weight.shape == (16, 8) and moe.shared is not None
    assert model.backbone.layers[2].norm2 is None
    with torch.no_grad():
        model(torch.randint(0, 11, (2, 5)))
    assert model.backbone.aux_loss() is not None  # both MoE sublayers report their loss
    plain = SSMConfig(
        d_model=16, n_layer=2, vocab_size=11, layers="attention", n_head=2, d_intermediate=8, mlp="mlp"
    )
    assert plain.mlp_types == ["mlp", "mlp"] and isinstance(SSMForCausalLM(plain).backbone.layers[1].mlp, MLP)


def test_mlp_pattern_errors_name_the_field():
    with pytest.raises(ValueError, match=r"unknown MLP kind 'swiglu'.*mlp_layers="):
        SSMConfig(mlp_layers="gated,swiglu", d_intermediate=8)
    with pytest.raises(ValueError, match=r"uses 'moe', whose width is 0"):
        SSMConfig(mlp_layers="moe")
    with pytest.raises(ValueError, match="mlp_kwargs: unknown MLP kind 'dense'"):
        SSMConfig(mlp_kwargs={"dense": {}})
    with pytest.raises(ValueError, match="residual_multiplier must be a finite number > 0"):
        SSMConfig(residual_multiplier=0)


def test_multipliers_scale_what_they_say():
    """embedding m == embedding weights times m; logits m == logits times m; residual m == every
    sublayer's output times m (checked on a block by hand)."""
    kw = dict(
        d_model=16,
        n_layer=2,
        vocab_size=13,
        layers="mamba2,attention",
        n_head=2,
        d_intermediate=16,
        tie_embeddings=False,
        layer_kwargs={"mamba2": {"headdim": 8, "d_state": 8, "chunk_size": 4}},
    )
    base = SSMForCausalLM(SSMConfig(**kw)).eval()
    ids = torch.randint(0, 13, (2, 7))
    scaled = SSMForCausalLM(SSMConfig(**kw, embedding_multiplier=3.0, logits_multiplier=0.25)).eval()
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        base.backbone.embedding.weight.mul_(3.0)
        assert_rel(scaled(ids).logits, base(ids).logits * 0.25, 1e-5, "embedding and logits multipliers")
    res = SSMForCausalLM(SSMConfig(**kw, residual_multiplier=0.5)).eval()
    blk = res.backbone.layers[1]
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        h = x + 0.5 * blk.mixer(blk.norm(x))
        assert_rel(blk(x), h + 0.5 * blk.mlp(blk.norm2(h)), 1e-5, "residual multiplier")
        st = res.init_state(2)
        steps = torch.stack([res.step(ids[:, t], st) for t in range(7)], 1)
        assert_rel(steps, res(ids).logits, 1e-4, "step with multipliers")
