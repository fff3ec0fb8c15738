"""int8 weights for CPU inference of an SSMForCausalLM.

    model = quantize_int8(SSMForCausalLM.from_pretrained("run/model"))    # in place; returns the model
    model.save_pretrained("run/model-int8")                              # int8 tensors + scales
    SSMForCausalLM.from_pretrained("run/model-int8")                     # loads them directly

What becomes int8 (ssmkit.layers.int8: per-row symmetric int8 with a float32 scale per row):
    Mamba / Mamba-2 mixers: in_proj and out_proj (the bulk of a layer's weights), Mamba's x_proj
    (its rows give dt's low-rank input, B and C: 12 MB of float32 a token at Mamba-130M; in int8 the
    trained stdlib Mamba's bits per byte moved by +0.002%, measured by benchmarks/int8.py's data);
    MLP / GatedMLP sublayers: fc1, fc2;  the embedding and the LM head (shared rows when tied).
What stays in float: Mamba's dt_proj (its rows set the step size, which the exponentials of the scan
amplify; the fused decode step reads its weight directly), convolutions, norms, A_log, D, biases,
and the mixers of other layers.

A saved int8 model's config.json carries "ssmkit_quantization": "int8"; `from_pretrained` then builds
the int8 modules empty and assigns the file's int8 tensors to them. A model's config hash (which its
States carry) is the float model's: the same State serves both.
"""

from __future__ import annotations

from torch import nn

from ssmkit.layers.int8 import Int8Embedding, Int8Linear
from ssmkit.layers.mlp import MLP, GatedMLP

METHOD = "int8"
MIXERS = {"Mamba": ("in_proj", "x_proj", "out_proj"), "Mamba2": ("in_proj", "out_proj")}
MLPS = (MLP, GatedMLP)


def _linear(linear: nn.Linear) -> Int8Linear:
    if linear.weight.is_meta:  # a model being loaded: the checkpoint fills the int8 tensors
        return Int8Linear(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
        )
    return Int8Linear.from_linear(linear)


def _embedding(embedding: nn.Embedding) -> Int8Embedding:
    if embedding.weight.is_meta:
        return Int8Embedding(embedding.num_embeddings, embedding.embedding_dim, device="meta")
    return Int8Embedding.from_embedding(embedding)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the weights listed in the module docstring by int8 ones, in place; returns `model`."""
    if getattr(model, "quantization", None) == METHOD:
        return model
    backbone = model.backbone
    for block in backbone.layers:
        mixer = block.mixer
        for mod in [mixer, getattr(mixer, "reverse", None)]:
            for name in MIXERS.get(type(mod).__name__, ()):
                setattr(mod, name, _linear(getattr(mod, name)))
        if isinstance(block.mlp, MLPS):
            for name, child in list(block.mlp.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(block.mlp, name, _linear(child))
    if hasattr(backbone, "embedding"):
        backbone.embedding = _embedding(backbone.embedding)
    if hasattr(model, "lm_head"):
        if getattr(model.config, "tie_embeddings", False):
            head = Int8Linear(
                model.lm_head.in_features, model.lm_head.out_features, bias=False, device="meta"
            )
            head.weight, head.weight_scale = backbone.embedding.weight, backbone.embedding.weight_scale
            model.lm_head = head
        else:
            model.lm_head = _linear(model.lm_head)
    model.quantization = METHOD
    return model
