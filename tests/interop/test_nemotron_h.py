"""Nemotron-H: transformers' nemotron_h checkpoints in and out (Mamba-2, NoPE attention, squared-ReLU
MLP blocks and DeepSeek-routed MoE blocks, each one sublayer per block)."""

import pytest
import torch

from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(latent=None, tie=False, groups=(1, 1), dt_limit=(0.05, float("inf"))):
    """dt_limit: time_step_limit (time_step_min is 0.05: transformers <= 5.24 clamps there instead)."""
    cfg = tf.NemotronHConfig(
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention"],
        mamba_num_heads=6,
        mamba_head_dim=8,
        ssm_state_size=8,
        n_groups=2,
        chunk_size=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24,
        moe_latent_size=latent,
        n_group=groups[0],
        topk_group=groups[1],
        routed_scaling_factor=1.7,
        time_step_min=0.05,
        time_step_limit=dt_limit,
        tie_word_embeddings=tie,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.NemotronHForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize(
    "latent, tie, groups", [(None, False, (1, 1)), (12, True, (2, 1))], ids=["plain", "latent-groups"]
)
def test_nemotron_h_matches_transformers(tmp_path, latent, tie, groups):
    ours = check_family(tiny(latent, tie, groups), tmp_path, VOCAB, model_type="nemotron_h")
    assert ours.config.layer_types == ["mamba2", "moe", "attention", "mlp", "mamba2"]
    assert all(m is None for m in ours.config.mlp_types)
    mamba = ours.backbone.layers[0].mixer
    assert mamba.d_inner == 48 != mamba.expand * 32 and mamba.dt_limit == (0.05, float("inf"))
    assert ours.backbone.layers[2].mixer.rotary_dim == 0


def test_time_step_limit_is_read():
    from ssmkit.interop.hf.convert import config_from_transformers

    raw = tiny(dt_limit=(0.0, 0.3)).config.to_dict()
    assert config_from_transformers(raw).layer_kwargs["mamba2"]["dt_limit"] == (0.0, 0.3)


@pytest.mark.skipif(
    tuple(int(x) for x in tf.__version__.split(".")[:2]) < (5, 25),
    reason="transformers <= 5.24 clamps dt at (time_step_min, inf), not at time_step_limit",
)
def test_dt_is_clamped_to_time_step_limit(tmp_path):
    """NVIDIA's code and transformers >= 5.25 clamp dt to time_step_limit (here below time_step_min
    and with an upper bound, so both ends show in the logits)."""
    ours = check_family(tiny(dt_limit=(0.0, 0.3)), tmp_path, VOCAB, model_type="nemotron_h")
    assert ours.backbone.layers[0].mixer.dt_limit == (0.0, 0.3)


def test_old_style_config_and_model_prefixed_stacked_weights(tmp_path):
    """A config.json with hybrid_override_pattern and mamba_* names, and weights saved under model.*
    with (E, ...) stacked experts, read as the same model."""
    import json

    from safetensors.torch import load_file, save_file

    from ssmkit.interop import from_hf

    theirs = tiny()
    theirs.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["hybrid_override_pattern"] = "ME*-M"
    del raw["layers_block_type"]
    raw["mamba_n_groups"] = raw.pop("n_groups")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    sd = load_file(tmp_path / "model.safetensors")
    moved = {"model." + k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    for name in ("up_proj", "down_proj"):
        keys = sorted(
            k for k in moved if "experts." in k and k.endswith(f"{name}.weight") and "shared" not in k
        )
        moved["model.layers.1.mixer.experts." + name] = torch.stack([moved.pop(k) for k in keys])
    save_file(moved, str(tmp_path / "model.safetensors"))
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(
            from_hf(tmp_path)(ids).logits, theirs(ids).logits.float(), rtol=1e-4, atol=1e-4
        )


def test_state_saved_in_one_process_continues_in_another(tmp_path):
    """A transcript paused in a file (Mamba-2 states, an attention KV cache, the MLP / MoE blocks'
    empty states) continues in a fresh process exactly as it would have in this one."""
    import json
    import subprocess
    import sys

    from ssmkit import State
    from ssmkit.interop import from_hf

    tiny().save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf")
    first, second = torch.randint(0, VOCAB, (2, 6)), torch.randint(0, VOCAB, (2, 3))
    st = ours.init_state(2)
    ours.generate(first, max_new_tokens=4, state=st)
    st.save(tmp_path / "chat.safetensors")
    expected = ours.generate(second, max_new_tokens=5, state=st)[:, 3:]
    code = (
        "import json, sys, torch\n"
        "from ssmkit import State\n"
        "from ssmkit.interop import from_hf\n"
        "model = from_hf(sys.argv[1]); st = State.load(sys.argv[2])\n"
        "ids = torch.tensor(json.loads(sys.argv[3]))\n"
        "print(json.dumps(model.generate(ids, max_new_tokens=5, state=st)[:, 3:].tolist()))\n"
    )
    argv = [str(tmp_path / "hf"), str(tmp_path / "chat.safetensors"), json.dumps(second.tolist())]
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected.tolist()
    assert State.load(tmp_path / "chat.safetensors").layout == ["mamba2", "moe", "attention", "mlp", "mamba2"]

