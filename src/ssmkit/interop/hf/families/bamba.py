"""Bamba ("bamba", ibm-ai-platform/Bamba-9B): Mamba-2 blocks and attention blocks (the indices in
attn_layer_indices), each followed by a SwiGLU MLP.

In ssmkit: layers from attn_layer_indices ("mamba2*k,attention,..."), mlp="gated" in every block,
attention with half of each head rotating (transformers fixes partial_rotary_factor=0.5 for
Bamba), the Mamba-2 mixer of the mamba_* fields. Weights: model.embed_tokens, model.layers.{i}.
{input_layernorm, mamba.* | self_attn.{q,k,v,o}_proj, pre_ff_layernorm, feed_forward.{gate,up,down}
_proj}, model.final_layernorm, lm_head (absent when tied).
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.models.config import SSMConfig

# ssmkit Mamba2 argument <- the hybrids' mamba_* field (Bamba, Granite-4.0-H)
MAMBA_FIELDS = {
    "d_state": "mamba_d_state",
    "d_conv": "mamba_d_conv",
    "expand": "mamba_expand",
    "headdim": "mamba_d_head",
    "ngroups": "mamba_n_groups",
    "chunk_size": "mamba_chunk_size",
    "dt_limit": "time_step_limit",
    "conv_bias": "mamba_conv_bias",
    "bias": "mamba_proj_bias",
}
MAMBA_DEFAULTS = dict(
    mamba_n_heads=128,
    mamba_d_head="auto",
    mamba_n_groups=1,
    mamba_d_state=256,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=256,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    time_step_limit=(0.0, float("inf")),
)
LAYER_TYPES = {"linear_attention": "mamba2", "full_attention": "attention"}


def mamba2_kwargs(c: dict[str, Any], norm_eps: float) -> dict[str, Any]:
    """The hybrids' Mamba-2 mixer: width mamba_expand * hidden_size in mamba_n_heads heads."""
    d_inner = c["mamba_expand"] * c["hidden_size"]
    if c["mamba_d_head"] == "auto":
        c = {**c, "mamba_d_head": d_inner // c["mamba_n_heads"]}
    if c["mamba_d_head"] * c["mamba_n_heads"] != d_inner:
        raise ValueError(
            f"from_hf: mamba_n_heads * mamba_d_head = {c['mamba_n_heads']} * {c['mamba_d_head']} must equal "
            f"mamba_expand * hidden_size = {d_inner}"
        )
    return common.mamba2(c, MAMBA_FIELDS, norm_eps)


def mamba2_fields(model, family: str) -> dict[str, Any]:
    mixers = [blk.mixer for blk in common.blocks_of(model, "mamba2")]
    if not mixers:
        return {}
    fields = common.same_for_all(
        [common.mamba2_fields(m, MAMBA_FIELDS) for m in mixers], "Mamba-2 mixer", family
    )
    m = mixers[0]
    if m.d_inner != m.expand * m.d_model:
        raise ValueError(f"to_hf: {family}'s Mamba-2 width is mamba_expand * hidden_size, not {m.d_inner}")
    if m.norm.eps != model.config.norm_eps:
        raise ValueError(f"to_hf: {family} has one epsilon for every norm; the Mamba-2 norm's differs")
    return {**fields, "mamba_n_heads": m.nheads}


def attention_layers(model, family: str, rotary_factor: float | None) -> dict[str, Any]:
    mixers = [blk.mixer for blk in common.blocks_of(model, "attention")]
    fields = [common.attention_fields(m, family, rotary_factor) for m in mixers]
    return common.same_for_all(fields, "attention", family) or {}


def hybrid_layers(model, family: str) -> list[str]:
    """Per-layer transformers types of a Mamba-2 + attention stack (other layers raise)."""
    names = {v: k for k, v in LAYER_TYPES.items()}
    other = sorted(set(model.config.layer_types) - set(names))
    if other:
        raise ValueError(f"to_hf: {family} holds Mamba-2 and attention layers, not {other}")
    return [names[k] for k in model.config.layer_types]


@register_family
class Bamba(Family):
    model_type = "bamba"
    hf_class = "BambaForCausalLM"
    defaults = dict(
        MAMBA_DEFAULTS,
        vocab_size=128000,
        tie_word_embeddings=False,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
    )
    ignored = (r"rotary_emb\.inv_freq$",)
    ROTARY = 0.5  # transformers' Bamba rotates half of each attention head, whatever the config says

    def config(self, c: dict[str, Any]) -> SSMConfig:
        common.require(c, self.model_type, "hidden_size", "num_hidden_layers")
        common.require_act(c, "hidden_act", ("silu",), "the Mamba-2 conv and the MLP gate share it")
        attn = set(c.get("attn_layer_indices") or [])
        kinds = ["attention" if i in attn else "mamba2" for i in range(c["num_hidden_layers"])]
        fields, attn_kw = common.attention(c, self.model_type, partial=self.ROTARY)
        gated = {"bias": True} if c["mlp_bias"] else {}
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=c["num_hidden_layers"],
            vocab_size=c["vocab_size"],
            layers=common.pattern(kinds),
            layer_kwargs={"mamba2": mamba2_kwargs(c, c["rms_norm_eps"]), "attention": attn_kw},
            d_intermediate=c["intermediate_size"],
            mlp="gated",
            mlp_kwargs={"gated": gated} if gated else {},
            norm_eps=c["rms_norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
            **fields,
        )

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("model.embed_tokens.weight")
        for _, theirs, ours in t.hybrid_layers("pre_ff_layernorm"):
            t.gated_mlp(theirs + "feed_forward.", ours + "mlp.")
        t.rename("model.final_layernorm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        types = hybrid_layers(model, self.model_type)
        common.multipliers(cfg, self.model_type)
        mlps = [blk.mlp for blk in model.backbone.layers]
        if any(type(m).__name__ != "GatedMLP" for m in mlps):
            raise ValueError(f"to_hf: every Bamba block has a SwiGLU MLP; this model's are {cfg.mlp_types}")
        width = common.same_for_all([m.fc2.weight.shape[1] for m in mlps], "MLP width", self.model_type)
        if any(m.activation != "silu" for m in mlps):
            raise ValueError("to_hf: Bamba's MLP gate is silu (hidden_act, shared with the Mamba-2 conv)")
        bias = common.same_for_all([m.fc1.bias is not None for m in mlps], "MLP bias", self.model_type)
        attention = attention_layers(model, self.model_type, self.ROTARY)
        return {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "attn_layer_indices": [i for i, k in enumerate(types) if k == "full_attention"],
            "intermediate_size": width,
            "hidden_act": "silu",
            "mlp_bias": bias,
            "rms_norm_eps": cfg.norm_eps,
            **mamba2_fields(model, self.model_type),
            **attention,
        }
