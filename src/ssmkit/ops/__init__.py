"""Sequence primitives. Each op is a package: reference.py (the oracle, plain PyTorch), cpu.py (fused
CPU kernels), triton/ (GPU kernels), and an __init__.py whose one public function validates input
and dispatches through `ssmkit.ops._dispatch` (backend="auto" | "reference" | "cpu" | "triton")."""

from ssmkit.ops.causal_conv1d import causal_conv1d
from ssmkit.ops.fft_conv import fft_conv
from ssmkit.ops.parallel_scan import parallel_scan
from ssmkit.ops.selective_scan import selective_scan
from ssmkit.ops.ssd import ssd

__all__ = ["causal_conv1d", "fft_conv", "parallel_scan", "selective_scan", "ssd"]
