"""Tiny models for the model, state and generation tests: every registered layer, hybrids, the toy."""

from __future__ import annotations

import tests.models.toy_mixer  # noqa: F401  (registers the "toy" layer)
from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.layers import registry

# small, fast settings per layer name (the layers' own tests cover their options)
LAYER_KW = {
    "s4": {"d_state": 16},
    "s4d": {"d_state": 16},
    "mamba": {"d_state": 8},
    "mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8},
    "s5": {"d_state": 16},
    "h3": {"d_state": 16},
    "hyena": {"l_max": 64},
}
LAYER_KW["parallel"] = {  # Falcon-H1's block: Mamba-2 and attention side by side
    "mixers": {"mamba2": LAYER_KW["mamba2"], "attention": {}},
    "in_multipliers": {"attention": 1.1},
    "out_multipliers": {"mamba2": 0.8},
}
PURE = registry.names()
HYBRID = [
    "mamba2*3,attention",
    "s4d,attention",
    "mamba,attention",
    "attention,s5",
    "h3,mamba2",
    "hyena,attention",
    "toy,attention",
]


def tiny_cfg(pattern: str, **kw) -> SSMConfig:
    """A 2-4 layer model, vocabulary 37."""
    cfg = SSMConfig(
        **{
            "d_model": 32,
            "n_layer": 4 if "*3" in pattern else 2,
            "vocab_size": 37,
            "layers": pattern,
            "n_head": 4,
            "n_kv_head": 2,
            **kw,
        }
    )
    kwargs = {k: v for k, v in LAYER_KW.items() if k in cfg.layer_types}
    cfg.layer_kwargs = {**kwargs, **cfg.layer_kwargs}
    return SSMConfig.from_dict(cfg.to_dict())


def tiny_lm(pattern: str, **kw) -> SSMForCausalLM:
    return SSMForCausalLM(tiny_cfg(pattern, **kw)).eval()
