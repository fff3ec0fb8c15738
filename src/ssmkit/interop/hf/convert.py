"""from_hf / to_hf: read a checkpoint's config.json, find its family by model_type, convert both ways."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from torch import nn

from ssmkit.interop.hf import registry
from ssmkit.interop.hf.files import read_json, read_weights
from ssmkit.interop.hf.mamba_ssm import config_from_mamba_ssm, is_mamba_ssm_config
from ssmkit.models.checkpoint import load_checked, write_checkpoint
from ssmkit.models.config import SSMConfig
from ssmkit.models.heads import SSMForCausalLM
from ssmkit.models.loading import parameters_on_meta


def from_hf(path_or_model, device=None, dtype=None) -> SSMForCausalLM:
    """A transformers checkpoint (of a supported model_type) or a mamba_ssm one -> an SSMForCausalLM.

    path_or_model: a checkpoint directory or a transformers model object (saved with its own
    save_pretrained to a temporary directory first, so both read the same on-disk format). The
    weights are checked name by name and shape by shape before anything is loaded.
    """
    if isinstance(path_or_model, nn.Module):
        if not hasattr(path_or_model, "save_pretrained") or not hasattr(path_or_model, "config"):
            raise TypeError(
                f"from_hf: a model object must be a transformers PreTrainedModel, got "
                f"{type(path_or_model).__name__}"
            )
        with tempfile.TemporaryDirectory(prefix="ssmkit-from-hf-") as tmp:
            path_or_model.save_pretrained(tmp)
            return from_hf(tmp, device=device, dtype=dtype)
    directory = os.fspath(path_or_model)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"from_hf: {directory!r} is not a directory")
    raw = read_json(os.path.join(directory, "config.json"))
    source = f"from_hf: the weights of {directory}"
    if "model_type" in raw:
        family = registry.get(raw["model_type"])
        c = merged_config(family, raw)
        model = _empty_model(family.config(c))
        tensors = family.weights(model, c).to_ours(family.prepare(read_weights(directory)), source)
    elif is_mamba_ssm_config(raw):
        tensors = read_weights(directory)
        model = _empty_model(config_from_mamba_ssm(raw, tensors))
        tensors = {k: v for k, v in tensors.items() if k not in model._tied_keys()}
    else:
        raise ValueError(
            f"from_hf: {directory}: config.json is neither a transformers config (no 'model_type') nor "
            f"a mamba_ssm one (no 'd_model' / 'ssm_cfg'); supported model_types: "
            f"{', '.join(registry.names())}"
        )
    load_checked(model, tensors, source)  # checks names and shapes; the tensors become the parameters
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def _empty_model(cfg: SSMConfig) -> SSMForCausalLM:
    """The model with its parameters on the meta device: the checkpoint's tensors become them."""
    with parameters_on_meta():
        return SSMForCausalLM(cfg)


def merged_config(family: registry.Family, raw: dict[str, Any]) -> dict[str, Any]:
    """config.json over the family's defaults (a null in config.json means the default)."""
    return {**family.defaults, **{k: v for k, v in raw.items() if v is not None}}


def config_from_transformers(raw: dict[str, Any]) -> SSMConfig:
    """A transformers config dict of a supported model_type -> SSMConfig."""
    family = registry.get(raw.get("model_type"))
    return family.config(merged_config(family, raw))


def to_hf(
    model: SSMForCausalLM,
    directory: str | os.PathLike,
    model_type: str | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> None:
    """Write `model` as a transformers checkpoint directory that AutoModelForCausalLM loads.

    model_type: the family to write (None: the first family, in registry priority, whose format
    holds this model: a pure Mamba stack is written as "mamba"). A model that no family holds raises,
    naming per family what does not convert. The token ids go into config.json.
    """
    family, c = _family_for(model, model_type)
    c = {
        **c,
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "vocab_size": model.config.vocab_size,
        "tie_word_embeddings": model.config.tie_embeddings,
        "torch_dtype": str(model.backbone.dtype).removeprefix("torch."),
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    tensors = family.weights(model, merged_config(family, c)).to_theirs(model.state_dict())
    write_checkpoint(directory, c, tensors)


def hf_config(model: SSMForCausalLM, model_type: str | None = None) -> dict[str, Any]:
    """The transformers config.json dict to_hf writes for `model` (without the token ids)."""
    family, c = _family_for(model, model_type)
    return {**c, "architectures": [family.hf_class], "model_type": family.model_type}


def _family_for(model, model_type: str | None) -> tuple[registry.Family, dict[str, Any]]:
    if not isinstance(model, SSMForCausalLM):
        raise TypeError(f"to_hf: model must be an ssmkit SSMForCausalLM, got {type(model).__name__}")
    if model.config.bidirectional:
        raise ValueError("to_hf: transformers' language models are causal; this model is bidirectional")
    if model_type is not None:
        family = registry.get(model_type)
        return family, family.hf_config(model)
    reasons = []
    for family in registry.in_priority_order():
        try:
            return family, family.hf_config(model)
        except ValueError as e:
            reasons.append(f"{family.model_type}: {str(e).removeprefix('to_hf: ')}")
    raise ValueError("to_hf: no transformers format holds this model (" + "; ".join(reasons) + ")")
