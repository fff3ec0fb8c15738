"""Backbone: an embedding (or input projection), a stack of blocks from the config's layer pattern,
and a final RMSNorm.

A block is `x + mixer(norm(x))`, then, if the block has one, `x + mlp(norm2(x))` (its kind from
cfg.mlp_types). A block that uses a shared transformer block (cfg.shared_layers, Zamba2's) reads
`norm(x + t)` instead, t the shared block's output for this use (`ssmkit.models.shared`); the
backbone owns the shared blocks, the block its use's adapters. The residual stream x stays in
float32 (cfg.residual_in_fp32) whatever the parameter dtype; each sublayer reads a normalized copy
cast to the parameter dtype. cfg.embedding_multiplier scales the embedding and
cfg.residual_multiplier each sublayer's output (both 1 by default).

Weight names are the published Mamba checkpoints' (`embedding`, `layers.{i}.mixer.*`,
`layers.{i}.norm`, `layers.{i}.norm2`, `layers.{i}.mlp.*`, `norm_f`), so that converting one is a rename.
Per-layer states travel as a list of dicts (one per block, the mixer protocol's); the heads wrap
that list in an `ssmkit.State`.

Mixers come from the layer registry (`ssmkit.layers.registry`): a block builds
`cls(d_model, **config defaults, **layer_kwargs)`, and per-call keywords given to the backbone
(seq_idx, cu_seqlens, attention_mask, S5's dt, ...) go to every mixer whose forward takes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.layers import registry
from ssmkit.layers.base import StateDict
from ssmkit.layers.mlp import MLP, GatedMLP, MoE
from ssmkit.layers.norm import RMSNorm
from ssmkit.models import shared
from ssmkit.models.config import SSMConfig


def build_mixer(cfg: SSMConfig, kind: str) -> nn.Module:
    """The mixer of one block: its registered class with the config's defaults and layer_kwargs."""
    spec = registry.get(kind)
    kwargs = {name: getattr(cfg, name) for name in spec.config}
    kwargs.update(cfg.layer_kwargs.get(kind, {}))
    if cfg.bidirectional:
        kwargs["bidirectional"] = True
    try:
        return spec.cls(cfg.d_model, **kwargs)
    except TypeError as e:
        raise TypeError(f"cannot build layer {kind!r} ({spec.cls.__name__}) with {kwargs}: {e}") from e


def build_mlp(cfg: SSMConfig, kind: str | None = None) -> nn.Module:
    """The MLP sublayer of `kind` (default cfg.mlp): its class with the config's width and mlp_kwargs."""
    kind = cfg.mlp if kind is None else kind
    kwargs = {"d_intermediate": cfg.d_intermediate}
    if kind == "moe":
        kwargs.update(n_experts=cfg.n_experts, top_k=cfg.top_k)
    kwargs.update(cfg.mlp_kwargs.get(kind, {}))
    cls = {"moe": MoE, "gated": GatedMLP, "mlp": MLP}[kind]
    try:
        return cls(cfg.d_model, **kwargs)
    except TypeError as e:
        raise TypeError(f"cannot build MLP {kind!r} ({cls.__name__}) with {kwargs}: {e}") from e


def compact(state: StateDict) -> StateDict:
    """Copy out any state tensor that is a small view of a much larger buffer.

    A final state sliced from a prefill's activations (e.g. the last d_conv-1 columns of a
    (b, channels, length) conv input) would otherwise keep the whole buffer alive: a 64k-token
    prefill would leave a "555 kB" State pinning hundreds of MB.
    """
    out = {}
    for k, v in state.items():
        need = v.numel() * v.element_size()
        out[k] = v.clone() if v.untyped_storage().nbytes() > 2 * need + 4096 else v
    return out


class Block(nn.Module):
    """residual + mixer(norm(residual)) [+ mlp(norm2(residual))]; input and output: the residual stream."""

    def __init__(self, cfg: SSMConfig, kind: str, mlp_kind: str | None = "config", uses_shared: bool = False):
        """mlp_kind: the MLP sublayer's kind, None for none; "config": cfg.mlp when d_intermediate > 0.
        uses_shared: the block reads a shared block's output (its adapters live here)."""
        super().__init__()
        self.adapter = shared.SharedAdapter(cfg.d_model, shared.options(cfg)) if uses_shared else None
        self.kind = kind
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = build_mixer(cfg, kind)
        self.call_kwargs = frozenset(registry.get(kind).call_kwargs)
        self.residual_multiplier = cfg.residual_multiplier
        if mlp_kind == "config":
            mlp_kind = cfg.mlp if cfg.d_intermediate > 0 else None
        if mlp_kind is not None:
            self.norm2 = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
            self.mlp = build_mlp(cfg, mlp_kind)
        else:
            self.norm2 = self.mlp = None

    def _add(self, residual: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(residual.dtype)
        return residual + (y if self.residual_multiplier == 1.0 else y * self.residual_multiplier)

    def _mlp(self, residual: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return residual
        dtype = self.norm2.weight.dtype
        return self._add(residual, self.mlp(self.norm2(residual).to(dtype)))

    def forward(
        self,
        residual: torch.Tensor,
        state: StateDict | None = None,
        return_state: bool = False,
        inject: torch.Tensor | None = None,
        **mixer_kwargs,
    ):
        """mixer_kwargs: per-call keywords; the ones this block's mixer takes are passed to it.
        inject: a shared block's output, added to the mixer's input only."""
        h = self._normed(residual, inject)  # (b, l, d) param dtype
        kw = {k: v for k, v in mixer_kwargs.items() if k in self.call_kwargs}
        if return_state:
            y, state = self.mixer(h, state=state, return_state=True, **kw)
        else:
            y = self.mixer(h, **kw) if state is None else self.mixer(h, state=state, **kw)
        residual = self._mlp(self._add(residual, y))
        return (residual, state) if return_state else residual

    def _normed(self, residual: torch.Tensor, inject: torch.Tensor | None) -> torch.Tensor:
        x = residual if inject is None else residual + inject.to(residual.dtype)
        return self.norm(x).to(self.norm.weight.dtype)

    def step(
        self, residual_t: torch.Tensor, state: StateDict, inject: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, StateDict]:
        if inject is None:  # the kernel of step_ (Mixer.block_step_), so that step and step_ agree exactly
            fused = self.mixer.block_step(residual_t, self.norm, self.residual_multiplier, state)
            if fused is not None:
                return self._mlp(fused[0]), fused[1]
        y, state = self.mixer.step(self._normed(residual_t, inject), state)
        return self._mlp(self._add(residual_t, y)), state

    def step_(
        self, residual_t: torch.Tensor, state: StateDict, inject: torch.Tensor | None = None
    ) -> torch.Tensor:
        """step, writing the new state into `state` (the caller owns it: Mixer.step_); the norm, mixer and
        residual add in one kernel where the mixer has one (Mixer.block_step_), the MLP after it."""
        if inject is None:
            out = self.mixer.block_step_(residual_t, self.norm, self.residual_multiplier, state)
            if out is not None:
                return self._mlp(out)
        y = self.mixer.step_(self._normed(residual_t, inject), state)
        return self._mlp(self._add(residual_t, y))


class Backbone(nn.Module):
    """Embedding (tokens) or input projection (real-valued series) -> blocks -> norm_f."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.config = cfg
        if cfg.input_dim is None:
            self.embedding = nn.Embedding(cfg.vocab_size_padded, cfg.d_model)
        else:
            self.input_proj = nn.Linear(cfg.input_dim, cfg.d_model)
        kinds = zip(cfg.layer_types, cfg.mlp_types)
        self.layers = nn.ModuleList(Block(cfg, k, m, i in cfg.shared_uses) for i, (k, m) in enumerate(kinds))
        if cfg.shared_uses:
            o = shared.options(cfg)
            blocks = (shared.SharedBlock(cfg.d_model, o) for _ in range(o["n_blocks"]))
            self.shared_blocks = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        if cfg.input_dim is None:
            nn.init.normal_(self.embedding.weight, std=cfg.initializer_range)
        if cfg.rescale_prenorm_residual:
            # GPT-2 / Mamba: each residual branch's last projection scaled by 1/sqrt(#branches)
            n_branches = cfg.n_layer + sum(m is not None for m in cfg.mlp_types)
            with torch.no_grad():
                for name, p in self.layers.named_parameters():
                    if name.endswith(("out_proj.weight", "fc2.weight")):
                        p.div_(math.sqrt(n_branches))

    @property
    def dtype(self) -> torch.dtype:
        return self.norm_f.weight.dtype

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids (b, l) or series (b, l, input_dim) -> residual stream (b, l, d_model)."""
        if self.config.input_dim is None:
            x = self.embedding(inputs)
            if self.config.embedding_multiplier != 1.0:
                x = x * self.config.embedding_multiplier
        else:
            x = self.input_proj(inputs.to(self.input_proj.weight.dtype))
        return x.float() if self.config.residual_in_fp32 else x

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[StateDict]:
        """Each mixer's empty state, then each shared block use's; dtype None lets each layer pick its
        own state dtype."""
        device = self.norm_f.weight.device if device is None else device
        kw = dict(device=device, dtype=dtype)
        mixers = [blk.mixer for blk in self.layers] + [self._shared_block(j).attention for j in self._uses()]
        return [m.init_state(batch_size, **kw) for m in mixers]

    # ---- shared blocks (Zamba2): use j of cfg.shared_uses runs shared block j % n_blocks ------------
    def _uses(self) -> range:
        return range(len(self.config.shared_uses))

    def _use_slot(self, i: int) -> int:
        """Where block i's use of a shared block keeps its state in the list of layer states."""
        return self.config.n_layer + self.config.shared_uses.index(i)

    def _shared_block(self, j: int) -> shared.SharedBlock:
        return self.shared_blocks[j % len(self.shared_blocks)]

    def _inject(self, i, blk, residual, embeddings, states, attention_mask=None, in_place=False):
        """(the shared block's output for block i, its use's new state), or (None, None) when block i
        uses none. residual, embeddings: (b, l, d_model), or (b, d_model) for one step; in_place: step_'s
        (the use's cache grows in place)."""
        if blk.adapter is None:
            return None, None
        j = self.config.shared_uses.index(i)
        s = None if states is None else states[self._use_slot(i)]
        if residual.dim() == 2:
            shared = self._shared_block(j)
            t, s = shared(residual[:, None], embeddings[:, None], blk.adapter, s, in_place=in_place)
            return t[:, 0], s
        return self._shared_block(j)(residual, embeddings, blk.adapter, s, attention_mask=attention_mask)

    def forward(
        self,
        inputs: torch.Tensor,
        states: list[StateDict] | None = None,
        return_state: bool = False,
        **mixer_kwargs,
    ):
        """inputs: (b, l) ids or (b, l, input_dim) -> hidden (b, l, d_model) after norm_f [, new states].

        mixer_kwargs: per-call keywords (seq_idx, cu_seqlens, attention_mask, dt, ...), each passed to
        the mixers whose forward takes it; one that no mixer takes raises.
        """
        self._check_mixer_kwargs(mixer_kwargs)
        residual = embeddings = self.embed(inputs)
        new_states = [{} for _ in self.config.state_layout]
        for i, blk in enumerate(self.layers):
            s = None if states is None else states[i]
            mask = mixer_kwargs.get("attention_mask")
            inject, use_state = self._inject(i, blk, residual, embeddings, states, mask)
            if use_state is not None:
                new_states[self._use_slot(i)] = use_state
            if return_state:
                residual, s = blk(residual, state=s, return_state=True, inject=inject, **mixer_kwargs)
                new_states[i] = s
            else:
                residual = blk(residual, state=s, inject=inject, **mixer_kwargs)
        hidden = self.norm_f(residual).to(self.dtype)
        return (hidden, [compact(s) for s in new_states]) if return_state else hidden

    def _check_mixer_kwargs(self, mixer_kwargs: dict) -> None:
        given = {k for k, v in mixer_kwargs.items() if v is not None}
        taken = set().union(*(blk.call_kwargs for blk in self.layers))
        if given - taken:
            raise TypeError(
                f"no layer of this model ({sorted(set(self.config.layer_types))}) takes "
                f"{sorted(given - taken)}; per-call keywords its layers take: {sorted(taken)}"
            )

    def step(self, inputs_t: torch.Tensor, states: list[StateDict]) -> tuple[torch.Tensor, list[StateDict]]:
        """One token per row: ids (b,) or series (b, input_dim) -> hidden (b, d_model), new states."""
        residual = embeddings = self.embed(inputs_t)
        new_states = list(states)
        for i, blk in enumerate(self.layers):
            inject, s = self._inject(i, blk, residual, embeddings, states)
            if s is not None:
                new_states[self._use_slot(i)] = s
            residual, new_states[i] = blk.step(residual, states[i], inject)
        return self.norm_f(residual).to(self.dtype), new_states

    def step_(self, inputs_t: torch.Tensor, states: list[StateDict]) -> torch.Tensor:
        """step, writing each layer's new state into `states` (the caller owns them: Mixer.step_)."""
        residual = embeddings = self.embed(inputs_t)
        if (out := self._stack_step_(residual, states)) is not None:
            return self.norm_f(out).to(self.dtype)
        for i, blk in enumerate(self.layers):
            inject, s = self._inject(i, blk, residual, embeddings, states, in_place=True)
            if s is not None:
                states[self._use_slot(i)].update(s)
            residual = blk.step_(residual, states[i], inject)
        return self.norm_f(residual).to(self.dtype)

    def _stack_step_(self, residual: torch.Tensor, states: list[StateDict]) -> torch.Tensor | None:
        """Every block in one kernel call (Mixer.stack_step_) where all are plain blocks of one mixer
        class (no MLP, no shared block); else None."""
        blocks = list(self.layers)
        kind = type(blocks[0].mixer)
        if any(type(b.mixer) is not kind or b.mlp is not None or b.adapter is not None for b in blocks):
            return None
        mixers, norms = [b.mixer for b in blocks], [b.norm for b in blocks]
        resmul = blocks[0].residual_multiplier
        return kind.stack_step_(mixers, norms, resmul, residual, states[: len(blocks)], self)

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the MoE load-balancing losses of the last forward (None without MoE sublayers)."""
        losses = [m.aux_loss for m in self.layers.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None
