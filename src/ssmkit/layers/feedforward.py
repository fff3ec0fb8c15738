"""Blocks whose only sublayer is a channel MLP: the "mlp" and "moe" mixers.

Some hybrids interleave blocks that mix tokens (Mamba, attention) with blocks that only transform
each token (Nemotron-H's "-" and "E" layers: `x + mlp(norm(x))`). These mixers put an MLP or an MoE
in a block's mixer slot, so such a stack is a plain layer pattern (`layers="mamba2,mlp,attention,moe"`)
and speaks the mixer protocol like any other layer.

Glossary (code name: meaning)
    d_intermediate: hidden width of the MLP (of each expert for "moe"); default 4 * d_model
    gated:          GatedMLP (fc1 -> (y, gate), y * act(gate)) instead of the plain MLP
    other options:  those of `ssmkit.layers.mlp.MLP` / `GatedMLP` / `MoE` (activation, routing, ...)

State: {"batch": (b, 0)}: nothing is carried from token to token; the empty tensor only records the
batch size, so a State of any stack has one.
"""

from __future__ import annotations

import torch

from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.mlp import MLP, GatedMLP, MoE
from ssmkit.layers.registry import register


class _FeedForwardMixer(Mixer):
    """A token-wise module `self.ffn` in the mixer protocol: no state, no causality to keep."""

    ffn: torch.nn.Module

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        device = next(self.parameters()).device if device is None else device
        return {"batch": torch.zeros(batch_size, 0, device=device)}

    def forward(self, x: torch.Tensor, state: StateDict | None = None, return_state: bool = False):
        self._check_x(x)
        if state is not None:
            self._check_state(state, x.shape[0])
        y = self.ffn(x)
        return (y, self.init_state(x.shape[0], device=x.device)) if return_state else y

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        self._check_x_t(x_t)
        self._check_state(state, x_t.shape[0])
        return self.ffn(x_t), state


@register("mlp")
class FeedForward(_FeedForwardMixer):
    """A channel MLP as a block's mixer (Nemotron-H's "-" layers): token-wise, empty state."""

    def __init__(
        self,
        d_model: int,
        d_intermediate: int | None = None,
        gated: bool = False,
        activation: str | None = None,
        bias: bool = False,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.d_model, self.bidirectional = d_model, bidirectional  # token-wise: either direction
        d_intermediate = 4 * d_model if d_intermediate is None else d_intermediate
        act = {} if activation is None else {"activation": activation}
        mlp_cls = GatedMLP if gated else MLP
        self.ffn = mlp_cls(d_model, d_intermediate, bias=bias, **act, device=device, dtype=dtype)


@register("moe", config=("n_experts", "top_k"))
class FeedForwardMoE(_FeedForwardMixer):
    """A mixture of experts as a block's mixer (Nemotron-H's "E" layers): token-wise, empty state."""

    def __init__(
        self,
        d_model: int,
        d_intermediate: int | None = None,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **moe_options,
    ):
        super().__init__()
        self.d_model, self.bidirectional = d_model, bidirectional
        d_intermediate = 4 * d_model if d_intermediate is None else d_intermediate
        self.ffn = MoE(d_model, d_intermediate, device=device, dtype=dtype, **moe_options)
