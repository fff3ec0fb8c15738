"""SSMConfig, Backbone and heads: patterns, weight names, cached == full, chunked == one call,
save/load, and the classification and forecasting heads learning on tiny synthetic data."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ssmkit import SSMConfig, SSMForCausalLM, SSMForForecasting, SSMForSequenceClassification
from tests.helpers import assert_rel
from tests.models.tiny import HYBRID, PURE, tiny_cfg, tiny_lm

# ---- config ----------------------------------------------------------------------------------


def test_pattern_repeats_to_n_layer():
    cfg = SSMConfig(n_layer=6, layers="mamba2*3,attention")
    assert cfg.layer_types == ["mamba2"] * 3 + ["attention"] + ["mamba2"] * 2
    assert SSMConfig(n_layer=3, layers="S4D, attention").layer_types == ["s4d", "attention", "s4d"]


def test_unknown_layer_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown layer name 'mamba3'.*'attention'.*'s4d'"):
        SSMConfig(layers="mamba3")
    with pytest.raises(ValueError, match="mlp"):
        SSMConfig(mlp="swiglu")
    with pytest.raises(ValueError, match="layer_kwargs"):
        SSMConfig(layer_kwargs={"mamba3": {}})


def test_config_round_trip_and_hash():
    cfg = SSMConfig(
        d_model=64, layers="mamba2*3,attention", layer_kwargs={"mamba2": {"headdim": 32}}, vocab_size=50
    )
    assert cfg.vocab_size_padded == 56
    d = json.loads(json.dumps(cfg.to_dict()))
    again = SSMConfig.from_dict(d)
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert SSMConfig(rope_theta=10000).config_hash() == SSMConfig(rope_theta=1e4).config_hash()
    assert (
        SSMConfig(d_model=64, vocab_size=51).config_hash()
        != SSMConfig(d_model=64, vocab_size=50).config_hash()
    )
    with pytest.raises(ValueError, match="unknown fields"):
        SSMConfig.from_dict({**d, "d_modle": 3})


def test_weight_names_follow_mamba_checkpoints():
    model = SSMForCausalLM(
        SSMConfig(d_model=32, n_layer=2, vocab_size=37, layers="attention", d_intermediate=64)
    )
    keys = set(model.state_dict())
    for k in [
        "backbone.embedding.weight",
        "backbone.layers.0.mixer.in_proj.weight",
        "backbone.layers.1.mixer.out_proj.weight",
        "backbone.layers.0.norm.weight",
        "backbone.layers.0.norm2.weight",
        "backbone.layers.0.mlp.fc1.weight",
        "backbone.norm_f.weight",
        "lm_head.weight",
    ]:
        assert k in keys, k
    assert model.lm_head.weight is model.backbone.embedding.weight


# ---- cached == full, chunked == one call -----------------------------------------------------


@pytest.mark.parametrize("pattern", PURE + HYBRID)
def test_step_logits_equal_full_forward(pattern):
    model = tiny_lm(pattern, d_intermediate=48)
    ids = torch.randint(0, 37, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        st = model.init_state(2)
        steps = torch.stack([model.step(ids[:, t], st) for t in range(ids.shape[1])], 1)
    assert_rel(steps, full, 1e-4, f"{pattern}: step vs full")


@pytest.mark.parametrize("pattern", PURE + HYBRID)
def test_chunked_forward_equals_one_call(pattern):
    model = tiny_lm(pattern)
    ids = torch.randint(0, 37, (2, 13))
    with torch.no_grad():
        one = model.init_state(2)
        full = model(ids, state=one).logits
        st = model.init_state(2)
        parts = [model(ids[:, a:b], state=st).logits for a, b in [(0, 5), (5, 6), (6, 13)]]
    assert_rel(torch.cat(parts, 1), full, 1e-4, f"{pattern}: chunked logits")
    for i, (a, b) in enumerate(zip(st.layers, one.layers)):
        for k in a:
            if a[k].is_floating_point() or a[k].is_complex():
                assert_rel(a[k], b[k], 1e-4, f"{pattern}: layer {i} state[{k!r}]")
            else:
                assert torch.equal(a[k], b[k])


def test_left_padded_forward_equals_rows_alone():
    model = tiny_lm("attention")
    a, b = torch.randint(0, 37, (1, 4)), torch.randint(0, 37, (1, 7))
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], 1), b])
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
        assert_rel(out[0, 3:], model(a).logits[0], 1e-5, "short row")
        assert_rel(out[1], model(b).logits[0], 1e-5, "long row")
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=mask.flip(1))


def test_loss_shift_ignore_index_and_last_tokens():
    model = tiny_lm("attention")
    ids = torch.randint(0, 37, (2, 8))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, 2:-1].reshape(-1, 37), ids[:, 3:].reshape(-1))
    assert_rel(out.loss, ref, 1e-6, "loss")
    assert_rel(model(ids, num_last_tokens=2).logits, out.logits[:, -2:], 1e-6, "num_last_tokens")


def test_moe_aux_loss_reaches_output_and_loss():
    model = tiny_lm("attention", d_intermediate=32, mlp="moe", n_experts=4, top_k=2)
    ids = torch.randint(0, 37, (2, 8))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    plain = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 37), ids[:, 1:].reshape(-1))
    assert_rel(out.loss, plain + 0.01 * out.aux_loss, 1e-6, "loss includes the aux loss")
    out.loss.backward()
    assert model.backbone.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_bfloat16_model_keeps_float32_residual():
    model = tiny_lm("attention", d_intermediate=32)
    ids = torch.randint(0, 37, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    assert_rel(low.float(), ref, 5e-2, "bf16 vs fp32")


# ---- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_round_trip(tmp_path, tie):
    model = tiny_lm("attention", d_intermediate=32, tie_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    again = SSMForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config == model.config
    ids = torch.randint(0, 37, (2, 6))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert (again.lm_head.weight is again.backbone.embedding.weight) == tie


def test_truncated_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    model = tiny_lm("attention")
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        SSMForCausalLM.from_pretrained(tmp_path)
    # weights of another width under the same config: named, nothing loaded
    SSMForCausalLM(
        SSMConfig(d_model=16, n_layer=2, vocab_size=37, layers="attention", n_head=4)
    ).save_pretrained(tmp_path / "other")
    os.replace(tmp_path / "other" / "model.safetensors", path)
    with pytest.raises(ValueError, match="come from different saves"):
        SSMForCausalLM.from_pretrained(tmp_path)
    # a directory from before the pair was recorded: the names and shapes still catch it
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["ssmkit_weights_sha256"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="wrong shapes.*backbone"):
        SSMForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="SSMForCausalLM"):
        SSMForSequenceClassification.from_pretrained(tmp_path)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    model = tiny_lm("attention")
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny_lm("attention").save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


# ---- classification and forecasting heads ----------------------------------------------------


def _train(model, batches, steps=20, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for i in range(steps):
        loss = model(*batches[i % len(batches)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "pattern,bidirectional,pooling",
    [("attention", False, "last"), ("attention", True, "mean"), ("s4d", True, "mean")],
)
def test_classifier_learns(pattern, bidirectional, pooling):
    cfg = tiny_cfg(
        pattern,
        n_layer=1,
        d_model=16,
        n_classes=2,
        bidirectional=bidirectional,
        pooling=pooling,
        vocab_size=8,
    )
    model = SSMForSequenceClassification(cfg)
    ids = torch.randint(1, 8, (16, 12))
    labels = (ids == 3).any(1).long()  # does token 3 occur?
    losses = _train(model, [(ids, labels)])
    assert losses[-1] < 0.5 * losses[0], losses


def test_classifier_real_valued_input_and_mask():
    cfg = SSMConfig(
        d_model=16, n_layer=1, layers="attention", n_head=2, input_dim=3, n_classes=3, pooling="mean"
    )
    model = SSMForSequenceClassification(cfg)
    x = torch.randn(4, 9, 3)
    mask = torch.ones(4, 9)
    mask[:, 6:] = 0
    # right padding with a causal model: the valid part alone gives the same logits
    assert_rel(model(x, attention_mask=mask).logits, model(x[:, :6]).logits, 1e-5, "masked mean pooling")


BIDIRECTIONAL = ["mamba", "mamba2", "s4d", "s4", "s5", "attention", "mamba2,attention,s4d"]


@pytest.mark.parametrize("pattern", BIDIRECTIONAL)
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padded_bidirectional_batch_equals_rows_alone(pattern, pooling):
    """Right padding in a bidirectional classifier: the backward direction must skip the pads, so
    each padded row gives exactly the logits of the row run alone without its pads."""
    cfg = tiny_cfg(pattern, n_classes=3, bidirectional=True, pooling=pooling, n_layer=3)
    model = SSMForSequenceClassification(cfg).eval()
    lengths = [9, 5, 2]
    ids = torch.randint(1, 37, (3, 9))
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batched = model(ids.masked_fill(mask == 0, 7), attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = model(ids[i : i + 1, :n]).logits
            assert_rel(batched[i : i + 1], alone, 1e-5, f"{pattern}: row {i} ({n} tokens)")


def test_forecaster_learns_a_sine():
    cfg = SSMConfig(d_model=16, n_layer=1, layers="attention", n_head=2, input_dim=2, horizon=4, revin=True)
    model = SSMForForecasting(cfg)
    t = torch.arange(28).float()
    phase = torch.rand(8, 1, 2) * 6.28
    series = torch.sin(0.3 * t[None, :, None] + phase) * 3 + 5  # (8, 28, 2)
    x, y = series[:, :24], series[:, 24:]
    out = model(x, targets=y)
    assert out.prediction.shape == (8, 4, 2)
    losses = _train(model, [(x, y)], steps=30)
    assert losses[-1] < 0.3 * losses[0], losses


def test_forecaster_needs_input_dim_and_horizon():
    with pytest.raises(ValueError, match="input_dim"):
        SSMForForecasting(SSMConfig(layers="attention"))
    cfg = SSMConfig(d_model=16, n_layer=1, layers="attention", n_head=2, input_dim=2, horizon=3)
    with pytest.raises(ValueError, match="input_dim"):
        SSMForForecasting(cfg)(torch.randn(2, 5, 3))
