"""Falcon-H1: transformers' falcon_h1 checkpoints in and out (Mamba-2 and attention in parallel in
every block, muP multipliers on the embedding, logits, branches, Mamba-2 in_proj parts, keys, MLP)."""

import pytest

from ssmkit.layers.parallel import Parallel
from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(rms_norm: bool, bias: bool, tie: bool):
    cfg = tf.FalconH1Config(
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        mamba_d_ssm=48,
        mamba_n_heads=4,
        mamba_d_head="auto",
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_chunk_size=8,
        mamba_rms_norm=rms_norm,
        mamba_norm_before_gate=True,
        mamba_proj_bias=bias,
        projectors_bias=bias,
        attention_bias=bias,
        mlp_bias=bias,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-4,
        embedding_multiplier=2.0,
        lm_head_multiplier=0.5,
        mlp_multipliers=[0.9, 1.3],
        key_multiplier=0.7,
        attention_in_multiplier=1.1,
        attention_out_multiplier=0.9,
        ssm_multipliers=[1.2, 0.8, 0.9, 1.1, 0.7],
        ssm_in_multiplier=1.2,
        ssm_out_multiplier=0.8,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.FalconH1ForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize(
    "rms_norm, bias, tie", [(True, True, False), (False, False, True)], ids=["norm-bias", "plain-tied"]
)
def test_falcon_h1_matches_transformers(tmp_path, rms_norm, bias, tie):
    ours = check_family(tiny(rms_norm, bias, tie), tmp_path, VOCAB, model_type="falcon_h1")
    block = ours.backbone.layers[0].mixer
    assert isinstance(block, Parallel) and list(block.branches) == ["mamba2", "attention"]
    m = block.branches["mamba2"]
    assert (m.d_inner, m.rmsnorm, m.norm_before_gate) == (48, rms_norm, rms_norm)
    assert m.in_proj_multipliers == (1.2, 0.8, 0.9, 1.1, 0.7)
    assert block.in_multipliers == {"mamba2": 1.2, "attention": 1.1}
    assert block.out_multipliers == {"mamba2": 0.8, "attention": 0.9}
