"""`ssmkit.ops.int8_linear`: a linear map with an int8 weight and one float32 scale per output row.

    y = x (scale[:, None] * weight)^T + bias       x (..., in) float; weight (out, in) int8; scale (out,)

Weight-only int8: the activations stay float, only the weight was rounded (ssmkit.layers.int8 makes
the int8 rows and scales). The layer holds this one int8 copy; no tier keeps another.

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the weight dequantized to x's dtype, then F.linear (any device, autograd; prompts).
    numba      a matrix-vector kernel on the int8 rows (float32 on CPU, at most numba.MAX_ROWS rows
               of x, no gradient: decoding), converting each weight to float32 as it is read.

`decode_fn(x, bias)` is the same choice for a caller whose weight and scale were checked once, when
made (ssmkit.layers.int8.Int8Linear): the numba tier's function when "auto" takes it for x, else
None. A decoded token makes ~50 of these calls; int8_linear's argument checks and tier resolution
cost ~25 us each, a tenth of the int8 weights' reading time at the 130M shapes.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from ssmkit._checks import FLOAT_DTYPES, check_same_device, check_tensor
from ssmkit.ops._dispatch import ENV, resolve, tiers

__all__ = ["decode_fn", "int8_linear"]


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """x (..., in) float; weight (out, in) int8; scale (out,) float32; bias (out,) or None;
    backend "auto", "reference" or "numba". Returns y (..., out) in x's dtype."""
    check_tensor("weight", weight, ndim=2, dtypes=(torch.int8,), legend="(out, in)")
    n_out, n_in = weight.shape
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0 or x.shape[-1] != n_in:
        raise ValueError(
            f"x must have shape (..., {n_in}) (weight is ({n_out}, {n_in})), got {tuple(x.shape)}"
        )
    check_tensor("scale", scale, shape=(n_out,), dtypes=(torch.float32,), legend="(out,)")
    if bias is not None:
        check_tensor("bias", bias, shape=(n_out,), dtypes=FLOAT_DTYPES, legend="(out,)")
    check_same_device(x=x, weight=weight, scale=scale, bias=bias)
    return resolve("int8_linear", backend, x, weight, scale, bias).fn(x, weight, scale, bias=bias)


def decode_fn(x: torch.Tensor, bias: torch.Tensor | None = None):
    """int8_linear's numba function if "auto" runs the numba tier on x and bias, else None (the weight
    and scale: int8 and float32 on x's device, checked by the caller). See the module docstring."""
    tier = _auto_numba(os.environ.get(ENV, ""))
    if tier is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() == 0:
        return None
    return tier.fn if tier.hook is None or tier.hook(x, None, None, bias) is None else None


@lru_cache
def _auto_numba(env: str):
    """The numba tier if "auto" (under SSMKIT_BACKEND=env) takes it for one float32 CPU row, else None;
    its unsupported_reason then judges each x (rows, gradients)."""
    one = (torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.int8), torch.ones(1), None)
    if resolve("int8_linear", "auto", *one).name != "numba":
        return None
    return next(t for t in tiers("int8_linear") if t.name == "numba")
