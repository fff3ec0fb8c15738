"""RMSNorm, plain and gated-grouped (Mamba-2's `norm`: y = RMSNorm_groups(x * silu(z)) * weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32.

    With `group_size` < `d`, the mean square is taken within consecutive groups of `group_size`
    channels (Mamba-2 normalizes each of `ngroups` groups separately). `forward(x, z)` gates first:
    x * silu(z), as Mamba-2 does (norm_before_gate=False).
    """

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        group_size = d if group_size is None else group_size
        if d % group_size != 0:
            raise ValueError(f"RMSNorm: d={d} must be divisible by group_size={group_size}")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if z is not None:
            x = x * F.silu(z.float())
        *lead, d = x.shape
        xg = x.view(*lead, d // self.group_size, self.group_size)
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xg.view(*lead, d).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"
