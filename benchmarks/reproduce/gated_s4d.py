"""The Mamba block with its selective scan (S6) swapped for a time-invariant S4D: the "Mamba
architecture, S4 layer" row of the Mamba paper's Table 1, built from ssmkit parts.

    x, z = in_proj(u)                  (b, l, 2 E d_model) -> two (b, l, E d_model)
    x = silu(causal_conv1d(x))         short depthwise convolution, as in Mamba
    y = S4D(x) * silu(z)               S4D with no activation and no output layer: the gate is silu(z)
    out = out_proj(y)

Glossary: E = expand, d_inner = E * d_model (D in Mamba's Algorithm 2). Only the full-sequence forward is
implemented (the reproduction trains and evaluates whole sequences); streaming raises.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ssmkit.layers.base import Mixer
from ssmkit.ops import causal_conv1d


class GatedS4D(Mixer):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        from ssmkit.layers import S4D

        self.d_model, d_inner = d_model, expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.ssm = S4D(d_inner, d_state=d_state, activation="identity", output=None)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x, state=None, return_state: bool = False):
        if state is not None or return_state:
            raise NotImplementedError("GatedS4D (a reproduction row) runs whole sequences only")
        self._check_x(x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)                              # (b, l, d_inner) each
        w = self.conv1d.weight[:, 0]                                          # (d_inner, d_conv)
        xs = causal_conv1d(xs.transpose(1, 2), w, bias=self.conv1d.bias, activation="silu")  # (b, d_in, l)
        y = self.ssm(xs.transpose(1, 2)) * F.silu(z)                          # (b, l, d_inner)
        return self.out_proj(y)


def swap_mixers(model: nn.Module, make) -> nn.Module:
    """Replace every block's mixer of an ssmkit model by make() (same d_model)."""
    for block in model.backbone.layers:
        block.mixer = make()
    return model
