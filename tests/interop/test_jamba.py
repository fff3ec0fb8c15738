"""Jamba: transformers' jamba checkpoints in and out (Mamba-1 with weighted dt/B/C norms, attention
without positions, SwiGLU MLPs and unnormalized top-k MoE layers by period and offset)."""

import pytest
import torch

from ssmkit.interop import from_hf
from ssmkit.layers import Mamba
from ssmkit.layers.mlp import GatedMLP, MoE
from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(tie: bool = False):
    cfg = tf.JambaConfig(
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        num_experts=4,
        num_experts_per_tok=2,
        attn_layer_period=3,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=0,
        mamba_d_state=8,
        mamba_dt_rank=4,
        rms_norm_eps=1e-4,
        tie_word_embeddings=tie,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.JambaForCausalLM(cfg)
    randomize_(model)
    return model.eval()


def test_jamba_matches_transformers(tmp_path):
    ours = check_family(tiny(), tmp_path, VOCAB, model_type="jamba")
    cfg = ours.config
    assert cfg.layer_types == ["mamba", "attention", "mamba", "mamba"]
    assert [type(b.mlp) for b in ours.backbone.layers] == [MoE, GatedMLP, MoE, GatedMLP]
    assert ours.backbone.layers[0].mlp.norm_topk is False
    assert ours.backbone.layers[1].mixer.rotary_dim == 0
    assert ours.backbone.layers[0].mixer.bcdt_norm_weights


def test_jamba_stacked_experts_and_tied_head(tmp_path):
    """transformers' in-memory layout (stacked experts.gate_up_proj / down_proj) reads as per-expert."""
    from safetensors.torch import save_file

    theirs = tiny(tie=True)
    theirs.save_pretrained(tmp_path / "hf")
    tensors = {k: v.contiguous() for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    assert any(k.endswith("experts.gate_up_proj") for k in tensors)
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        got = from_hf(tmp_path / "hf")(ids).logits
        torch.testing.assert_close(got, theirs(ids).logits, rtol=1e-4, atol=1e-4)


def test_mamba_norm_weights_need_an_epsilon():
    with pytest.raises(ValueError, match="bcdt_norm_weights=True needs bcdt_rms_eps"):
        Mamba(16, bcdt_norm_weights=True)
