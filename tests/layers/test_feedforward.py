"""The "mlp" and "moe" mixers: a block whose only sublayer is a channel MLP (Nemotron-H's "-" / "E")."""

from __future__ import annotations

import pytest
import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.layers.feedforward import FeedForward, FeedForwardMoE
from tests.helpers import assert_rel, check_causality, check_chunking, check_state_plain, check_stepping


@pytest.mark.parametrize(
    "layer",
    [
        lambda: FeedForward(16, 24, activation="relu2"),
        lambda: FeedForward(16, gated=True),
        lambda: FeedForwardMoE(16, 8, n_experts=4, top_k=2, d_shared=8, scoring="sigmoid"),
    ],
    ids=["mlp-relu2", "gated", "moe"],
)
def test_laws_and_empty_state(layer):
    """Laws 1-3 and 5; law 4 (gradient to the state) has nothing to reach: the state holds no number."""
    layer = layer().eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        check_chunking(layer, x)
        check_stepping(layer, x)
        check_state_plain(layer, x)
    check_causality(layer, x)
    st = layer.init_state(3)
    assert st["batch"].shape == (3, 0) and st["batch"].numel() == 0
    assert_rel(layer(x), layer.ffn(x), 1e-7, "the mixer is its MLP")


def test_block_of_an_mlp_mixer_is_x_plus_mlp_of_norm():
    cfg = SSMConfig(
        d_model=16,
        n_layer=2,
        vocab_size=11,
        layers="mlp,mamba2",
        layer_kwargs={"mlp": {"d_intermediate": 24}, "mamba2": {"headdim": 8, "d_state": 8}},
    )
    model = SSMForCausalLM(cfg).eval()
    blk = model.backbone.layers[0]
    assert blk.mlp is None and blk.mixer.ffn.fc1.weight.shape == (24, 16)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert_rel(blk(x), x + blk.mixer.ffn(blk.norm(x)), 1e-6, "block")
        st = model.init_state(2)
        ids = torch.randint(0, 11, (2, 6))
        assert_rel(model(ids, state=st).logits, model(ids).logits, 1e-5, "with a state")
    assert st.layers[0] == {"batch": st.layers[0]["batch"]} and st.layers[0]["batch"].shape == (2, 0)
