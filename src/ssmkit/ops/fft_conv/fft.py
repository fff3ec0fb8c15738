"""The FFT path of `fft_conv`: causal convolution by real FFTs, O(l log l).

Zero padding to n >= l + l_k - 1 (we take the next power of two >= 2l) makes the circular
convolution of the FFT equal the linear one on the first l outputs, so nothing wraps around into
the causal part. Runs in float32 at least (half precision is upcast, the result cast back). Plain
torch.fft, so it runs on any device and autograd differentiates it. Arguments as in reference.py.
"""

from __future__ import annotations

import torch

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64), priority=10)


def fft_size(l: int) -> int:
    """The FFT length for inputs of length l: the next power of two >= 2l."""
    return 1 << (2 * l - 1).bit_length()


def fft_conv(u: torch.Tensor, k: torch.Tensor, *, D: torch.Tensor | None = None) -> torch.Tensor:
    l = u.shape[-1]
    real = acc_dtype(u.dtype)
    n = fft_size(l)
    u_f = torch.fft.rfft(u.to(real), n=n)                                 # (b, d, n//2+1)
    k_f = torch.fft.rfft(k.to(real), n=n)                                 # (c, d, n//2+1)
    y = torch.fft.irfft(u_f[:, None] * k_f, n=n)[..., :l]                 # (b, c, d, l)
    if D is not None:
        y = y + D.to(real)[..., None] * u.to(real)[:, None]
    return y.to(u.dtype)
