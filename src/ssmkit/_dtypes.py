"""The dtypes that ssmkit computes in, given the dtype of the data (one definition for every module).

    acc_dtype(float16 | bfloat16 | float32) = float32, acc_dtype(float64) = float64
    complex_of(float32) = complex64, complex_of(float64) = complex128, complex_of(complex) = itself
"""

from __future__ import annotations

import torch


def acc_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """The accumulation dtype for data of `x`'s dtype (a tensor or a dtype): float64 stays float64,
    everything else (half precision, float32) accumulates in float32."""
    dtype = x.dtype if isinstance(x, torch.Tensor) else x
    return torch.float64 if dtype == torch.float64 else torch.float32


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose parts have `dtype`'s precision (float64 -> complex128, other reals ->
    complex64); a complex dtype is returned unchanged."""
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64
