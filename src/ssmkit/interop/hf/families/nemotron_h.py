"""NVIDIA Nemotron-H ("nemotron_h": Nemotron-H, Nemotron Nano 2, Nemotron 3): every block is ONE
sublayer after an RMSNorm, chosen per layer by hybrid_override_pattern / layers_block_type:
"M" Mamba-2, "*" attention (no positional encoding), "-" a squared-ReLU MLP, "E" a mixture of
squared-ReLU experts with DeepSeek-V3 routing (sigmoid scores, a selection bias, group-limited
choice, routed_scaling_factor), a shared expert and an optional latent projection.

In ssmkit: the layer pattern over "mamba2", "attention" (rotary_dim=0), "mlp" and "moe" (the
feed-forward mixers), no MLP sublayers; the Mamba-2 width is mamba_num_heads * mamba_head_dim
(Mamba2's d_inner), and its dt is clamped to time_step_limit, as NVIDIA's published code and
transformers >= 5.25 do (transformers <= 5.24 clamped at (time_step_min, inf), which Nemotron's configs
did not ask for: huggingface/transformers#48989).

Weights: backbone.embeddings, backbone.layers.{i}.norm, backbone.layers.{i}.mixer.{Mamba-2 names |
{q,k,v,o}_proj | up_proj, down_proj | gate.weight, gate.e_score_correction_bias,
experts.{e}.{up,down}_proj, shared_experts.{up,down}_proj, fc{1,2}_latent_proj}, backbone.norm_f,
lm_head (always its own: transformers never ties it, even with tie_word_embeddings=true).
Checkpoints with model.* keys or stacked (E, ...) experts are read too; mtp.* (multi-token
prediction heads) are skipped, as transformers does.
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.layers.mlp import MLP
from ssmkit.models.config import SSMConfig

PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
LAYER_TYPES = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}
# transformers reads these older names of the Mamba fields (NemotronHConfig.__post_init__)
ALIASES = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
}
MAMBA_FIELDS = {
    "d_state": "ssm_state_size",
    "d_conv": "conv_kernel",
    "headdim": "mamba_head_dim",
    "ngroups": "n_groups",
    "chunk_size": "chunk_size",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
}


@register_family
class NemotronH(Family):
    model_type = "nemotron_h"
    hf_class = "NemotronHForCausalLM"
    defaults = dict(
        vocab_size=131072,
        tie_word_embeddings=False,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=21504,
        mlp_hidden_act="relu2",
        mlp_bias=False,
        ssm_state_size=128,
        mamba_num_heads=128,
        mamba_head_dim=64,
        mamba_hidden_act="silu",
        n_groups=8,
        conv_kernel=4,
        time_step_min=0.001,
        time_step_limit=(0.0, float("inf")),
        use_conv_bias=True,
        chunk_size=128,
        use_bias=False,
        n_routed_experts=8,
        moe_intermediate_size=7688,
        moe_shared_expert_intermediate_size=7688,
        moe_latent_size=None,
        num_experts_per_tok=2,
        routed_scaling_factor=1.0,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=False,
    )
    ignored = (r"^mtp\.",)

    def config(self, c: dict[str, Any]) -> SSMConfig:
        family = self.model_type
        c = {**c, **{new: c[old] for old, new in ALIASES.items() if old in c}}
        common.require(c, family, "hidden_size")
        common.require_act(c, "mamba_hidden_act", ("silu",), "the Mamba-2 conv's")
        act = common.require_act(c, "mlp_hidden_act", ("relu2", "relu", "silu", "gelu"))
        if c.get("layers_block_type"):
            types = common.layer_types(c["layers_block_type"])
        elif c.get("hybrid_override_pattern"):
            types = [PATTERN.get(ch, ch) for ch in c["hybrid_override_pattern"]]
        else:
            raise ValueError(
                f"from_hf: the {family} config has neither layers_block_type nor hybrid_override_pattern"
            )
        kinds = common.check_layer_types(types, LAYER_TYPES, family)
        fields, attn = common.attention(c, family, rotary=False)
        attn["bias"] = False  # transformers' NemotronHAttention has no biases, whatever attention_bias says
        mamba = common.mamba2(
            c, MAMBA_FIELDS, c["layer_norm_epsilon"], d_inner=c["mamba_num_heads"] * c["mamba_head_dim"]
        )
        mamba["dt_limit"] = tuple(float(x) for x in c["time_step_limit"])
        layer_kwargs = {
            "mamba2": mamba,
            "attention": attn,
            "mlp": {"d_intermediate": c["intermediate_size"], "activation": act, "bias": bool(c["mlp_bias"])},
        }
        if "moe" in kinds:
            layer_kwargs["moe"] = self._moe_kwargs(c, act)
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=len(kinds),
            vocab_size=c["vocab_size"],
            layers=common.pattern(kinds),
            layer_kwargs=layer_kwargs,
            norm_eps=c["layer_norm_epsilon"],
            residual_in_fp32=bool(c["residual_in_fp32"]),
            tie_embeddings=False,  # transformers' NemotronHForCausalLM never ties, whatever the config says
            pad_vocab_size_multiple=1,
            **fields,
        )

    def _moe_kwargs(self, c: dict[str, Any], act: str) -> dict[str, Any]:
        if c["mlp_bias"]:
            raise ValueError("from_hf: nemotron_h MoE layers with mlp_bias=true are not supported")
        return dict(
            d_intermediate=c["moe_intermediate_size"],
            n_experts=c["n_routed_experts"],
            top_k=c["num_experts_per_tok"],
            gated=False,
            activation=act,
            scoring="sigmoid",
            score_bias=True,
            n_group=c["n_group"],
            topk_group=c["topk_group"],
            norm_topk=bool(c["norm_topk_prob"]),
            routed_scale=float(c["routed_scaling_factor"]),
            d_shared=c["moe_shared_expert_intermediate_size"],
            d_latent=c["moe_latent_size"],
        )

    def prepare(self, tensors):
        """model.* keys (transformers' in-memory names) -> backbone.*; stacked experts -> one per expert."""
        out = {}
        for k, v in tensors.items():
            k = "backbone." + k[len("model.") :] if k.startswith("model.") else k
            if k.endswith(("mixer.experts.up_proj", "mixer.experts.down_proj")):
                name = k.rsplit(".", 1)[1]
                out.update((f"{k[: -len(name)]}{e}.{name}.weight", w) for e, w in enumerate(v.unbind(0)))
            else:
                out[k] = v
        return out

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("backbone.embeddings.weight")
        for i, blk in enumerate(model.backbone.layers):
            theirs = ours = f"backbone.layers.{i}."
            t.rename(theirs + "norm.weight", ours + "norm.weight")
            mixer = theirs + "mixer."
            if blk.kind == "mamba2":
                t.prefix(mixer, ours + "mixer.")
            elif blk.kind == "attention":
                t.attention(mixer, ours + "mixer.")
            elif blk.kind == "mlp":
                t.mlp(mixer, ours + "mixer.ffn.")
            else:
                self._moe_weights(t, mixer, ours + "mixer.ffn.", blk.mixer.ffn)
        t.rename("backbone.norm_f.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def _moe_weights(self, t, theirs: str, ours: str, moe) -> None:
        t.rename(theirs + "gate.weight", ours + "router.weight")
        t.rename(theirs + "gate.e_score_correction_bias", ours + "score_bias")
        for e in range(moe.n_experts):
            t.mlp(f"{theirs}experts.{e}.", f"{ours}experts.{e}.")
        t.mlp(theirs + "shared_experts.", ours + "shared.")
        if moe.d_latent is not None:
            for n in ("1", "2"):
                t.prefix(f"{theirs}fc{n}_latent_proj.", f"{ours}fc{n}_latent.")

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        names = {v: k for k, v in LAYER_TYPES.items()}
        other = sorted(set(cfg.layer_types) - set(names))
        if other or any(m is not None for m in cfg.mlp_types):
            raise ValueError(
                f"to_hf: {family} blocks are one sublayer of mamba2 / attention / mlp / moe; "
                f"this model has {other or 'MLP sublayers'}"
            )
        common.multipliers(cfg, family)
        if cfg.tie_embeddings:
            raise ValueError(f"to_hf: transformers' {family} never ties the LM head to the embedding")
        out = {
            "hidden_size": cfg.d_model,
            "layers_block_type": [names[k] for k in cfg.layer_types],
            "layer_norm_epsilon": cfg.norm_eps,
            "residual_in_fp32": cfg.residual_in_fp32,
            "mamba_hidden_act": "silu",
        }
        by_kind = {k: [b.mixer for b in model.backbone.layers if b.kind == k] for k in LAYER_TYPES.values()}
        if by_kind["mamba2"]:
            out.update(self._mamba_fields(by_kind["mamba2"], cfg))
        if by_kind["attention"]:
            fields = [common.attention_fields(m, family, 0.0) for m in by_kind["attention"]]
            if any(
                m.in_proj.bias is not None or m.scale not in (None, m.head_dim**-0.5)
                for m in by_kind["attention"]
            ):
                raise ValueError(f"to_hf: {family} attention has no biases and the scale head_dim ** -0.5")
            out.update(
                {
                    k: v
                    for k, v in common.same_for_all(fields, "attention", family).items()
                    if k not in ("rope_parameters", "attention_bias")
                }
            )
        ffns = [m.ffn for m in by_kind["mlp"]] + [m.ffn.shared for m in by_kind["moe"]]
        acts = [f.activation for f in ffns] + [m.ffn.experts[0].activation for m in by_kind["moe"]]
        if acts:
            out["mlp_hidden_act"] = common.same_for_all(acts, "MLP activation", family)
        if any(not isinstance(f, MLP) for f in ffns):
            raise ValueError(f"to_hf: {family} MLPs are not gated (up_proj, down_proj)")
        if by_kind["mlp"]:
            dense = [(m.ffn.fc2.weight.shape[1], m.ffn.fc1.bias is not None) for m in by_kind["mlp"]]
            out["intermediate_size"], out["mlp_bias"] = common.same_for_all(dense, "MLP", family)
        if by_kind["moe"]:
            out.update(self._moe_fields([m.ffn for m in by_kind["moe"]]))
        return out

    def _mamba_fields(self, mixers, cfg) -> dict[str, Any]:
        family = self.model_type
        fields = common.same_for_all(
            [common.mamba2_fields(m, MAMBA_FIELDS) for m in mixers], "Mamba-2", family
        )
        m = mixers[0]
        if m.norm.eps != cfg.norm_eps:
            raise ValueError(f"to_hf: {family}'s Mamba-2 has one norm epsilon for all")
        # time_step_min too, so that transformers <= 5.24 (which clamps there) computes the same
        low = {"time_step_min": m.dt_limit[0]} if m.dt_limit[0] > 0 else {}
        return {**fields, "mamba_num_heads": m.nheads, "time_step_limit": list(m.dt_limit), **low}

    def _moe_fields(self, moes) -> dict[str, Any]:
        family = self.model_type

        def describe(m):
            if (
                m.scoring != "sigmoid"
                or m.score_bias is None
                or m.shared is None
                or not isinstance(m.experts[0], MLP)
            ):
                raise ValueError(
                    f"to_hf: {family}'s MoE is sigmoid-routed with a selection bias, "
                    "ungated experts and a shared expert"
                )
            if m.experts[0].fc1.bias is not None:
                raise ValueError(f"to_hf: {family}'s experts have no biases")
            return dict(
                n_routed_experts=m.n_experts,
                num_experts_per_tok=m.top_k,
                moe_intermediate_size=m.experts[0].fc2.weight.shape[1],
                moe_shared_expert_intermediate_size=m.shared.fc2.weight.shape[1],
                moe_latent_size=m.d_latent,
                n_group=m.n_group,
                topk_group=m.topk_group,
                norm_topk_prob=m.norm_topk,
                routed_scaling_factor=m.routed_scale,
            )

        return common.same_for_all([describe(m) for m in moes], "MoE", family)
