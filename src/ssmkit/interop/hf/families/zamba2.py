"""Zamba2 ("zamba2", Zyphra/Zamba2-1.2B ... 7B): a stack of Mamba-2 layers; the "hybrid" ones first run
a transformer block whose weights are shared (num_mem_blocks of them, round-robin over the hybrid
layers) on cat(hidden, token embeddings), with per-use LoRA adapters, and add its output, through a
per-layer linear map, to the Mamba-2 layer's input (not to the residual).

In ssmkit: layers="mamba2", shared_layers marks the hybrid ones, shared_block holds the shared
blocks' options (`ssmkit.models.shared`): attention of 2 hidden_size channels in, head_dim =
attention_head_dim, scale (head_dim / 2) ** -0.5, full rotary only with use_mem_rope; a GatedMLP of
hidden_act with adapters on its gate_up projection; q/k/v adapters with use_shared_attention_adapter.
The Mamba-2 mixer clamps dt to (time_step_min, inf), has a conv bias whatever use_conv_bias says, and
a gated RMSNorm of epsilon 1e-5.

Weights: model.embed_tokens; model.layers.{i}.{input_layernorm, mamba.*} (Mamba-2 layers) or
model.layers.{i}.{linear, mamba_decoder.{input_layernorm, mamba.*}} (hybrid layers); shared block b
under the first hybrid layer that uses it, model.layers.{f}.shared_transformer.{input_layernorm,
self_attn.{q,k,v,o}_proj, pre_ff_layernorm, feed_forward.{gate_up_proj, down_proj}}, with the
adapters of every use j of it at self_attn.linear_{q,k,v}_adapter_list.{j}.{0,1} and
feed_forward.gate_up_proj_adapter_list.{j}.{0,1}; model.final_layernorm; lm_head (absent when tied).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ssmkit.interop.hf import common
from ssmkit.interop.hf.registry import Family, register_family
from ssmkit.interop.hf.table import swap_halves
from ssmkit.models.config import SSMConfig
from ssmkit.models.shared import options

MAMBA_FIELDS = {
    "d_state": "mamba_d_state",
    "d_conv": "mamba_d_conv",
    "expand": "mamba_expand",
    "ngroups": "mamba_ngroups",
    "chunk_size": "chunk_size",
    "bias": "add_bias_linear",
}
MAMBA_NORM_EPS = 1e-5  # transformers' Zamba2RMSNormGated is built with eps=1e-5, whatever the config
ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "silu": "silu"}
TYPES = {"linear_attention": "mamba2", "hybrid": "hybrid"}  # layers_block_type -> ours
SHARED_KEY = re.compile(r"model\.layers\.(\d+)\.shared_transformer\.(.*)$")


def default_layer_types(n: int) -> list[str]:
    """transformers' layers_block_type when the config has none (Zamba2-2.7B's 54 layers)."""
    m, h = "linear_attention", "hybrid"
    types = [m] + ([m] * 5 + [h]) * 7 + [m] * 4 + [h] + [m] * 3 + [h] + [m] * 2
    if len(types) != n:
        raise ValueError(f"from_hf: a zamba2 config of {n} layers needs layers_block_type")
    return types


def first_users(uses: list[int], n_blocks: int) -> list[int]:
    """The layer under which each shared block's weights are stored: the first hybrid layer using it."""
    return [uses[b] for b in range(min(n_blocks, len(uses)))]


@register_family
class Zamba2(Family):
    model_type = "zamba2"
    hf_class = "Zamba2ForCausalLM"
    defaults = dict(
        vocab_size=32000,
        num_hidden_layers=54,
        mamba_d_state=64,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_ngroups=1,
        n_mamba_heads=8,
        chunk_size=256,
        time_step_min=0.001,
        add_bias_linear=False,
        intermediate_size=None,
        hidden_act="gelu",
        num_attention_heads=32,
        num_key_value_heads=None,
        num_mem_blocks=1,
        use_shared_attention_adapter=False,
        adapter_rank=128,
        use_mem_rope=False,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    ignored = (r"rotary_emb\.inv_freq$",)

    def config(self, c: dict[str, Any]) -> SSMConfig:
        common.require(c, self.model_type, "hidden_size")
        d, n = c["hidden_size"], c["num_hidden_layers"]
        types = common.layer_types(c.get("layers_block_type") or default_layer_types(n))
        kinds = common.check_layer_types(types, TYPES, self.model_type)
        d_inner = c["mamba_expand"] * d
        if d_inner % c["n_mamba_heads"]:
            raise ValueError(
                f"from_hf: n_mamba_heads={c['n_mamba_heads']} must divide mamba_expand * "
                f"hidden_size = {d_inner}"
            )
        mamba = common.mamba2(c, MAMBA_FIELDS, MAMBA_NORM_EPS)
        mamba.update(
            headdim=d_inner // c["n_mamba_heads"],
            conv_bias=True,
            dt_limit=(float(c["time_step_min"]), math.inf),
        )
        return SSMConfig(
            d_model=d,
            n_layer=n,
            vocab_size=c["vocab_size"],
            layers="mamba2",
            layer_kwargs={"mamba2": mamba},
            shared_layers=common.pattern(["shared" if k == "hybrid" else "none" for k in kinds]),
            shared_block=self._shared_block(c),
            norm_eps=c["rms_norm_eps"],
            residual_in_fp32=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            pad_vocab_size_multiple=1,
        )

    def _shared_block(self, c: dict[str, Any]) -> dict[str, Any]:
        n_head = c["num_attention_heads"]
        head_dim = 2 * c["hidden_size"] // n_head
        theta, _ = common.rope(c, self.model_type)
        act = common.require_act(c, "hidden_act", tuple(ACTIVATIONS))
        return {
            "n_blocks": c["num_mem_blocks"],
            "n_head": n_head,
            "n_kv_head": c["num_key_value_heads"] or n_head,
            "head_dim": head_dim,
            "rope_theta": theta,
            "rotary_dim": head_dim if c["use_mem_rope"] else 0,
            "scale": (head_dim / 2) ** -0.5,
            "d_intermediate": c["intermediate_size"] or 4 * c["hidden_size"],
            "activation": ACTIVATIONS[act],
            "mlp_bias": bool(c["add_bias_linear"]),
            "adapter_rank": c["adapter_rank"],
            "attention_adapters": bool(c["use_shared_attention_adapter"]),
            "mlp_adapters": True,
            "norm_eps": c["rms_norm_eps"],
        }

    def prepare(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint that stores every hybrid layer's copy of its shared block (tied weights written
        out): a layer whose shared_transformer tensors all equal an earlier layer's is dropped."""
        per_layer: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if m := SHARED_KEY.match(k):
                per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = v
        kept: list[dict[str, Any]] = []
        out = {k: v for k, v in tensors.items() if not SHARED_KEY.match(k)}
        for layer in sorted(per_layer):
            part = per_layer[layer]
            if any(
                part.keys() == old.keys() and all(v.equal(old[k]) for k, v in part.items()) for old in kept
            ):
                continue
            kept.append(part)
            out.update((f"model.layers.{layer}.shared_transformer.{k}", v) for k, v in part.items())
        return out

    def weights(self, model, c):
        t = self.table(model)
        cfg: SSMConfig = model.config
        o = options(cfg)
        t.embedding("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            theirs, ours = f"model.layers.{i}.", f"backbone.layers.{i}."
            if i in cfg.shared_uses:
                t.rename(theirs + "linear.weight", ours + "adapter.proj.weight")
                theirs += "mamba_decoder."
            t.rename(theirs + "input_layernorm.weight", ours + "norm.weight")
            t.prefix(theirs + "mamba.", ours + "mixer.")
        firsts = first_users(cfg.shared_uses, o["n_blocks"])
        for b, f in enumerate(firsts):
            theirs, ours = f"model.layers.{f}.shared_transformer.", f"backbone.shared_blocks.{b}."
            t.rename(theirs + "input_layernorm.weight", ours + "norm.weight")
            t.attention(theirs + "self_attn.", ours + "attention.")
            t.rename(theirs + "pre_ff_layernorm.weight", ours + "norm2.weight")
            params = ["weight"] + (["bias"] if o["mlp_bias"] else [])
            for p in params:
                t.rename(f"{theirs}feed_forward.gate_up_proj.{p}", f"{ours}mlp.fc1.{p}", swap_halves)
                t.rename(f"{theirs}feed_forward.down_proj.{p}", f"{ours}mlp.fc2.{p}")
        for j, i in enumerate(cfg.shared_uses):
            theirs = f"model.layers.{firsts[j % len(firsts)]}.shared_transformer."
            ours = f"backbone.layers.{i}.adapter."
            if o["attention_adapters"]:
                for x in "qkv":
                    for part in "01":
                        t.rename(
                            f"{theirs}self_attn.linear_{x}_adapter_list.{j}.{part}.weight",
                            f"{ours}{x}.{part}.weight",
                        )
            ff = f"{theirs}feed_forward.gate_up_proj_adapter_list.{j}."
            t.rename(ff + "0.weight", ours + "mlp.0.weight")
            t.rename(ff + "1.weight", ours + "mlp.1.weight", swap_halves)
        t.rename("model.final_layernorm.weight", "backbone.norm_f.weight")
        t.lm_head()
        return t

    def hf_config(self, model) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        family = self.model_type
        common.multipliers(cfg, family)
        if set(cfg.layer_types) != {"mamba2"} or any(m is not None for m in cfg.mlp_types):
            raise ValueError(f"to_hf: {family} holds Mamba-2 layers without MLPs (and shared blocks)")
        mixers = [blk.mixer for blk in model.backbone.layers]
        fields = common.same_for_all(
            [common.mamba2_fields(m, MAMBA_FIELDS) for m in mixers], "Mamba-2 mixer", family
        )
        m = mixers[0]
        if (
            m.d_inner != m.expand * m.d_model
            or m.conv1d.bias is None
            or m.norm.eps != MAMBA_NORM_EPS
            or m.dt_limit[1] != math.inf
        ):
            raise ValueError(
                f"to_hf: {family}'s Mamba-2 has d_inner = mamba_expand * hidden_size, a conv "
                f"bias, a norm epsilon of {MAMBA_NORM_EPS} and dt_limit (time_step_min, inf)"
            )
        return {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer,
            "layers_block_type": [
                "hybrid" if i in cfg.shared_uses else "linear_attention" for i in range(cfg.n_layer)
            ],
            "rms_norm_eps": cfg.norm_eps,
            **fields,
            "n_mamba_heads": m.nheads,
            "time_step_min": m.dt_limit[0],
            "use_conv_bias": True,
            **self._shared_fields(model, fields["add_bias_linear"]),
        }

    def _shared_fields(self, model, bias: bool) -> dict[str, Any]:
        cfg: SSMConfig = model.config
        o, family = options(cfg), self.model_type
        if not cfg.shared_uses:
            return {"num_mem_blocks": 1}
        a = model.backbone.shared_blocks[0].attention
        head_dim = 2 * cfg.d_model // a.n_head
        if not (
            o["with_embedding"]
            and o["mlp_adapters"]
            and o["mlp_bias"] == bias
            and o["norm_eps"] == cfg.norm_eps
            and a.head_dim == head_dim
            and a.scale == (head_dim / 2) ** -0.5
            and a.rotary_dim in (0, head_dim)
            and a.in_proj.bias is None
            and o["activation"] in ACTIVATIONS.values()
        ):
            raise ValueError(
                f"to_hf: {family}'s shared block reads cat(hidden, embeddings) in heads of 2 hidden_size / "
                "n_head channels, scale (head_dim / 2) ** -0.5, rotary on all or none of them, no attention "
                "bias, the mamba's bias setting in the MLP, MLP adapters, and the model's norm epsilon"
            )
        names = {v: k for k, v in reversed(ACTIVATIONS.items())}
        return {
            "num_attention_heads": a.n_head,
            "num_key_value_heads": a.n_kv_head,
            "intermediate_size": o["d_intermediate"],
            "hidden_act": names[o["activation"]],
            "num_mem_blocks": o["n_blocks"],
            "use_shared_attention_adapter": bool(o["attention_adapters"]),
            "adapter_rank": o["adapter_rank"],
            "use_mem_rope": a.rotary_dim > 0,
            "rope_parameters": {"rope_theta": a.rope_theta, "rope_type": "default"},
        }
