"""LFM2: transformers' lfm2 checkpoints in and out (gated short convolutions, attention with per-head
q/k norms, SwiGLU MLPs of LFM2's derived width)."""

import pytest

from ssmkit.layers.short_conv import ShortConv
from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(tie: bool, bias: bool):
    cfg = tf.Lfm2Config(
        hidden_size=32,
        intermediate_size=72,
        block_multiple_of=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        layer_types=["conv", "full_attention", "conv"],
        conv_bias=bias,
        norm_eps=1e-4,
        tie_word_embeddings=tie,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.Lfm2ForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize("tie, bias", [(True, False), (False, True)], ids=["tied", "bias"])
def test_lfm2_matches_transformers(tmp_path, tie, bias):
    ours = check_family(tiny(tie, bias), tmp_path, VOCAB, model_type="lfm2")
    assert ours.config.layer_types == ["short_conv", "attention", "short_conv"]
    assert isinstance(ours.backbone.layers[0].mixer, ShortConv)
    assert ours.backbone.layers[0].mlp.fc2.weight.shape[1] == 48  # 2/3 of 72, rounded up to 16
    assert ours.backbone.layers[1].mixer.qk_norm_eps == 1e-4
