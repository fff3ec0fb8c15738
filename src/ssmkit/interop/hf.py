"""Mamba / Mamba-2 checkpoints in and out: transformers' format, and mamba_ssm's (state-spaces/*).

    model = from_hf("dir")            # or a transformers MambaForCausalLM / Mamba2ForCausalLM object
    to_hf(model, "out")               # a directory that transformers' AutoModelForCausalLM loads

Formats read (told apart by config.json):
    transformers  "model_type": "mamba" | "mamba2"; weights keyed backbone.embeddings.*,
                  backbone.layers.{i}.{norm,mixer}.*, backbone.norm_f.*, lm_head.* (absent when tied)
    mamba_ssm     "d_model", "n_layer", "ssm_cfg" (the published state-spaces/mamba-*, mamba2-*);
                  weights keyed like ssmkit's (backbone.embedding.*), embedding padded to
                  pad_vocab_size_multiple, optional GatedMLP sublayers (norm2, mlp.fc1, mlp.fc2)
Weights: model.safetensors, pytorch_model.bin, or either sharded with its *.index.json.

ssmkit's mixer parameters carry the published names and shapes, so a conversion is a rename of the
embedding key plus the vocabulary padding: ssmkit pads the embedding to pad_vocab_size_multiple,
transformers does not (to_hf writes the first vocab_size rows; the others are never read or predicted).
Nothing here imports transformers except to read a transformers model object handed in.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from ssmkit._files import read_safetensors
from ssmkit.models.checkpoint import load_checked, write_checkpoint
from ssmkit.models.config import SSMConfig
from ssmkit.models.heads import SSMForCausalLM
from ssmkit.models.loading import parameters_on_meta

HF_EMBED, OUR_EMBED = "backbone.embeddings.weight", "backbone.embedding.weight"
HEAD = "lm_head.weight"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# ssmkit Mamba / Mamba2 constructor argument <- transformers config field
_MAMBA_FIELDS = {
    "d_state": "state_size",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "dt_rank": "time_step_rank",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init": "time_step_init_scheme",
    "dt_scale": "time_step_scale",
    "dt_init_floor": "time_step_floor",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
}
_MAMBA2_FIELDS = {
    "d_state": "state_size",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "headdim": "head_dim",
    "ngroups": "n_groups",
    "chunk_size": "chunk_size",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init_floor": "time_step_floor",
    "dt_limit": "time_step_limit",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
}
_FIELDS = {"mamba": _MAMBA_FIELDS, "mamba2": _MAMBA2_FIELDS}
_HF_CLASS = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}
# transformers' defaults for the fields that change the math, when a config.json leaves one out
_HF_DEFAULTS = {
    "mamba": dict(
        state_size=16,
        conv_kernel=4,
        expand=2,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=True,
        time_step_rank="auto",
        hidden_act="silu",
        tie_word_embeddings=True,
    ),
    "mamba2": dict(
        state_size=128,
        conv_kernel=4,
        expand=2,
        head_dim=64,
        n_groups=8,
        chunk_size=256,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=True,
        time_step_limit=(0.0, float("inf")),
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
}


# ---- reading ----------------------------------------------------------------------------------


def from_hf(path_or_model, device=None, dtype=None) -> SSMForCausalLM:
    """A transformers or mamba_ssm Mamba / Mamba-2 language model -> an ssmkit SSMForCausalLM.

    path_or_model: a checkpoint directory (see the module docstring) or a transformers
    MambaForCausalLM / Mamba2ForCausalLM object. The weights are checked name by name and shape by
    shape against the model the config describes before anything is loaded.
    """
    if isinstance(path_or_model, nn.Module):
        hf_cfg = getattr(path_or_model, "config", None)
        if hf_cfg is None or not hasattr(hf_cfg, "to_dict"):
            raise TypeError(
                f"from_hf: a model object must be a transformers MambaForCausalLM or Mamba2ForCausalLM, "
                f"got {type(path_or_model).__name__}"
            )
        raw, where = hf_cfg.to_dict(), type(path_or_model).__name__
        tensors = {k: v.detach().clone() for k, v in path_or_model.state_dict().items()}  # not shared
    else:
        directory = os.fspath(path_or_model)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"from_hf: {directory!r} is not a directory")
        raw, where = _read_json(os.path.join(directory, "config.json")), directory
        tensors = read_weights(directory)
    if "model_type" in raw:
        cfg = config_from_transformers(raw)
        tensors = {(OUR_EMBED if k == HF_EMBED else k): v for k, v in tensors.items()}
    elif "ssm_cfg" in raw or "d_model" in raw:
        cfg = config_from_mamba_ssm(raw, tensors)
    else:
        raise ValueError(
            f"from_hf: {where}: config.json is neither a transformers Mamba/Mamba-2 config (no "
            f"'model_type') nor a mamba_ssm one (no 'd_model' / 'ssm_cfg')"
        )
    with parameters_on_meta():  # the weights come from the checkpoint: none are allocated or initialised
        model = SSMForCausalLM(cfg)
    tied = model._tied_keys()  # transformers, too, ignores a stored lm_head when the head is tied
    tensors = {k: v for k, v in tensors.items() if k not in tied}
    load_checked(model, tensors, f"from_hf: the weights of {where}")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def config_from_transformers(raw: dict[str, Any]) -> SSMConfig:
    """A transformers MambaConfig / Mamba2Config (as a dict) -> SSMConfig."""
    kind = raw.get("model_type")
    if kind not in _FIELDS:
        raise ValueError(f"from_hf: model_type must be 'mamba' or 'mamba2', got {kind!r}")
    c = {**_HF_DEFAULTS[kind], **{k: v for k, v in raw.items() if v is not None}}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in c:
            raise ValueError(f"from_hf: the {kind} config has no {key!r}")
    if c["hidden_act"] != "silu":
        raise ValueError(f"from_hf: hidden_act must be 'silu' (as every Mamba), got {c['hidden_act']!r}")
    layer = {ours: c[theirs] for ours, theirs in _FIELDS[kind].items() if theirs in c}
    if isinstance(layer.get("dt_limit"), list):
        layer["dt_limit"] = tuple(layer["dt_limit"])
    if kind == "mamba2":
        layer["norm_eps"] = c["layer_norm_epsilon"]
        d_inner = int(c["expand"] * c["hidden_size"])
        if "num_heads" in c and c["num_heads"] * c["head_dim"] != d_inner:
            raise ValueError(
                f"from_hf: num_heads * head_dim = {c['num_heads']} * {c['head_dim']} must equal "
                f"expand * hidden_size = {d_inner}"
            )
    return SSMConfig(
        d_model=c["hidden_size"],
        n_layer=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        layers=kind,
        layer_kwargs={kind: layer},
        norm_eps=c["layer_norm_epsilon"],
        residual_in_fp32=c["residual_in_fp32"],
        tie_embeddings=bool(c["tie_word_embeddings"]),
        pad_vocab_size_multiple=1,  # transformers' embedding has exactly vocab_size rows
    )


def config_from_mamba_ssm(raw: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SSMConfig:
    """A mamba_ssm MambaConfig dict (config.json of state-spaces/mamba-*) -> SSMConfig."""
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    kind = {"mamba1": "mamba", "mamba2": "mamba2"}.get(str(ssm_cfg.pop("layer", "Mamba1")).lower())
    if kind is None:
        raise ValueError(
            f"from_hf: ssm_cfg.layer must be 'Mamba1' or 'Mamba2', got {raw['ssm_cfg']['layer']!r}"
        )
    if raw.get("attn_layer_idx"):
        raise ValueError(
            "from_hf: mamba_ssm hybrids with attention layers (attn_layer_idx) are not supported: "
            "their attention weights have no ssmkit counterpart yet"
        )
    if not raw.get("rms_norm", True):
        raise ValueError("from_hf: mamba_ssm models with rms_norm=false (LayerNorm) are not supported")
    if ssm_cfg.pop("norm_before_gate", False):
        raise ValueError("from_hf: Mamba2 with norm_before_gate=True is not supported")
    for flag in ("use_fast_path", "use_mem_eff_path", "layer_idx"):  # CUDA-path switches: no math
        ssm_cfg.pop(flag, None)
    if ssm_cfg.pop("d_ssm", None) is not None:
        raise ValueError("from_hf: Mamba2 with d_ssm (a partial SSM) is not supported")
    for key in ("d_model", "n_layer", "vocab_size"):
        if key not in raw:
            raise ValueError(f"from_hf: the mamba_ssm config has no {key!r}")
    d_intermediate = int(raw.get("d_intermediate", 0) or 0)
    fc2 = tensors.get("backbone.layers.0.mlp.fc2.weight")
    if d_intermediate and fc2 is not None:
        d_intermediate = fc2.shape[1]  # mamba_ssm rounds the GatedMLP width up to a multiple of 128
    return SSMConfig(
        d_model=raw["d_model"],
        n_layer=raw["n_layer"],
        vocab_size=raw["vocab_size"],
        layers=kind,
        layer_kwargs={kind: ssm_cfg},
        d_intermediate=d_intermediate,
        mlp="gated",
        residual_in_fp32=raw.get("residual_in_fp32", True),
        tie_embeddings=raw.get("tie_embeddings", True),
        pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
    )


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: safetensors or torch .bin, one file or sharded."""
    for name in WEIGHT_FILES:
        single, index = os.path.join(directory, name), os.path.join(directory, name + ".index.json")
        if os.path.isfile(single):
            return _read_file(single)
        if os.path.isfile(index):
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise ValueError(f"{index} has an empty weight_map")
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(_read_file(os.path.join(directory, shard)))
            return out
    raise FileNotFoundError(
        f"from_hf: {directory} holds none of {', '.join(WEIGHT_FILES)} (nor a sharded *.index.json)"
    )


def _read_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_hf: missing weight file {path}")
    try:
        if path.endswith(".safetensors"):
            return read_safetensors(path)[0]  # plain reads: the file is not mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each format's own error type on a damaged file
        raise ValueError(f"from_hf: cannot read {path} (truncated or corrupt?): {e}") from e


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_hf: missing {path}")
    try:
        with open(path) as f:
            return json.load(f, object_hook=_special_floats)
    except json.JSONDecodeError as e:
        raise ValueError(f"from_hf: {path} is not valid JSON: {e}") from e


def _special_floats(obj: dict) -> Any:
    """transformers >= 5 writes inf / nan in config.json as {"__float__": "Infinity"}."""
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


# ---- writing ----------------------------------------------------------------------------------


def to_hf(
    model: SSMForCausalLM,
    directory: str | os.PathLike,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> None:
    """Write `model` as a transformers MambaForCausalLM / Mamba2ForCausalLM checkpoint directory.

    The model must be a pure Mamba or pure Mamba-2 stack without MLP sublayers and with only what
    transformers' mixers express; anything else raises, naming what does not convert. The token ids
    go into config.json (None: generation stops only at max_new_tokens).
    """
    cfg = hf_config(model)
    cfg.update(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    V = model.config.vocab_size
    tensors = {}
    for k, v in model.state_dict().items():
        if k == HEAD and cfg["tie_word_embeddings"]:
            continue
        if k in (OUR_EMBED, HEAD):
            v = v[:V]  # drop ssmkit's vocabulary padding rows
        tensors[HF_EMBED if k == OUR_EMBED else k] = v.detach().to("cpu").contiguous()
    write_checkpoint(directory, cfg, tensors)


def hf_config(model: SSMForCausalLM) -> dict[str, Any]:
    """The transformers config.json dict of `model`, or a ValueError naming what has no counterpart."""
    if not isinstance(model, SSMForCausalLM):
        raise TypeError(f"to_hf: model must be an ssmkit SSMForCausalLM, got {type(model).__name__}")
    c: SSMConfig = model.config
    kinds = set(c.layer_types)
    if len(kinds) != 1 or next(iter(kinds)) not in _FIELDS:
        raise ValueError(
            f"to_hf: transformers holds pure Mamba or Mamba-2 stacks; this model's layers are {c.layers!r}"
        )
    (kind,) = kinds
    if c.d_intermediate:
        raise ValueError(
            f"to_hf: transformers' {_HF_CLASS[kind]} has no MLP sublayer (d_intermediate={c.d_intermediate})"
        )
    if c.bidirectional:
        raise ValueError("to_hf: transformers' Mamba models are causal; this model is bidirectional")
    mixer = model.backbone.layers[0].mixer
    out: dict[str, Any] = {
        "architectures": [_HF_CLASS[kind]],
        "model_type": kind,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.norm_eps,
        "residual_in_fp32": c.residual_in_fp32,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "use_cache": True,
        "torch_dtype": str(model.backbone.dtype).removeprefix("torch."),
    }
    if kind == "mamba":
        out.update(
            state_size=mixer.d_state,
            conv_kernel=mixer.d_conv,
            expand=mixer.expand,
            time_step_rank=mixer.dt_rank,
            use_bias=mixer.in_proj.bias is not None,
            use_conv_bias=mixer.conv1d.bias is not None,
            intermediate_size=mixer.d_inner,
        )
        for ours in ("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor"):  # init only
            if ours in c.layer_kwargs.get(kind, {}):
                out[_MAMBA_FIELDS[ours]] = c.layer_kwargs[kind][ours]
    else:
        if not mixer.rmsnorm or mixer.D_has_hdim:
            raise ValueError("to_hf: transformers' Mamba2Mixer needs rmsnorm=True and D_has_hdim=False")
        if mixer.norm.eps != c.norm_eps:
            raise ValueError(
                f"to_hf: transformers uses one epsilon for every norm; the mixers' norm_eps="
                f"{mixer.norm.eps} differs from the config's norm_eps={c.norm_eps}"
            )
        out.update(
            state_size=mixer.d_state,
            conv_kernel=mixer.d_conv,
            expand=mixer.expand,
            head_dim=mixer.headdim,
            num_heads=mixer.nheads,
            n_groups=mixer.ngroups,
            chunk_size=mixer.chunk_size,
            time_step_limit=list(mixer.dt_limit),
            use_bias=mixer.in_proj.bias is not None,
            use_conv_bias=mixer.conv1d.bias is not None,
        )
    return out
