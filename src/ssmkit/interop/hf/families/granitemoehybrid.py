"""IBM Granite 4.0-H ("granitemoehybrid"): Mamba-2 and attention layers (layer_types), each followed by
a mixture of SwiGLU experts plus an always-on shared SwiGLU expert (or, with num_local_experts=0, the
shared one alone), with Granite's multipliers.

In ssmkit: mlp="moe" with mlp_kwargs {"d_shared": shared_intermediate_size} (softmax routing over
the top-k, renormalized: Mixtral's), or mlp="gated"; embedding_multiplier, residual_multiplier,
logits_multiplier = 1 / logits_scaling; attention with scale = attention_multiplier and rotary
embeddings only when position_embedding_type is "rope" (Granite 4.0-H uses none).

Weights (as written on disk, transformers' legacy MoE names): model.embed_tokens, model.layers.{i}.
{input_layernorm, mamba.* | self_attn.{q,k,v,o}_proj, post_attention_layernorm,
block_sparse_moe.{input_linear (E, 2I, d) = [gate; up], output_linear (E, d, I), router.layer},
shared_mlp.{input_linear = [gate; up], output_linear}}, model.norm, lm_head.
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.families.bamba import (
    LAYER_TYPES,
    MAMBA_DEFAULTS,
    attention_layers,
    hybrid_layers,
    mamba2_fields,
    mamba2_kwargs,
)
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.interop.hf.table import swap_halves
from ssmkit.layers.mlp import GatedMLP, MoE
from ssmkit.models.config import SSMConfig

MIXTRAL_ROUTING = dict(
    scoring="softmax", norm_topk=True, routed_scale=1.0, score_bias=None, n_group=1, d_latent=None
)


@register_family
class GraniteMoeHybrid(Family):
    model_type = "granitemoehybrid"
    hf_class = "GraniteMoeHybridForCausalLM"
    defaults = dict(
        MAMBA_DEFAULTS,
        vocab_size=32000,
        intermediate_size=11008,
        num_attention_heads=32,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=False,
        embedding_multiplier=1.0,
        logits_scaling=1.0,
        residual_multiplier=1.0,
        attention_multiplier=1.0,
        num_local_experts=8,
        num_experts_per_tok=2,
        shared_intermediate_size=1024,
        position_embedding_type=None,
    )
    ignored = (r"rotary_emb\.inv_freq$",)

    def config(self, c: dict[str, Any]) -> SSMConfig:
        family = self.model_type
        common.require(c, family, "hidden_size", "num_hidden_layers")
        common.require_act(c, "hidden_act", ("silu",), "the Mamba-2 conv and the experts share it")
        n = c["num_hidden_layers"]
        types = common.layer_types(c.get("layer_types") or ["linear_attention"] * n)
        kinds = common.check_layer_types(types, LAYER_TYPES, family)
        rope = c["position_embedding_type"] == "rope"
        fields, attn = common.attention(
            c, family, rotary=rope, partial=None if rope else 0.0, scale=c["attention_multiplier"]
        )
        if c["num_local_experts"] > 0:
            mlp = dict(
                mlp="moe",
                d_intermediate=c["intermediate_size"],
                n_experts=c["num_local_experts"],
                top_k=c["num_experts_per_tok"],
                mlp_kwargs={"moe": {"d_shared": c["shared_intermediate_size"]}},
            )
        else:
            mlp = dict(mlp="gated", d_intermediate=c["shared_intermediate_size"])
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=n,
            vocab_size=c["vocab_size"],
            layers=common.pattern(kinds),
            layer_kwargs={"mamba2": mamba2_kwargs(c, c["rms_norm_eps"]), "attention": attn},
            norm_eps=c["rms_norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
            embedding_multiplier=float(c["embedding_multiplier"]),
            residual_multiplier=float(c["residual_multiplier"]),
            logits_multiplier=1.0 / float(c["logits_scaling"]),
            **fields,
            **mlp,
        )

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("model.embed_tokens.weight")
        for blk, theirs, ours in t.hybrid_layers("post_attention_layernorm"):
            shared = ours + "mlp."
            if isinstance(blk.mlp, MoE):
                moe, shared = theirs + "block_sparse_moe.", ours + "mlp.shared."
                experts = range(blk.mlp.n_experts)
                t.stacked(
                    moe + "input_linear.weight",
                    [f"{ours}mlp.experts.{e}.fc1.weight" for e in experts],
                    swap_halves,
                )
                t.stacked(
                    moe + "output_linear.weight", [f"{ours}mlp.experts.{e}.fc2.weight" for e in experts]
                )
                t.rename(moe + "router.layer.weight", ours + "mlp.router.weight")
            t.rename(theirs + "shared_mlp.input_linear.weight", shared + "fc1.weight", swap_halves)
            t.rename(theirs + "shared_mlp.output_linear.weight", shared + "fc2.weight")
        t.rename("model.norm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        types = hybrid_layers(model, family)
        out = {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "layer_types": types,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu",
            "embedding_multiplier": cfg.embedding_multiplier,
            "residual_multiplier": cfg.residual_multiplier,
            "logits_scaling": 1.0 / cfg.logits_multiplier,
            **self._mlp_fields(model),
            **mamba2_fields(model, family),
        }
        attn = [blk.mixer for blk in model.backbone.layers if blk.kind == "attention"]
        if attn:
            m = attn[0]
            if m.rotary_dim not in (0, m.head_dim):
                raise ValueError(f"to_hf: {family} rotates whole heads or none; rotary_dim={m.rotary_dim}")
            scale = common.same_for_all(
                [a.scale or a.head_dim**-0.5 for a in attn], "attention scale", family
            )
            out.update(
                attention_layers(model, family, None),
                attention_multiplier=scale,
                position_embedding_type="rope" if m.rotary_dim else None,
            )
        return out

    def _mlp_fields(self, model) -> dict[str, Any]:
        family, mlps = self.model_type, [blk.mlp for blk in model.backbone.layers]
        if all(isinstance(m, GatedMLP) for m in mlps):
            kinds = [(m.fc2.weight.shape[1], m.activation, m.fc1.bias is None) for m in mlps]
            width, act, no_bias = common.same_for_all(kinds, "MLP", family)
            if act != "silu" or not no_bias:
                raise ValueError(f"to_hf: {family}'s MLPs are silu-gated without biases")
            return {"num_local_experts": 0, "shared_intermediate_size": width}
        if not all(isinstance(m, MoE) for m in mlps):
            raise ValueError(
                f"to_hf: every {family} block has an MoE or a SwiGLU MLP; this model's: "
                f"{model.config.mlp_types}"
            )
        kinds = []
        for m in mlps:
            routing = {k: getattr(m, k) for k in MIXTRAL_ROUTING}
            expert, shared = m.experts[0], m.shared
            if routing != MIXTRAL_ROUTING or shared is None or not isinstance(expert, GatedMLP):
                raise ValueError(
                    f"to_hf: {family}'s MoE is softmax top-k over SwiGLU experts with a shared one"
                )
            if {expert.activation, shared.activation} != {"silu"} or expert.fc1.bias is not None:
                raise ValueError(f"to_hf: {family}'s experts are silu-gated without biases")
            kinds.append((m.n_experts, m.top_k, expert.fc2.weight.shape[1], shared.fc2.weight.shape[1]))
        n, k, width, shared_width = common.same_for_all(kinds, "MoE", family)
        return {
            "num_local_experts": n,
            "num_experts_per_tok": k,
            "intermediate_size": width,
            "shared_intermediate_size": shared_width,
        }
