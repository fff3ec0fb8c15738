"""RMSNorm, plain and gated-grouped (Mamba-2's `norm`: y = RMSNorm_groups(x * silu(z)) * weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._decode import numba_norm


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32 (float64 for float64 input).

    Where x^2 overflows (|x| beyond ~1e19 in float32) the mean square is formed from x / max(1, max|x|)
    (eps scaled to match), so huge inputs still normalize to their direction instead of to 0. On CPU
    that form runs only when the plain one overflowed; elsewhere always (a check would synchronize).

    With `group_size` < `d`, the mean square is taken within consecutive groups of `group_size`
    channels (Mamba-2 normalizes each of `ngroups` groups separately). `forward(x, z)` gates first:
    x * silu(z), as Mamba-2 does (norm_before_gate=False).

    A few float32 rows without gradients (decoding) take one numba kernel that forms the mean square
    in float64, where it cannot overflow (ssmkit.ops._decode.numba_norm); the code below is its reference.
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
        if z is None and self.group_size == x.shape[-1] and (fused := numba_norm(self, x)):
            kernels, weight = fused
            return kernels.rms_norm(x, weight, self.eps)
        dtype = x.dtype
        x = x.to(acc_dtype(dtype))
        if z is not None:
            x = x * F.silu(z.to(x.dtype))
        *lead, d = x.shape
        xg = x.view(*lead, d // self.group_size, self.group_size)
        ms = xg.square().mean(-1, keepdim=True)
        if xg.device.type == "cpu" and bool(torch.isfinite(ms).all()):  # the common case, one reduction
            xg = xg * torch.rsqrt(ms + self.eps)
        else:  # x^2 overflowed (or a device where checking would synchronize): the scaled form
            xg = self._scaled(xg)
        return self.weight * xg.view(*lead, d).to(dtype)

    def _scaled(self, xg: torch.Tensor) -> torch.Tensor:
        """x rsqrt(mean(x^2) + eps) = y rsqrt(mean(y^2) + eps r^2), y = x r, r = 1 / max(1, max|x|):
        |y| <= 1, so y^2 cannot overflow; r = 1 for ordinary inputs (tiny x stays x / sqrt(eps)), and
        for huge ones eps r^2 may underflow to 0 while mean(y^2) >= 1 / group_size stays positive."""
        r = torch.linalg.vector_norm(xg, float("inf"), dim=-1, keepdim=True).clamp_min(1.0).reciprocal()
        y = xg * r
        return y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps * r.square())

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"
