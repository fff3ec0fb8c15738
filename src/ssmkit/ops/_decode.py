"""Which fused kernels a Mamba / Mamba-2 layer's one-token `step` takes (the ops' own tiers decide).

    numba_step(op, backend, *tensors) -> ssmkit.ops._numba.decode, or None
    numba_norm(*tensors) -> ssmkit.ops._numba.decode (for its rms_norm), or None
    ssmkit.ops._triton.decode.fused_step(op, backend, x) -> bool (CUDA)

The numba decode kernels run when the op ("selective_scan" for Mamba, "ssd" for Mamba-2) would take
its numba tier for these tensors (CPU under "auto", or backend="numba"), every tensor is float32, and
no gradient is wanted (they have no backward): inference on CPU. Elsewhere the layer's unfused step
runs the ops at length 1 (the reference the kernels are tested against). Importing this module does
not import numba. RMSNorm takes the kernel for inputs of at most NORM_ELEMENTS elements (decoding:
a few rows, where its ~17 small PyTorch operations cost more than the arithmetic), float32 on CPU,
without gradients, when numba is installed.
"""

from __future__ import annotations

import torch

NORM_ELEMENTS = 1 << 14
_numba_missing: list[bool] = []


def _inference_f32(tensors) -> bool:
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _kernels():
    if _numba_missing:
        return None
    try:
        from ssmkit.ops._numba import decode
    except ImportError:  # numba not installed: the reference paths
        _numba_missing.append(True)
        return None
    return decode


def numba_step(op: str, backend: str, *tensors: torch.Tensor):
    """The numba decode kernels module if a step over `tensors` should run them, else None."""
    from ssmkit.ops._dispatch import resolve

    if not _inference_f32(tensors) or resolve(op, backend, tensors[0]).name != "numba":
        return None
    return _kernels()


def numba_norm(x: torch.Tensor, weight: torch.Tensor):
    """The numba decode kernels module if RMSNorm of x should run its `rms_norm`, else None."""
    if x.numel() > NORM_ELEMENTS or not _inference_f32((x, weight)):
        return None
    return _kernels()
