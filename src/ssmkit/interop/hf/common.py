"""What several families' configs share: required fields, activations, layer-type lists, rotary and
attention settings, the Mamba-2 mixer of the hybrids, the transformers-style multipliers.

Readers take a transformers config dict `c` (merged over the family's defaults) and return ssmkit
constructor arguments; writers take ssmkit modules and return transformers fields.
"""

from __future__ import annotations

from typing import Any

# transformers >= 5 renamed the hybrids' layer types; checkpoints written before use the old names
LEGACY_LAYER_TYPES = {"mamba": "linear_attention", "attention": "full_attention"}


def require(c: dict[str, Any], family: str, *keys: str) -> None:
    for key in keys:
        if key not in c:
            raise ValueError(f"from_hf: the {family} config has no {key!r}")


def require_act(c: dict[str, Any], key: str, allowed: tuple[str, ...], why: str = "") -> str:
    act = c.get(key)
    if act not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"from_hf: {key} must be {names}{f' ({why})' if why else ''}, got {act!r}")
    return act


def layer_types(types: list[str]) -> list[str]:
    """A per-layer type list in transformers >= 5 names ("linear_attention", "full_attention", ...)."""
    return [LEGACY_LAYER_TYPES.get(t, t) for t in types]


def check_layer_types(types: list[str], allowed: dict[str, str], family: str) -> list[str]:
    """Per-layer transformers types -> ssmkit layer names through `allowed`; unknown ones raise."""
    bad = sorted(set(types) - set(allowed))
    if bad:
        raise ValueError(
            f"from_hf: {family} layer types {bad} are not supported; supported: {sorted(allowed)}"
        )
    return [allowed[t] for t in types]


# ---- attention -----------------------------------------------------------------------------------


def rope(c: dict[str, Any], family: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from rope_parameters (transformers >= 5) or the older
    top-level rope_theta / rope_scaling; a scaled rope (yarn, linear, ...) is refused."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"from_hf: {family} with rope type {kind!r} is not supported (only 'default')")
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)))
    return theta, partial


def attention(
    c: dict[str, Any],
    family: str,
    rotary: bool = True,
    partial: float | None = None,
    scale: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SSMConfig fields, attention layer_kwargs) of a Llama-style attention described by `c`."""
    require(c, family, "num_attention_heads", "hidden_size")
    n_head = c["num_attention_heads"]
    n_kv = c.get("num_key_value_heads") or n_head
    head_dim = c.get("head_dim") or c["hidden_size"] // n_head
    theta, factor = rope(c, family) if rotary else (10000.0, 0.0)
    factor = factor if partial is None else partial
    fields = {"n_head": n_head, "n_kv_head": n_kv, "rope_theta": theta}
    kwargs = {
        "head_dim": head_dim,
        "rotary_dim": int(head_dim * factor),
        "bias": bool(c.get("attention_bias", False)),
    }
    if scale is not None:
        kwargs["scale"] = float(scale)
    return fields, kwargs


def attention_fields(mixer, family: str, rotary_factor: float | None = None) -> dict[str, Any]:
    """The transformers fields of an ssmkit Attention (rotary_factor: the fraction the family fixes)."""
    if mixer.window is not None:
        raise ValueError(f"to_hf: {family} attention has no sliding window (window={mixer.window})")
    if rotary_factor is not None and mixer.rotary_dim != int(mixer.head_dim * rotary_factor):
        raise ValueError(
            f"to_hf: {family} attention rotates {rotary_factor:g} of each head; this model's rotary_dim="
            f"{mixer.rotary_dim} of head_dim={mixer.head_dim}"
        )
    return {
        "num_attention_heads": mixer.n_head,
        "num_key_value_heads": mixer.n_kv_head,
        "head_dim": mixer.head_dim,
        "attention_bias": mixer.in_proj.bias is not None,
        "rope_parameters": {"rope_theta": mixer.rope_theta, "rope_type": "default"},
    }


# ---- the hybrids' Mamba-2 mixer -------------------------------------------------------------------


def mamba2(
    c: dict[str, Any], names: dict[str, str], norm_eps: float, d_inner: int | None = None
) -> dict[str, Any]:
    """Mamba2 layer_kwargs from the fields `names` maps (ssmkit argument -> transformers field)."""
    kw = {ours: c[theirs] for ours, theirs in names.items() if c.get(theirs) is not None}
    if "dt_limit" in kw:
        kw["dt_limit"] = tuple(float(x) for x in kw["dt_limit"])
    kw.update(norm_eps=float(norm_eps), rmsnorm=True)
    if d_inner is not None:
        kw["d_inner"] = int(d_inner)
    return kw


def mamba2_fields(mixer, names: dict[str, str], extended: bool = False) -> dict[str, Any]:
    """The transformers fields (through `names`, ssmkit attribute -> field) of an ssmkit Mamba2.

    extended: the family writes the options only Falcon-H1 has (no gated norm or the norm before the
    gate, in_proj multipliers, out_proj's bias apart from in_proj's); the others refuse them."""
    if mixer.D_has_hdim or (not extended and not mixer.rmsnorm):
        raise ValueError("to_hf: the hybrids' Mamba-2 mixer needs rmsnorm=True and D_has_hdim=False")
    own_out_bias = (mixer.out_proj.bias is None) != (mixer.in_proj.bias is None)
    if not extended and (mixer.norm_before_gate or mixer.in_proj_multipliers is not None or own_out_bias):
        raise ValueError(
            "to_hf: this family's Mamba-2 gates before its norm, has no in_proj multipliers and one bias "
            "setting for in_proj and out_proj"
        )
    values = {
        "d_state": mixer.d_state,
        "d_conv": mixer.d_conv,
        "expand": mixer.expand,
        "headdim": mixer.headdim,
        "nheads": mixer.nheads,
        "ngroups": mixer.ngroups,
        "chunk_size": mixer.chunk_size,
        "dt_limit": list(mixer.dt_limit),
        "conv_bias": mixer.conv1d.bias is not None,
        "bias": mixer.in_proj.bias is not None,
    }
    return {theirs: values[ours] for ours, theirs in names.items() if ours in values}


def multipliers(cfg, family: str, allowed: tuple[str, ...] = ()) -> None:
    """Refuse SSMConfig multipliers the family's format has no field for."""
    for name in ("embedding_multiplier", "residual_multiplier", "logits_multiplier"):
        if name not in allowed and getattr(cfg, name) != 1.0:
            raise ValueError(f"to_hf: {family} has no counterpart of {name}={getattr(cfg, name)}")


def pattern(names: list[str]) -> str:
    """One name per layer -> a layer pattern, runs written name*count ("mamba2*3,attention,mamba2*4")."""
    runs: list[list] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ",".join(name if n == 1 else f"{name}*{n}" for name, n in runs)


def blocks_of(model, kind: str) -> list:
    """The blocks of `model` whose mixer is `kind`."""
    return [blk for blk in model.backbone.layers if blk.kind == kind]


def same_for_all(values: list, what: str, family: str):
    """The one value every layer shares; layers that differ cannot be written in one config field."""
    distinct = {repr(v): v for v in values}
    if len(distinct) > 1:
        raise ValueError(
            f"to_hf: {family} has one {what} for all layers; this model's differ: {sorted(distinct)}"
        )
    return next(iter(distinct.values())) if distinct else None
