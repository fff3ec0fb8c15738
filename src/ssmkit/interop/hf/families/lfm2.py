"""Liquid AI LFM2 ("lfm2", LiquidAI/LFM2-350M ... 2.6B): gated short-convolution blocks and attention
blocks (layer_types / full_attn_idxs), each followed by a SwiGLU MLP.

In ssmkit: layers "short_conv" (ssmkit.layers.short_conv: C * conv(B * x), kernel conv_L_cache) and
"attention" with per-head q/k RMSNorms (qk_norm_eps = norm_eps), mlp="gated" of the width LFM2
derives (2/3 of intermediate_size, times block_ffn_dim_multiplier, rounded up to block_multiple_of,
when block_auto_adjust_ff_dim).

Weights: model.embed_tokens, model.layers.{i}.{operator_norm, conv.{in_proj, conv, out_proj} |
self_attn.{q,k,v}_proj, self_attn.out_proj, self_attn.{q,k}_layernorm, ffn_norm,
feed_forward.{w1 (gate), w3 (up), w2 (down)}}, model.embedding_norm (the final norm), lm_head
(absent when tied).
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.layers.mlp import GatedMLP
from ssmkit.models.config import SSMConfig

LAYER_TYPES = {"conv": "short_conv", "full_attention": "attention"}


def mlp_width(c: dict[str, Any]) -> int:
    """The width of LFM2's MLP (Lfm2MLP's rule)."""
    width = c["intermediate_size"]
    if c["block_auto_adjust_ff_dim"]:
        width = int(2 * width / 3)
        if c["block_ffn_dim_multiplier"] is not None:
            width = int(c["block_ffn_dim_multiplier"] * width)
            m = c["block_multiple_of"]
            width = m * ((width + m - 1) // m)
    return width


@register_family
class Lfm2(Family):
    model_type = "lfm2"
    hf_class = "Lfm2ForCausalLM"
    defaults = dict(
        vocab_size=65536,
        intermediate_size=12288,
        num_attention_heads=32,
        num_key_value_heads=8,
        norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        conv_bias=False,
        conv_L_cache=3,
        block_multiple_of=256,
        block_ffn_dim_multiplier=1.0,
        block_auto_adjust_ff_dim=True,
    )
    ignored = (r"rotary_emb\.inv_freq$",)

    def config(self, c: dict[str, Any]) -> SSMConfig:
        family = self.model_type
        common.require(c, family, "hidden_size", "num_hidden_layers")
        n = c["num_hidden_layers"]
        types = c.get("layer_types")
        if not types:
            attn = c.get("full_attn_idxs")
            attn = set(range(n) if attn is None else attn)
            types = ["full_attention" if i in attn else "conv" for i in range(n)]
        kinds = common.check_layer_types(types, LAYER_TYPES, family)
        fields, attn_kw = common.attention(c, family)
        attn_kw.update(bias=False, qk_norm_eps=float(c["norm_eps"]))
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=n,
            vocab_size=c["vocab_size"],
            layers=common.pattern(kinds),
            layer_kwargs={
                "short_conv": {"d_conv": c["conv_L_cache"], "bias": bool(c["conv_bias"])},
                "attention": attn_kw,
            },
            d_intermediate=mlp_width(c),
            mlp="gated",
            norm_eps=c["norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
            **fields,
        )

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("model.embed_tokens.weight")
        for i, blk in enumerate(model.backbone.layers):
            theirs, ours = f"model.layers.{i}.", f"backbone.layers.{i}."
            t.rename(theirs + "operator_norm.weight", ours + "norm.weight")
            if blk.kind == "short_conv":
                t.prefix(theirs + "conv.", ours + "mixer.")
            else:
                attn = theirs + "self_attn."
                t.attention(attn, ours + "mixer.", o="out_proj")
                t.rename(attn + "q_layernorm.weight", ours + "mixer.q_norm.weight")
                t.rename(attn + "k_layernorm.weight", ours + "mixer.k_norm.weight")
            t.rename(theirs + "ffn_norm.weight", ours + "norm2.weight")
            t.gated_mlp(theirs + "feed_forward.", ours + "mlp.", gate="w1", up="w3", down="w2")
        t.rename("model.embedding_norm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        names = {v: k for k, v in LAYER_TYPES.items()}
        other = sorted(set(cfg.layer_types) - set(names))
        if other:
            raise ValueError(f"to_hf: {family} holds short_conv and attention layers, not {other}")
        common.multipliers(cfg, family)
        out = {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "layer_types": [names[k] for k in cfg.layer_types],
            "norm_eps": cfg.norm_eps,
            "block_auto_adjust_ff_dim": False,
        }
        convs = [blk.mixer for blk in common.blocks_of(model, "short_conv")]
        if convs:
            d_conv, bias = common.same_for_all(
                [(m.d_conv, m.in_proj.bias is not None) for m in convs], "short conv", family
            )
            out.update(conv_L_cache=d_conv, conv_bias=bias)
        attn = [blk.mixer for blk in common.blocks_of(model, "attention")]
        if attn:
            if any(
                m.qk_norm_eps != cfg.norm_eps or m.in_proj.bias is not None or m.scale is not None
                for m in attn
            ):
                raise ValueError(f"to_hf: {family} attention normalizes q and k with norm_eps, no biases")
            fields = common.same_for_all(
                [common.attention_fields(m, family, 1.0) for m in attn], "attention", family
            )
            out.update({k: v for k, v in fields.items() if k != "attention_bias"})
        mlps = [blk.mlp for blk in model.backbone.layers]
        if not all(isinstance(m, GatedMLP) for m in mlps):
            raise ValueError(f"to_hf: every {family} block has a SwiGLU MLP, not {cfg.mlp_types}")
        kinds = [(m.fc2.weight.shape[1], m.activation, m.fc1.bias is None) for m in mlps]
        width, act, no_bias = common.same_for_all(kinds, "MLP", family)
        scaled = {m.gate_multiplier for m in mlps} | {m.out_multiplier for m in mlps} != {1.0}
        if act != "silu" or not no_bias or scaled:
            raise ValueError(f"to_hf: {family}'s MLPs are silu-gated without biases or multipliers")
        out["intermediate_size"] = width
        return out
