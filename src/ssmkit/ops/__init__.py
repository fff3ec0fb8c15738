"""Sequence primitives. Each op is a package: reference.py (the oracle, plain PyTorch), cpu.py (fused
CPU kernels), triton/ (GPU kernels), and an __init__.py whose one public function validates input
and dispatches through `ssmkit.ops._dispatch` (backend="auto" | "reference" | "cpu" | "triton")."""

import sys

from ssmkit.ops.causal_conv1d import causal_conv1d
from ssmkit.ops.fft_conv import fft_conv
from ssmkit.ops.parallel_scan import parallel_scan
from ssmkit.ops.selective_scan import selective_scan
from ssmkit.ops.ssd import ssd


def empty_cache() -> None:
    """Release the freed large outputs that the CPU kernels keep for reuse (16 MiB and up, at most
    SSMKIT_CPU_CACHE_MB idle, default 2048; 0 turns the cache off), as torch.cuda.empty_cache does
    for PyTorch's GPU memory."""
    kernels = sys.modules.get("ssmkit.ops._numba")                  # not imported: nothing cached
    if kernels is not None:
        kernels.empty_cache()


__all__ = ["causal_conv1d", "empty_cache", "fft_conv", "parallel_scan", "selective_scan", "ssd"]
