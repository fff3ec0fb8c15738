"""The FFT path of `fft_conv`: causal convolution by real FFTs, O(l log l).

Zero padding to n >= l + l_k - 1 (we take the next power of two >= 2l) makes the circular
convolution of the FFT equal the linear one on the first l outputs, so nothing wraps around into
the causal part. Runs in float32 at least (half precision is upcast, the result cast back). Plain
torch.fft, so it runs on any device and autograd differentiates it; "cpu" names the dispatch slot.
Arguments as in reference.py.
"""

from __future__ import annotations

import torch

from ssmkit.ops.fft_conv.reference import compute_dtype

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in _DTYPES:
            return f"fft_conv supports float16/bfloat16/float32/float64, got {t.dtype}"
    return None


def fft_size(l: int) -> int:
    """The FFT length for inputs of length l: the next power of two >= 2l."""
    return 1 << (2 * l - 1).bit_length()


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    l = u.shape[-1]
    real = compute_dtype(u.dtype)
    n = fft_size(l)
    u_f = torch.fft.rfft(u.to(real), n=n)                                 # (b, d, n//2+1)
    k_f = torch.fft.rfft(k.to(real), n=n)                                 # (c, d, n//2+1)
    y = torch.fft.irfft(u_f[:, None] * k_f, n=n)[..., :l]                 # (b, c, d, l)
    if D is not None:
        y = y + D.to(real)[..., None] * u.to(real)[:, None]
    return y.to(u.dtype)
