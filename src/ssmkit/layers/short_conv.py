"""Gated short convolution (LFM2's "conv" layers): in_proj -> (B, C, x); B * x through a short
depthwise causal conv; C * that -> out_proj. No recurrence beyond the conv's last inputs.

Glossary (code name: meaning)
    d_conv: kernel size of the depthwise causal conv (LFM2's conv_L_cache, 3)
    B, C:   input and output gates, each d_model wide, from in_proj (outputs ordered B, C, x)
    bias:   biases on in_proj, the conv and out_proj (LFM2's conv_bias)
Parameter names: in_proj, conv (weight (d_model, 1, d_conv)), out_proj, as transformers' Lfm2ShortConv.

State: {"conv": (b, d_model, d_conv-1)}, the last d_conv-1 conv inputs (B * x).
Variable length: pads enter the conv as zeros (like an empty state); packed sequences (seq_idx /
cu_seqlens) stop the conv at each boundary. bidirectional=True sums a second, reversed layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers.base import StateDict
from ssmkit.layers.registry import register
from ssmkit.layers.varlen import VarlenMixer, mask_conv_state
from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_update


@register("short_conv")
class ShortConv(VarlenMixer):
    """Gated short convolution (LFM2): C * conv(B * x), a state of the last d_conv-1 inputs."""

    def __init__(
        self,
        d_model: int,
        d_conv: int = 3,
        bias: bool = False,
        bidirectional: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        init_args = dict(locals())
        super().__init__()
        for name, v in (("d_model", d_model), ("d_conv", d_conv)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ShortConv: {name} must be a positive int, got {v!r}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_conv, self.backend, self.bidirectional = d_model, d_conv, backend, bidirectional
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **fk)
        self.conv = nn.Conv1d(d_model, d_model, d_conv, groups=d_model, padding=d_conv - 1, bias=bias, **fk)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **fk)
        if bidirectional:
            self._add_reverse(init_args)

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return {"conv": torch.zeros(batch_size, self.d_model, self.d_conv - 1, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token x_t (b, d_model) -> y_t (b, d_model), new state."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        B, C, x = self.in_proj(x_t).chunk(3, dim=-1)
        h, conv = causal_conv1d_update(
            B * x, state["conv"].to(x.dtype), self.conv.weight[:, 0, :], bias=self.conv.bias
        )
        return self.out_proj(C * h), {"conv": conv}

    def _forward(self, x, state, seq_idx, mask):
        B, C, u = self.in_proj(x).chunk(3, dim=-1)
        h = (B * u).transpose(1, 2)  # (b, d, l)
        if mask is not None:
            h = h * mask[:, None, :]  # pads enter the conv as zeros, like an empty state
        kw = dict(
            bias=self.conv.bias,
            initial_state=None if state is None else state["conv"].to(h.dtype),
            return_final_state=True,
        )
        if seq_idx is not None:
            h, conv = causal_conv1d(h, self.conv.weight[:, 0, :], seq_idx=seq_idx, **kw)
            conv = mask_conv_state(conv, seq_idx)
        else:
            h, conv = causal_conv1d(h, self.conv.weight[:, 0, :], backend=self.backend, **kw)
        return self.out_proj(C * h.transpose(1, 2)), {"conv": conv}
