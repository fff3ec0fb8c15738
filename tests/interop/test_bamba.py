"""Bamba: transformers' bamba checkpoints in and out (Mamba-2 + attention with half-rotary heads + SwiGLU)."""

import pytest

from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(tie: bool = False, attention_bias: bool = False):
    cfg = tf.BambaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_state=8,
        mamba_n_groups=2,
        mamba_chunk_size=8,
        tie_word_embeddings=tie,
        attention_bias=attention_bias,
        mlp_bias=attention_bias,
        rms_norm_eps=1e-4,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.BambaForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize("tie, bias", [(False, False), (True, True)])
def test_bamba_matches_transformers(tmp_path, tie, bias):
    ours = check_family(tiny(tie, bias), tmp_path, VOCAB, model_type="bamba")
    assert ours.config.layer_types == ["mamba2", "attention", "mamba2"]
    attn = ours.backbone.layers[1].mixer
    assert attn.rotary_dim == attn.head_dim // 2 == 4
