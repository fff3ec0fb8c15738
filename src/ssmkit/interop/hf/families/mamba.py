"""transformers' "mamba" and "mamba2": pure stacks whose mixers carry ssmkit's own parameter names.

Weights: backbone.embeddings.weight (ssmkit: backbone.embedding.weight), backbone.layers.{i}.{norm,
mixer}.*, backbone.norm_f.weight, lm_head.weight (absent when tied). transformers' embedding has
exactly vocab_size rows, so the model is built with pad_vocab_size_multiple=1.
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf.common import require, require_act
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.models.config import SSMConfig

# ssmkit Mamba / Mamba2 constructor argument <- transformers config field
MAMBA_FIELDS = {
    "d_state": "state_size",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "dt_rank": "time_step_rank",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init": "time_step_init_scheme",
    "dt_scale": "time_step_scale",
    "dt_init_floor": "time_step_floor",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
}
MAMBA2_FIELDS = {
    "d_state": "state_size",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "headdim": "head_dim",
    "ngroups": "n_groups",
    "chunk_size": "chunk_size",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init_floor": "time_step_floor",
    "dt_limit": "time_step_limit",
    "conv_bias": "use_conv_bias",
    "bias": "use_bias",
}
MAMBA_DEFAULTS = dict(
    state_size=16,
    conv_kernel=4,
    expand=2,
    use_bias=False,
    use_conv_bias=True,
    layer_norm_epsilon=1e-5,
    residual_in_fp32=True,
    time_step_rank="auto",
    hidden_act="silu",
    tie_word_embeddings=True,
)


class MambaStack(Family):
    """A pure stack of one mixer kind (`kind`) whose transformers fields are `fields`."""

    kind = "mamba"
    fields: dict[str, str] = MAMBA_FIELDS
    priority = 0
    bcdt_rms = False  # Falcon-Mamba: dt, B and C RMS-normalized in the mixer

    def config(self, c: dict[str, Any]) -> SSMConfig:
        require(c, self.model_type, "hidden_size", "num_hidden_layers", "vocab_size")
        require_act(c, "hidden_act", ("silu",), "as every Mamba")
        return SSMConfig(
            d_model=c["hidden_size"],
            n_layer=c["num_hidden_layers"],
            vocab_size=c["vocab_size"],
            layers=self.kind,
            layer_kwargs={self.kind: self.mixer_kwargs(c)},
            norm_eps=c["layer_norm_epsilon"],
            residual_in_fp32=c["residual_in_fp32"],
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,  # transformers' embedding has exactly vocab_size rows
        )

    def mixer_kwargs(self, c: dict[str, Any]) -> dict[str, Any]:
        return {ours: c[theirs] for ours, theirs in self.fields.items() if theirs in c}

    def weights(self, model, c):
        t = self.table(model)
        t.embedding("backbone.embeddings.weight")
        for i in range(model.config.n_layer):
            t.prefix(f"backbone.layers.{i}.", f"backbone.layers.{i}.")
        t.rename("backbone.norm_f.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        c: SSMConfig = model.config
        if set(c.layer_types) != {self.kind}:
            raise ValueError(
                f"to_hf: transformers holds pure Mamba or Mamba-2 stacks; this model's layers are "
                f"{c.layers!r}"
            )
        if any(m is not None for m in c.mlp_types):
            raise ValueError(
                f"to_hf: transformers' {self.hf_class} has no MLP sublayer (mlp {c.mlp_types[0]!r})"
            )
        multipliers = (c.embedding_multiplier, c.residual_multiplier, c.logits_multiplier)
        if multipliers != (1.0, 1.0, 1.0):
            raise ValueError(f"to_hf: {self.hf_class} has no embedding / residual / logits multipliers")
        return {
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layer,
            "layer_norm_epsilon": c.norm_eps,
            "residual_in_fp32": c.residual_in_fp32,
            "hidden_act": "silu",
            **self.mixer_fields(model),
        }

    def mixer_fields(self, model) -> dict[str, Any]:
        m = model.backbone.layers[0].mixer
        if (m.bcdt_rms_eps is not None) != self.bcdt_rms:
            how = "do not normalize" if self.bcdt_rms else "normalize"
            raise ValueError(f"to_hf: this model's Mamba mixers {how} B, C and dt (see bcdt_rms_eps)")
        out = dict(
            state_size=m.d_state,
            conv_kernel=m.d_conv,
            expand=m.expand,
            time_step_rank=m.dt_rank,
            use_bias=m.in_proj.bias is not None,
            use_conv_bias=m.conv1d.bias is not None,
            intermediate_size=m.d_inner,
        )
        init = model.config.layer_kwargs.get(self.kind, {})  # dt init settings: no effect on the math
        for ours in ("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor"):
            if ours in init:
                out[MAMBA_FIELDS[ours]] = init[ours]
        return out


@register_family
class Mamba(MambaStack):
    model_type = "mamba"
    hf_class = "MambaForCausalLM"
    defaults = MAMBA_DEFAULTS


@register_family
class Mamba2(MambaStack):
    model_type = "mamba2"
    hf_class = "Mamba2ForCausalLM"
    kind = "mamba2"
    fields = MAMBA2_FIELDS
    defaults = dict(
        MAMBA_DEFAULTS,
        state_size=128,
        head_dim=64,
        n_groups=8,
        chunk_size=256,
        time_step_limit=(0.0, float("inf")),
        tie_word_embeddings=False,
    )

    def mixer_kwargs(self, c):
        kw = super().mixer_kwargs(c)
        kw["dt_limit"] = tuple(kw["dt_limit"])
        kw["norm_eps"] = c["layer_norm_epsilon"]
        d_inner = int(c["expand"] * c["hidden_size"])
        if "num_heads" in c and c["num_heads"] * c["head_dim"] != d_inner:
            raise ValueError(
                f"from_hf: num_heads * head_dim = {c['num_heads']} * {c['head_dim']} must equal "
                f"expand * hidden_size = {d_inner}"
            )
        return kw

    def mixer_fields(self, model):
        m = model.backbone.layers[0].mixer
        if not m.rmsnorm or m.D_has_hdim:
            raise ValueError("to_hf: transformers' Mamba2Mixer needs rmsnorm=True and D_has_hdim=False")
        if m.d_inner != m.expand * m.d_model:
            raise ValueError(f"to_hf: Mamba2Mixer's width is expand * hidden_size, not d_inner={m.d_inner}")
        if m.norm.eps != model.config.norm_eps:
            raise ValueError(
                f"to_hf: transformers uses one epsilon for every norm; the mixers' norm_eps="
                f"{m.norm.eps} differs from the config's norm_eps={model.config.norm_eps}"
            )
        return dict(
            state_size=m.d_state,
            conv_kernel=m.d_conv,
            expand=m.expand,
            head_dim=m.headdim,
            num_heads=m.nheads,
            n_groups=m.ngroups,
            chunk_size=m.chunk_size,
            time_step_limit=list(m.dt_limit),
            use_bias=m.in_proj.bias is not None,
            use_conv_bias=m.conv1d.bias is not None,
        )
