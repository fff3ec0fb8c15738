"""Sequence primitives. Each op is a package whose one public function validates its input and hands
it to a tier chosen by `ssmkit.ops._dispatch`; the tiers are modules named by what they are:
reference.py (the sequential oracle, plain PyTorch), chunked.py (a chunked/parallel PyTorch form, any
device), numba.py (fused CPU kernels), fft.py (fft_conv's FFT path, any device). `backend="auto"`
picks the best tier for the inputs; a tier's name asks for it ("cpu" is an alias of "numba")."""

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
    buffers = sys.modules.get("ssmkit.ops._numba.buffers")          # not imported: nothing cached
    if buffers is not None:
        buffers.empty_cache()


__all__ = ["causal_conv1d", "empty_cache", "fft_conv", "parallel_scan", "selective_scan", "ssd"]
