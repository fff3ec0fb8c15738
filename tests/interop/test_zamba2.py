"""Zamba2: transformers' zamba2 checkpoints in and out (Mamba-2 layers; hybrid layers that first run a
shared attention + MLP block on cat(hidden, embeddings) with per-use LoRA adapters, round-robin over
num_mem_blocks shared blocks)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.interop import from_hf
from tests.helpers import assert_rel
from tests.interop.parity import check_family, hf_logits, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61
TYPES = ["linear_attention", "hybrid", "linear_attention", "hybrid", "hybrid"]


def tiny(mem_blocks: int, adapters: bool, rope: bool, bias: bool, act: str = "gelu"):
    cfg = tf.Zamba2Config(
        hidden_size=32,
        num_hidden_layers=len(TYPES),
        layers_block_type=TYPES,
        vocab_size=VOCAB,
        mamba_d_state=8,
        n_mamba_heads=4,
        mamba_ngroups=2,
        chunk_size=8,
        num_attention_heads=4,
        intermediate_size=40,
        hidden_act=act,
        num_mem_blocks=mem_blocks,
        use_shared_attention_adapter=adapters,
        adapter_rank=4,
        use_mem_rope=rope,
        add_bias_linear=bias,
        rms_norm_eps=1e-4,
        time_step_min=0.01,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.Zamba2ForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize(
    "mem_blocks, adapters, rope, bias, act",
    [(2, True, True, False, "gelu"), (1, False, False, True, "silu")],
    ids=["two-blocks-adapters-rope", "one-block-bias"],
)
def test_zamba2_matches_transformers(tmp_path, mem_blocks, adapters, rope, bias, act):
    ours = check_family(tiny(mem_blocks, adapters, rope, bias, act), tmp_path, VOCAB, model_type="zamba2")
    cfg = ours.config
    assert cfg.shared_uses == [1, 3, 4] and len(ours.backbone.shared_blocks) == mem_blocks
    assert cfg.state_layout == ["mamba2"] * 5 + ["attention"] * 3
    # the shared weights exist once per shared block, the adapters once per use
    names = [k for k in ours.state_dict() if "attention.in_proj" in k]
    assert names == [f"backbone.shared_blocks.{b}.attention.in_proj.weight" for b in range(mem_blocks)]
    assert (ours.backbone.layers[1].adapter.q is not None) == adapters


def test_checkpoint_with_every_copy_of_the_shared_blocks_loads(tmp_path):
    """Tied weights written out under every hybrid layer (as a checkpoint saved without tying may)."""
    theirs = tiny(2, True, True, False)
    theirs.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    full = theirs.state_dict()
    tensors.update({k: v.clone() for k, v in full.items() if ".shared_transformer." in k})
    assert any(k.startswith("model.layers.4.shared_transformer.") for k in tensors)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    assert_rel(hf_logits(from_hf(tmp_path), ids), hf_logits(theirs, ids), 1e-4, "logits")
