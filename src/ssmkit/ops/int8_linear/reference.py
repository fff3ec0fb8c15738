"""int8_linear, the oracle: the weight dequantized (scale[:, None] * weight, in x's dtype), then F.linear.

Any device and dtype, with autograd (to x and bias). On CPU it is also the tier for prompts (many rows
of x), where one dequantized copy of the weight per call feeds a float matrix multiply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(out, in) int8 and (out,) scales -> the (out, in) weight they stand for, in `dtype`."""
    return (weight.to(torch.float32) * scale[:, None]).to(dtype)


def int8_linear(x, weight, scale, *, bias=None):
    return F.linear(x, dequantize(weight, scale, x.dtype), None if bias is None else bias.to(x.dtype))
