"""RMSNorm, plain and gated-grouped (Mamba-2's `norm`: y = RMSNorm_groups(x * silu(z)) * weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._dtypes import acc_dtype


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32 (float64 for float64 input).

    The mean square is formed from x / max|x| (and eps scaled to match), so inputs far beyond the
    range where x^2 overflows (1e20 in float32) still normalize to their direction instead of to 0.

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
        x = x.to(acc_dtype(dtype))
        if z is not None:
            x = x * F.silu(z.to(x.dtype))
        *lead, d = x.shape
        xg = x.view(*lead, d // self.group_size, self.group_size)
        # x rsqrt(mean(x^2) + eps) with x = s y, s = max|x|, so mean(y^2) is in [1/g, 1]:
        #   = y rsqrt(mean(y^2) + eps / s^2)      for s > 1 (eps / s^2 cannot overflow)
        #   = y s rsqrt(s^2 mean(y^2) + eps)      for s <= 1 (s^2 cannot overflow; tiny x stays x / sqrt(eps))
        s = xg.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        y = xg / s
        ms = y.pow(2).mean(-1, keepdim=True)
        big, small = s.clamp_min(1.0), s.clamp_max(1.0)
        inv = torch.where(
            s > 1, torch.rsqrt(ms + self.eps / big.pow(2)), small * torch.rsqrt(small.pow(2) * ms + self.eps)
        )
        xg = y * inv
        return self.weight * xg.view(*lead, d).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"
