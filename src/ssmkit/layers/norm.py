"""RMSNorm, plain and gated-grouped (Mamba-2's `norm`: y = RMSNorm_groups(x * silu(z)) * weight)."""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._decode import NORM_ELEMENTS, numba_norm
from ssmkit.ops._dispatch import ENV

_NUMBA = importlib.util.find_spec("numba") is not None


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32 (float64 for float64 input).

    Where x^2 overflows (|x| beyond ~1e19 in float32) the mean square is formed from x / max(1, max|x|)
    (eps scaled to match), so huge inputs still normalize to their direction instead of to 0. On CPU
    that form runs only when the plain one overflowed; elsewhere always (a check would synchronize).

    With `group_size` < `d`, the mean square is taken within consecutive groups of `group_size`
    channels (Mamba-2 normalizes each of `ngroups` groups separately). `forward(x, z)` gates first:
    x * silu(z), as Mamba-2 does (norm_before_gate=False).

    `forward(x, z, gate_after=True)` gates the normalized output instead: RMSNorm_groups(x) * weight *
    silu(z) (Mamba-2's norm_before_gate).

    float32 CPU inputs take numba kernels that form the mean square in float64, where it cannot
    overflow: without gradients, a few rows (decoding) ssmkit.ops._decode.numba_norm; more rows one
    parallel pass per row, gate included, forward and (training) backward (ssmkit.ops._numba.norm; not
    under SSMKIT_BACKEND=reference or chunked). `reference` below is what they are tested against.
    """

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        group_size = d if group_size is None else group_size
        if d % group_size != 0:
            raise ValueError(f"RMSNorm: d={d} must be divisible by group_size={group_size}")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, gate_after: bool = False):
        if z is None and self.group_size == x.shape[-1] and (fused := numba_norm(self, x)):
            kernels, weight = fused
            return kernels.rms_norm(x, weight, self.eps)
        if (kernel := self._rows_kernel(x, z)) is not None:
            from ssmkit.ops._numba import norm

            fn = norm.rms_norm_rows_grad if kernel == "grad" else norm.rms_norm_rows
            return fn(x, z, self.weight, self.eps, self.group_size, gate_after)
        return self.reference(x, z, gate_after)

    def _rows_kernel(self, x: torch.Tensor, z: torch.Tensor | None) -> str | None:
        """Whether (x, z) takes the numba kernels of many rows (see the class docstring): "grad" when a
        gradient is wanted, "prefill" when not, None for the reference."""
        tensors = (x, self.weight) if z is None else (x, z, self.weight)
        if not (
            _NUMBA
            and x.numel() > NORM_ELEMENTS
            and (z is None or z.shape == x.shape)
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and os.environ.get(ENV, "auto") not in ("reference", "chunked")
        ):
            return None
        return "grad" if torch.is_grad_enabled() and any(t.requires_grad for t in tensors) else "prefill"

    def reference(self, x: torch.Tensor, z: torch.Tensor | None = None, gate_after: bool = False):
        """The PyTorch form (any device and dtype, differentiable)."""
        if gate_after:
            y = self.reference(x)
            return y * F.silu(z.to(y.dtype))
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
