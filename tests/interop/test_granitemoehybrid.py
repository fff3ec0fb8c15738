"""Granite 4.0-H: transformers' granitemoehybrid checkpoints in and out (Mamba-2 + attention, MoE with
a shared expert or a dense shared MLP, embedding / residual / attention / logits multipliers)."""

import pytest

from ssmkit.layers.mlp import GatedMLP, MoE
from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(experts: int, rope: bool, tie: bool):
    cfg = tf.GraniteMoeHybridConfig(
        hidden_size=32,
        intermediate_size=16,
        shared_intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        layer_types=["mamba", "attention", "mamba"],
        mamba_n_heads=4,
        mamba_d_state=8,
        mamba_n_groups=2,
        mamba_chunk_size=8,
        num_local_experts=experts,
        num_experts_per_tok=2,
        position_embedding_type="rope" if rope else None,
        tie_word_embeddings=tie,
        embedding_multiplier=3.0,
        residual_multiplier=0.6,
        attention_multiplier=0.2,
        logits_scaling=2.0,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.GraniteMoeHybridForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize(
    "experts, rope, tie", [(4, False, True), (0, True, False)], ids=["moe-nope", "dense-rope"]
)
def test_granitemoehybrid_matches_transformers(tmp_path, experts, rope, tie):
    ours = check_family(tiny(experts, rope, tie), tmp_path, VOCAB, model_type="granitemoehybrid")
    cfg = ours.config
    assert cfg.layer_types == ["mamba2", "attention", "mamba2"]
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.logits_multiplier) == (3.0, 0.6, 0.5)
    assert isinstance(ours.backbone.layers[0].mlp, MoE if experts else GatedMLP)
    attn = ours.backbone.layers[1].mixer
    assert attn.scale == 0.2 and attn.rotary_dim == (attn.head_dim if rope else 0)
