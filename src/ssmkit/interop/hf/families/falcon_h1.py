"""TII Falcon-H1 ("falcon_h1", tiiuae/Falcon-H1-*): every block runs a Mamba-2 mixer and an attention
side by side on the same normalized input and adds both to the residual stream, then a SwiGLU MLP;
muP multipliers everywhere: on the embedding, the logits, each branch's input and output, the
Mamba-2 in_proj parts (z, x, B, C, dt), the attention keys, the MLP gate and output.

In ssmkit: layers="parallel" (branches "mamba2" and "attention" with in_multipliers ssm_in /
attention_in and out_multipliers ssm_out / attention_out); the Mamba-2 mixer of width mamba_d_ssm
with in_proj_multipliers = ssm_multipliers, its gated norm optional (mamba_rms_norm, norm before
the gate with mamba_norm_before_gate) and out_proj's bias projectors_bias; key_multiplier folded
into the attention scale (q.(m k) = m q.k); mlp_kwargs {"gated": {gate_multiplier, out_multiplier}}
from mlp_multipliers; embedding_multiplier and logits_multiplier = lm_head_multiplier.

Weights: model.embed_tokens, model.layers.{i}.{input_layernorm, mamba.* (ssmkit's Mamba2 names),
self_attn.{q,k,v,o}_proj, pre_ff_layernorm, feed_forward.{gate,up,down}_proj}, model.final_layernorm,
lm_head (absent when tied).
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.families.bamba import MAMBA_DEFAULTS, MAMBA_FIELDS
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.layers.mlp import GatedMLP
from ssmkit.models.config import SSMConfig

BRANCHES = ("mamba2", "attention")


@register_family
class FalconH1(Family):
    model_type = "falcon_h1"
    hf_class = "FalconH1ForCausalLM"
    defaults = dict(
        vocab_size=128000,
        tie_word_embeddings=False,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        **MAMBA_DEFAULTS,  # Bamba's Mamba-2 defaults, the same in FalconH1Config
        mamba_d_ssm=1024,
        mamba_norm_before_gate=True,
        mamba_rms_norm=False,
        projectors_bias=False,
        lm_head_multiplier=1.0,
        embedding_multiplier=1.0,
        mlp_multipliers=(1.0, 1.0),
        key_multiplier=1.0,
        attention_out_multiplier=1.0,
        attention_in_multiplier=1.0,
        ssm_multipliers=(1.0, 1.0, 1.0, 1.0, 1.0),
        ssm_in_multiplier=1.0,
        ssm_out_multiplier=1.0,
        attention_bias=False,
        mlp_bias=False,
    )
    ignored = (r"rotary_emb\.inv_freq$", r"mamba\.mup_vector$")

    def config(self, c: dict[str, Any]) -> SSMConfig:
        family = self.model_type
        common.require(c, family, "hidden_size", "num_hidden_layers")
        common.require_act(c, "hidden_act", ("silu",), "the Mamba-2 conv and the MLP gate share it")
        key = float(c["key_multiplier"])
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        fields, attn = common.attention(c, family, scale=None if key == 1.0 else key * head_dim**-0.5)
        gate, down = (float(m) for m in c["mlp_multipliers"])
        gated = {k: v for k, v in (("gate_multiplier", gate), ("out_multiplier", down)) if v != 1.0}
        if c["mlp_bias"]:
            gated["bias"] = True
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=c["num_hidden_layers"],
            vocab_size=c["vocab_size"],
            layers="parallel",
            layer_kwargs={"parallel": self._parallel_kwargs(c, attn)},
            d_intermediate=c["intermediate_size"],
            mlp="gated",
            mlp_kwargs={"gated": gated} if gated else {},
            norm_eps=c["rms_norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
            embedding_multiplier=float(c["embedding_multiplier"]),
            logits_multiplier=float(c["lm_head_multiplier"]),
            **fields,
        )

    def _parallel_kwargs(self, c: dict[str, Any], attn: dict[str, Any]) -> dict[str, Any]:
        d_inner = c["mamba_d_ssm"] or c["mamba_expand"] * c["hidden_size"]
        if c["mamba_d_head"] == "auto":
            c = {**c, "mamba_d_head": d_inner // c["mamba_n_heads"]}
        if c["mamba_d_head"] * c["mamba_n_heads"] != d_inner:
            raise ValueError(
                f"from_hf: mamba_n_heads * mamba_d_head = {c['mamba_n_heads']} * {c['mamba_d_head']} must "
                f"equal the Mamba-2 width {d_inner}"
            )
        mamba = common.mamba2(c, MAMBA_FIELDS, c["rms_norm_eps"], d_inner=d_inner)
        mamba.update(rmsnorm=bool(c["mamba_rms_norm"]), out_bias=bool(c["projectors_bias"]))
        if c["mamba_rms_norm"] and c["mamba_norm_before_gate"]:
            mamba["norm_before_gate"] = True
        ssm = [float(m) for m in c["ssm_multipliers"]]
        if ssm != [1.0] * 5:
            mamba["in_proj_multipliers"] = ssm
        return {
            "mixers": {"mamba2": mamba, "attention": attn},
            "in_multipliers": {"mamba2": float(c["ssm_in_multiplier"]),
                               "attention": float(c["attention_in_multiplier"])},
            "out_multipliers": {"mamba2": float(c["ssm_out_multiplier"]),
                                "attention": float(c["attention_out_multiplier"])},
        }

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("model.embed_tokens.weight")
        for i in range(model.config.n_layer):
            theirs, ours = f"model.layers.{i}.", f"backbone.layers.{i}."
            t.rename(theirs + "input_layernorm.weight", ours + "norm.weight")
            t.prefix(theirs + "mamba.", ours + "mixer.branches.mamba2.")
            t.attention(theirs + "self_attn.", ours + "mixer.branches.attention.")
            t.rename(theirs + "pre_ff_layernorm.weight", ours + "norm2.weight")
            t.gated_mlp(theirs + "feed_forward.", ours + "mlp.")
        t.rename("model.final_layernorm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        if set(cfg.layer_types) != {"parallel"}:
            raise ValueError(
                f"to_hf: every {family} block is a parallel Mamba-2 + attention, not {cfg.layers!r}"
            )
        common.multipliers(cfg, family, ("embedding_multiplier", "logits_multiplier"))
        blocks = [blk.mixer for blk in model.backbone.layers]
        if any(tuple(m.branches) != BRANCHES for m in blocks):
            raise ValueError(f"to_hf: {family}'s parallel blocks hold a Mamba-2 and an attention, in order")
        out = {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu",
            "embedding_multiplier": cfg.embedding_multiplier,
            "lm_head_multiplier": cfg.logits_multiplier,
            **common.same_for_all([self._branch_fields(m, cfg) for m in blocks], "parallel block", family),
            **self._mlp_fields(model),
        }
        return out

    def _branch_fields(self, block, cfg) -> dict[str, Any]:
        family = self.model_type
        m, a = block.branches["mamba2"], block.branches["attention"]
        if m.rmsnorm and m.norm.eps != cfg.norm_eps:
            raise ValueError(f"to_hf: {family} has one epsilon for every norm; the Mamba-2 norm's differs")
        mamba = common.mamba2_fields(m, MAMBA_FIELDS, extended=True)
        attention = common.attention_fields(a, family)
        default_scale = a.head_dim**-0.5
        rotary = a.rotary_dim / a.head_dim
        if rotary != 1.0:
            attention["rope_parameters"]["partial_rotary_factor"] = rotary
        return {
            **mamba,
            "mamba_d_ssm": m.d_inner,
            "mamba_n_heads": m.nheads,
            "mamba_rms_norm": m.rmsnorm,
            "mamba_norm_before_gate": m.norm_before_gate,
            "projectors_bias": m.out_proj.bias is not None,
            "ssm_multipliers": list(m.in_proj_multipliers or (1.0,) * 5),
            **attention,
            "key_multiplier": (a.scale or default_scale) / default_scale,
            "ssm_in_multiplier": block.in_multipliers["mamba2"],
            "ssm_out_multiplier": block.out_multipliers["mamba2"],
            "attention_in_multiplier": block.in_multipliers["attention"],
            "attention_out_multiplier": block.out_multipliers["attention"],
        }

    def _mlp_fields(self, model) -> dict[str, Any]:
        family, mlps = self.model_type, [blk.mlp for blk in model.backbone.layers]
        if not all(isinstance(m, GatedMLP) for m in mlps):
            raise ValueError(f"to_hf: every {family} block has a SwiGLU MLP, not {model.config.mlp_types}")
        kinds = [
            (m.fc2.weight.shape[1], m.activation, m.fc1.bias is not None, m.gate_multiplier, m.out_multiplier)
            for m in mlps
        ]
        width, act, bias, gate, down = common.same_for_all(kinds, "MLP", family)
        if act != "silu":
            raise ValueError(f"to_hf: {family}'s MLP gate is silu (hidden_act, shared with the Mamba-2 conv)")
        return {"intermediate_size": width, "mlp_bias": bias, "mlp_multipliers": [gate, down]}
