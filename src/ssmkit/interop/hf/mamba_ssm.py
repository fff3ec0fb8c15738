"""mamba_ssm's own checkpoint format (the published state-spaces/mamba-*, mamba2-*).

config.json has "d_model", "n_layer", "ssm_cfg" (no model_type); weights are keyed like ssmkit's
(backbone.embedding.*), the embedding padded to pad_vocab_size_multiple, with optional GatedMLP
sublayers (norm2, mlp.fc1, mlp.fc2). So reading one is only a config conversion.
"""

from __future__ import annotations

from typing import Any

import torch

from ssmkit.models.config import SSMConfig


def is_mamba_ssm_config(raw: dict[str, Any]) -> bool:
    return "model_type" not in raw and ("ssm_cfg" in raw or "d_model" in raw)


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
