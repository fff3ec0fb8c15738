"""Hugging Face interop: transformers (and mamba_ssm) Mamba / Mamba-2 checkpoints in, transformers out."""

import json
import os
import re

import pytest
import torch

import ssmkit
from ssmkit.interop import from_hf, to_hf
from tests.helpers import assert_rel

tf = pytest.importorskip("transformers")

VOCAB = 61  # not a multiple of 8: ssmkit's padded embedding must be cut on the way out


def hf_model(kind: str, tie: bool = True):
    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        tie_word_embeddings=tie,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    if kind == "mamba":
        cfg = tf.MambaConfig(state_size=8, expand=2, conv_kernel=4, **common)
        model = tf.MambaForCausalLM(cfg)
    else:
        cfg = tf.Mamba2Config(
            state_size=8, expand=2, head_dim=16, num_heads=4, n_groups=2, chunk_size=8, **common
        )
        model = tf.Mamba2ForCausalLM(cfg)
    with torch.no_grad():  # move off the init's regular A and D so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith(("A_log", ".D")):
                p.copy_(torch.randn_like(p) * 0.5)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("tie, safe", [(True, True), (False, False)])
def test_from_hf_directory_matches_transformers_logits_and_greedy_tokens(tmp_path, kind, tie, safe):
    theirs = hf_model(kind, tie)
    theirs.save_pretrained(tmp_path)
    if not safe:  # transformers >= 5 writes only safetensors; older versions and mamba_ssm wrote .bin
        from safetensors.torch import load_file

        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
        os.remove(tmp_path / "model.safetensors")
    ours = from_hf(tmp_path)
    assert ours.config.tie_embeddings == tie and ours.config.layer_types == [kind, kind]
    ids = torch.randint(0, VOCAB, (2, 19))
    assert_rel(our_logits(ours, ids), hf_logits(theirs, ids), 1e-4, f"{kind} logits vs transformers")

    prompt = ids[:, :7]
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=32, do_sample=False)
    got = ours.generate(prompt, max_new_tokens=32)
    assert got.shape == expected.shape == (2, 39)
    assert torch.equal(got, expected), "greedy generation differs from transformers'"


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_from_hf_takes_a_model_object(kind):
    theirs = hf_model(kind)
    ours = from_hf(theirs)
    ids = torch.randint(0, VOCAB, (1, 11))
    assert_rel(our_logits(ours, ids), hf_logits(theirs, ids), 1e-4, "from a model object")


def test_from_hf_reads_sharded_checkpoints(tmp_path):
    theirs = hf_model("mamba")
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    ids = torch.randint(0, VOCAB, (1, 9))
    assert_rel(our_logits(from_hf(tmp_path), ids), hf_logits(theirs, ids), 1e-4, "sharded")


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("tie", [True, False])
def test_to_hf_round_trips_through_transformers(tmp_path, kind, tie):
    kw = {"mamba": {"d_state": 8}, "mamba2": {"d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 8}}
    cfg = ssmkit.SSMConfig(
        d_model=32,
        n_layer=2,
        vocab_size=VOCAB,
        layers=kind,
        layer_kwargs={kind: kw[kind]},
        tie_embeddings=tie,
    )
    ours = ssmkit.SSMForCausalLM(cfg).eval()
    assert cfg.vocab_size_padded > VOCAB
    with torch.no_grad():
        if not tie:
            ours.lm_head.weight.normal_()
    to_hf(ours, tmp_path)
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == ("MambaForCausalLM" if kind == "mamba" else "Mamba2ForCausalLM")
    ids = torch.randint(0, VOCAB, (2, 13))
    assert_rel(hf_logits(theirs, ids), our_logits(ours, ids), 1e-4, "transformers on to_hf's directory")

    back = from_hf(tmp_path)  # and back: the same weights, less the vocabulary padding
    for k, v in back.state_dict().items():
        assert torch.equal(
            v,
            ours.state_dict()[k][: v.shape[0]]
            if v.shape != ours.state_dict()[k].shape
            else ours.state_dict()[k],
        ), k
    assert_rel(our_logits(back, ids), our_logits(ours, ids), 1e-6, "round trip")


def test_mamba_ssm_layout_with_padded_vocab_and_gated_mlp(tmp_path):
    """The state-spaces checkpoints' format: ssmkit's own key names, config d_model / n_layer / ssm_cfg."""
    from safetensors.torch import save_file

    cfg = ssmkit.SSMConfig(
        d_model=32,
        n_layer=2,
        vocab_size=50,
        layers="mamba2",
        d_intermediate=128,
        layer_kwargs={"mamba2": {"d_state": 8, "headdim": 16, "chunk_size": 8}},
    )
    ours = ssmkit.SSMForCausalLM(cfg).eval()
    raw = {
        "d_model": 32,
        "n_layer": 2,
        "d_intermediate": 128,
        "vocab_size": 50,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "chunk_size": 8},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
        "attn_layer_idx": [],
        "attn_cfg": {},
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(
        {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"},
        str(tmp_path / "model.safetensors"),
    )
    loaded = from_hf(tmp_path)
    assert loaded.config.vocab_size_padded == 56
    ids = torch.randint(0, 50, (1, 10))
    assert torch.equal(our_logits(loaded, ids), our_logits(ours, ids))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        from_hf(tmp_path / "nothing")
    theirs = hf_model("mamba")
    theirs.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "state_size": 4}))
    with pytest.raises(ValueError, match=r"wrong shapes .*A_log: checkpoint \(64, 8\) vs model \(64, 4\)"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        from_hf(tmp_path)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="model.safetensors, pytorch_model.bin"):
        from_hf(tmp_path)

    hybrid = ssmkit.SSMForCausalLM(
        ssmkit.SSMConfig(d_model=16, n_layer=2, vocab_size=8, n_head=2, layers="mamba,attention")
    )
    with pytest.raises(ValueError, match="pure Mamba or Mamba-2 stacks"):
        to_hf(hybrid, tmp_path / "out")
    with_mlp = ssmkit.SSMForCausalLM(
        ssmkit.SSMConfig(d_model=16, n_layer=1, vocab_size=8, layers="mamba", d_intermediate=32)
    )
    with pytest.raises(ValueError, match="no MLP sublayer"):
        to_hf(with_mlp, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_convert_both_ways(tmp_path, capsys):
    from ssmkit.cli import main

    theirs = hf_model("mamba2")
    theirs.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--to", "ssmkit", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    ours = ssmkit.SSMForCausalLM.from_pretrained(tmp_path / "ours")
    ids = torch.randint(0, VOCAB, (1, 9))
    assert_rel(our_logits(ours, ids), hf_logits(theirs, ids), 1e-4, "convert --to ssmkit")
    assert main(["convert", "--to", "hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert_rel(hf_logits(again, ids), hf_logits(theirs, ids), 1e-5, "convert --to hf")
    capsys.readouterr()
    assert main(["convert", "--to", "ssmkit", str(tmp_path / "none"), str(tmp_path / "x")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    from ssmkit.interop.hf import names

    families = {"mamba", "mamba2", "falcon_mamba", "bamba", "granitemoehybrid", "nemotron_h", "jamba"}
    assert families | {"falcon_h1", "lfm2"} <= set(names())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert names() == sorted(names())
    supported = re.escape(f"model_type 'llama' is not supported; supported: {', '.join(names())}")
    with pytest.raises(ValueError, match=supported):
        from_hf(tmp_path)
