"""quantize_int8 on whole models: logits close to float32, decoding (the int8 kernel) agrees with the
forward (the float path), int8 checkpoints save and load directly, and States are shared with the
float model."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ssmkit import SSMForCausalLM
from ssmkit.layers.int8 import Int8Embedding, Int8Linear
from ssmkit.models.int8 import quantize_int8
from tests.helpers import assert_rel
from tests.models.tiny import tiny_lm

CASES = [("mamba", {}), ("mamba2", {}), ("mamba2", {"tie_embeddings": False, "d_intermediate": 48}),
         ("mamba,attention", {"d_intermediate": 48, "mlp": "gated"})]


def _pair(pattern, kw):
    model = tiny_lm(pattern, **kw)
    q = SSMForCausalLM(model.config).eval()
    q.load_state_dict(model.state_dict())
    return model, quantize_int8(q)


@pytest.mark.parametrize("pattern,kw", CASES)
def test_int8_model_close_to_float_forward_and_decode(pattern, kw):
    torch.manual_seed(0)
    model, q = _pair(pattern, kw)
    assert isinstance(q.lm_head, Int8Linear) and isinstance(q.backbone.embedding, Int8Embedding)
    assert (q.lm_head.weight is q.backbone.embedding.weight) == q.config.tie_embeddings
    ids = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        ref, full = model(ids).logits, q(ids).logits
    assert_rel(full, ref, 3e-2, "int8 forward vs float32")
    st = q.init_state(2)
    assert all(v.dtype in (torch.float32, torch.int64) for d in st.layers for v in d.values())
    with torch.no_grad():
        q(ids[:, :4], state=st)
        steps = [q.step(ids[:, t], st) for t in range(4, 12)]
    assert_rel(torch.stack(steps, 1), full[:, 4:], 3e-2, "int8 decode (int8 kernel) vs int8 forward")


@pytest.mark.parametrize("pattern", ["mamba", "mamba2"])
def test_which_linear_maps_become_int8(pattern):
    _, q = _pair(pattern, {})
    want = {"mamba": {"in_proj", "x_proj", "out_proj"}, "mamba2": {"in_proj", "out_proj"}}[pattern]
    for block in q.backbone.layers:
        int8 = {n for n, m in block.mixer.named_children() if isinstance(m, Int8Linear)}
        assert int8 == want, int8
        floats = {n for n, m in block.mixer.named_children() if isinstance(m, torch.nn.Linear)}
        assert floats == ({"dt_proj"} if pattern == "mamba" else set()), floats


@pytest.mark.parametrize("tie", [True, False])
def test_int8_checkpoint_loads_directly(tmp_path, tie):
    model, q = _pair("mamba2", {"tie_embeddings": tie})
    model.save_pretrained(tmp_path / "f32")
    q.save_pretrained(tmp_path / "int8")
    with open(tmp_path / "int8" / "config.json") as f:
        assert json.load(f)["ssmkit_quantization"] == "int8"
    size = {d: os.path.getsize(tmp_path / d / "model.safetensors") for d in ("f32", "int8")}
    assert size["int8"] < 0.45 * size["f32"], size
    again = SSMForCausalLM.from_pretrained(tmp_path / "int8").eval()
    for (k, a), (k2, b) in zip(q.state_dict().items(), again.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert (again.lm_head.weight is again.backbone.embedding.weight) == tie
    ids = torch.randint(0, 37, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, q(ids).logits)
    st = model.init_state(2)  # a float model's State serves the int8 model: same config hash
    with torch.no_grad():
        again(ids, state=st)
        again.step(ids[:, 0], st)


def test_unknown_quantization_is_a_clear_error(tmp_path):
    tiny_lm("mamba2").save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "ssmkit_quantization": "int3"}))
    with pytest.raises(ValueError, match="int3"):
        SSMForCausalLM.from_pretrained(tmp_path)
