"""AI21 Jamba ("jamba", ai21labs/Jamba-v0.1, AI21-Jamba-*-1.5/1.6/1.7): Mamba-1 blocks and attention
blocks (every attn_layer_period-th layer from attn_layer_offset), each followed by a SwiGLU MLP or, every
expert_layer_period-th layer from expert_layer_offset, a mixture of SwiGLU experts.

In ssmkit: layers "mamba" / "attention" by the attention period, mlp_layers "gated" / "moe" by the
expert period; the Mamba mixer RMS-normalizes dt, B and C with learned weights (bcdt_rms_eps =
rms_norm_eps, bcdt_norm_weights); attention has no positional encoding (rotary_dim=0); the MoE takes
the top-k of the softmax over all experts without renormalizing them (norm_topk=False).

Weights: model.embed_tokens, model.layers.{i}.{input_layernorm, mamba.* (ssmkit's Mamba names, with
dt_layernorm, b_layernorm, c_layernorm) | self_attn.{q,k,v,o}_proj, pre_ff_layernorm,
feed_forward.{gate,up,down}_proj | feed_forward.{router, experts.{e}.{gate,up,down}_proj}},
model.final_layernorm, lm_head. Stacked experts (experts.gate_up_proj (E, 2I, d) = [gate; up],
experts.down_proj (E, d, I), transformers' in-memory layout) are read too.
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.layers.mlp import GatedMLP, MoE
from ssmkit.models.config import SSMConfig

JAMBA_ROUTING = dict(scoring="softmax", norm_topk=False, routed_scale=1.0, score_bias=None,
                     n_group=1, d_latent=None, shared=None)


def periodic(n: int, period: int, offset: int) -> list[bool]:
    """Layer i is selected when i % period == offset (Jamba's attention and expert layers)."""
    return [i % period == offset for i in range(n)]


def period_of(selected: list[bool], what: str) -> tuple[int, int]:
    """The (period, offset) that selects exactly these layers (none: a period past the last layer)."""
    n = len(selected)
    for period in range(1, n + 2):
        for offset in range(period):
            if periodic(n, period, offset) == selected:
                return period, offset
    raise ValueError(f"to_hf: Jamba's {what} layers are every k-th from an offset; these are not: {selected}")


@register_family
class Jamba(Family):
    model_type = "jamba"
    hf_class = "JambaForCausalLM"
    defaults = dict(
        vocab_size=65536,
        tie_word_embeddings=False,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        num_experts_per_tok=2,
        num_experts=16,
        expert_layer_period=2,
        expert_layer_offset=1,
        attn_layer_period=8,
        attn_layer_offset=4,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank="auto",
        mamba_conv_bias=True,
        mamba_proj_bias=False,
    )

    def config(self, c: dict[str, Any]) -> SSMConfig:
        family = self.model_type
        common.require(c, family, "hidden_size", "num_hidden_layers")
        common.require_act(c, "hidden_act", ("silu",), "the Mamba conv and the MLP gate share it")
        n = c["num_hidden_layers"]
        attn = periodic(n, c["attn_layer_period"], c["attn_layer_offset"])
        moe = periodic(n, c["expert_layer_period"], c["expert_layer_offset"])
        moe = moe if c["num_experts"] > 1 else [False] * n
        fields, attn_kw = common.attention(c, family, rotary=False)
        attn_kw["bias"] = False  # JambaAttention has no biases
        mamba = dict(
            d_state=c["mamba_d_state"],
            d_conv=c["mamba_d_conv"],
            expand=c["mamba_expand"],
            dt_rank=c["mamba_dt_rank"],
            conv_bias=bool(c["mamba_conv_bias"]),
            bias=bool(c["mamba_proj_bias"]),
            bcdt_rms_eps=float(c["rms_norm_eps"]),
            bcdt_norm_weights=True,
        )
        experts = {}
        if any(moe):
            experts = dict(n_experts=c["num_experts"], top_k=c["num_experts_per_tok"],
                           mlp_kwargs={"moe": {"norm_topk": False}})
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=n,
            vocab_size=c["vocab_size"],
            layers=common.pattern(["attention" if a else "mamba" for a in attn]),
            layer_kwargs={"mamba": mamba, "attention": attn_kw},
            d_intermediate=c["intermediate_size"],
            mlp_layers=common.pattern(["moe" if m else "gated" for m in moe]),
            norm_eps=c["rms_norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
            **fields,
            **experts,
        )

    def prepare(self, tensors):
        """Stacked experts (gate_up_proj = [gate; up] per expert, down_proj) -> one tensor per expert."""
        out = {}
        for k, v in tensors.items():
            if k.endswith("feed_forward.experts.gate_up_proj"):
                for e, w in enumerate(v.unbind(0)):
                    gate, up = w.chunk(2, dim=0)
                    out[f"{k[: -len('gate_up_proj')]}{e}.gate_proj.weight"] = gate
                    out[f"{k[: -len('gate_up_proj')]}{e}.up_proj.weight"] = up
            elif k.endswith("feed_forward.experts.down_proj"):
                stem = k[: -len("down_proj")]
                out.update((f"{stem}{e}.down_proj.weight", w) for e, w in enumerate(v.unbind(0)))
            else:
                out[k] = v
        return out

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("model.embed_tokens.weight")
        for blk, theirs, ours in t.hybrid_layers("pre_ff_layernorm"):
            ff = theirs + "feed_forward."
            if isinstance(blk.mlp, MoE):
                t.rename(ff + "router.weight", ours + "mlp.router.weight")
                for e in range(blk.mlp.n_experts):
                    t.gated_mlp(f"{ff}experts.{e}.", f"{ours}mlp.experts.{e}.")
            else:
                t.gated_mlp(ff, ours + "mlp.")
        t.rename("model.final_layernorm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        if set(cfg.layer_types) - {"mamba", "attention"}:
            raise ValueError(f"to_hf: {family} holds Mamba and attention layers, not {cfg.layers!r}")
        common.multipliers(cfg, family)
        attn_period, attn_offset = period_of([k == "attention" for k in cfg.layer_types], "attention")
        out = {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "attn_layer_period": attn_period,
            "attn_layer_offset": attn_offset,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu",
            **self._mamba_fields(model),
            **self._mlp_fields(model),
        }
        attn = [blk.mixer for blk in common.blocks_of(model, "attention")]
        if attn:
            fields = [common.attention_fields(m, family, 0.0) for m in attn]
            if any(m.in_proj.bias is not None or m.scale not in (None, m.head_dim**-0.5) for m in attn):
                raise ValueError(f"to_hf: {family} attention has no biases and the scale head_dim ** -0.5")
            fields = common.same_for_all(fields, "attention", family)
            if fields["head_dim"] * fields["num_attention_heads"] != cfg.d_model:
                raise ValueError(f"to_hf: {family}'s heads are hidden_size / num_attention_heads wide")
            heads = ("num_attention_heads", "num_key_value_heads")
            out.update({k: v for k, v in fields.items() if k in heads})
        return out

    def _mamba_fields(self, model) -> dict[str, Any]:
        family, cfg = self.model_type, model.config
        mixers = [blk.mixer for blk in common.blocks_of(model, "mamba")]
        if not mixers:
            return {}

        def describe(m):
            if not m.bcdt_norm_weights or m.bcdt_rms_eps != cfg.norm_eps:
                raise ValueError(f"to_hf: {family}'s Mamba normalizes dt, B, C with weights, rms_norm_eps")
            return dict(
                mamba_d_state=m.d_state,
                mamba_d_conv=m.d_conv,
                mamba_expand=m.expand,
                mamba_dt_rank=m.dt_rank,
                mamba_conv_bias=m.conv1d.bias is not None,
                mamba_proj_bias=m.in_proj.bias is not None,
            )

        return common.same_for_all([describe(m) for m in mixers], "Mamba mixer", family)

    def _mlp_fields(self, model) -> dict[str, Any]:
        family, cfg = self.model_type, model.config
        mlps = [blk.mlp for blk in model.backbone.layers]
        moes = [m for m in mlps if isinstance(m, MoE)]
        dense = [m for m in mlps if isinstance(m, GatedMLP)]
        if len(moes) + len(dense) != len(mlps):
            raise ValueError(f"to_hf: every {family} block has a SwiGLU MLP or an MoE, not {cfg.mlp_types}")
        for m in moes:
            routing = {k: getattr(m, k) for k in JAMBA_ROUTING}
            if routing != JAMBA_ROUTING or not isinstance(m.experts[0], GatedMLP):
                raise ValueError(f"to_hf: {family}'s MoE takes the raw softmax top-k of SwiGLU experts")
        gated = dense + [e for m in moes for e in m.experts]
        width = common.same_for_all(
            [(g.fc2.weight.shape[1], g.activation, g.fc1.bias is None) for g in gated], "MLP", family
        )
        if width[1:] != ("silu", True):
            raise ValueError(f"to_hf: {family}'s MLPs are silu-gated without biases")
        out = {"intermediate_size": width[0]}
        if moes:
            period, offset = period_of([isinstance(m, MoE) for m in mlps], "expert")
            n, k = common.same_for_all([(m.n_experts, m.top_k) for m in moes], "MoE", family)
            out.update(expert_layer_period=period, expert_layer_offset=offset, num_experts=n,
                       num_experts_per_tok=k)
        else:
            out.update(num_experts=1)
        return out
