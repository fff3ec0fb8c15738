"""Checkpoint loading with one copy of the weights: the safetensors reader against safetensors' own,
parameters built on meta (buffers real, markers kept, ties kept), and the resident-memory peak of
from_pretrained / from_hf measured in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit._files import read_safetensors
from ssmkit.models.loading import assign_weights, parameters_on_meta
from tests.models.tiny import PURE, tiny_cfg


def test_read_safetensors_equals_safetensors(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "i8": torch.randint(-128, 127, (6, 3), dtype=torch.int8),
        "i64": torch.arange(5),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "t.safetensors", metadata={"k": "v"})
    got, meta = read_safetensors(tmp_path / "t.safetensors")
    ref = load_file(tmp_path / "t.safetensors")
    assert meta == {"k": "v"} and got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k


@pytest.mark.parametrize("cut", [4, 40, -7])
def test_read_safetensors_refuses_truncated_files(tmp_path, cut):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(64), "b": torch.randn(8, 8)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError):
        read_safetensors(path)


@pytest.mark.parametrize("pattern", PURE)
def test_parameters_on_meta_then_assign_equals_the_built_model(pattern):
    """Every layer: built with meta parameters, then given the weights, it computes what the model
    built the usual way computes (buffers such as Hyena's positions are real from the start)."""
    cfg = tiny_cfg(pattern)
    torch.manual_seed(0)
    ref = SSMForCausalLM(cfg).eval()
    with parameters_on_meta():
        model = SSMForCausalLM(cfg).eval()
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    tensors = {k: v.clone() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assign_weights(model, tensors)
    assert model.lm_head.weight is model.backbone.embedding.weight
    markers = {n: p.__dict__ for n, p in ref.named_parameters()}
    assert {n: p.__dict__ for n, p in model.named_parameters()} == markers
    ids = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_parameters_on_meta_is_scoped_to_the_block_and_the_thread():
    with parameters_on_meta():
        inside = torch.nn.Linear(3, 3)
    outside = torch.nn.Linear(3, 3)
    assert inside.weight.device.type == "meta" and outside.weight.device.type == "cpu"


def test_assign_weights_names_what_is_missing():
    with parameters_on_meta():
        lin = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="0.bias"):
        assign_weights(lin, {"0.weight": torch.randn(4, 3)})


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, ssmkit
    from ssmkit.interop import from_hf
    from ssmkit.layers.mamba2 import Mamba2  # imports done before the measurement

    def kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    loader = ssmkit.SSMForCausalLM.from_pretrained if sys.argv[2] == "ssmkit" else from_hf
    loader(sys.argv[1])  # lazy imports (and a fresh clone's bytecode compiling) happen here, not below
    open("/proc/self/clear_refs", "w").write("5")
    base = kb("VmRSS")
    model = loader(sys.argv[1])
    print(json.dumps({"peak_kb": kb("VmHWM") - base}))
    """
)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc clear_refs")
@pytest.mark.parametrize("fmt", ["ssmkit", "transformers"])
def test_loading_holds_the_weights_once(tmp_path, fmt):
    """The resident peak while loading stays within 1.25x the weights' bytes (it was 2x: a random
    model built, then the file's tensors, then a copy)."""
    cfg = SSMConfig(d_model=256, n_layer=2, vocab_size=50000, layers="mamba2",
                    layer_kwargs={"mamba2": {"d_state": 16, "headdim": 32}})
    model = SSMForCausalLM(cfg)
    weight_kb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024
    if fmt == "ssmkit":
        model.save_pretrained(tmp_path)
    else:
        from ssmkit.interop import to_hf

        to_hf(model, tmp_path)
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path), fmt],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak_kb = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"]
    assert peak_kb < 1.25 * weight_kb, f"loading peaked {peak_kb / weight_kb:.2f}x the weights"
