"""`fft_conv`: a long causal convolution y = u * k + D u (S4/S4D, H3, Hyena), by FFT.

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the direct causal convolution (conv1d over every tap), O(l * l_k): the oracle.
    fft        rfft/irfft with zero padding to n >= 2l, O(l log l), plain torch.fft on any device:
               what "auto" takes.
"""

from __future__ import annotations

import torch

from ssmkit._checks import check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fft_conv(u: torch.Tensor, k: torch.Tensor, *, D: torch.Tensor | None = None, backend: str = "auto"):
    """Causal convolution of each channel of u with its kernel: y_t = sum_{s<=t} k_s u_{t-s} + D u_t.

    Args:
        u: (b, d, l) input, float16/bfloat16/float32/float64.
        k: (d, l_k) one causal kernel per channel, or (c, d, l_k) for c output channels per input
           channel (S4's `channels`). l_k < l is zero-padded (taps beyond l_k are zero); l_k > l is
           truncated to l (later taps never reach a causal output).
        D: (d,) skip for (d, l_k) kernels, (c, d) for (c, d, l_k) kernels; or None.
        backend: "auto", or a tier: "reference", "fft" (see the module docstring).
    Returns:
        y: (b, d, l) for a (d, l_k) kernel, (b, c, d, l) for a (c, d, l_k) kernel; u's dtype. The
        arithmetic runs in float32 at least (half precision is upcast). Differentiable in u, k, D.
    """
    check_tensor("u", u, ndim=3, dtypes=_FLOATS, legend="(batch, d, length)")
    b, d, l = u.shape
    if l == 0:
        raise ValueError(f"u must have length >= 1 (last dim), got shape {tuple(u.shape)}")
    check_tensor("k", k, ndim=(2, 3), dtypes=_FLOATS, legend="(d, l_k) or (channels, d, l_k)")
    multi = k.dim() == 3
    if k.shape[-2] != d or k.shape[-1] == 0:
        raise ValueError(
            f"k must have shape ({d}, l_k) or (channels, {d}, l_k) with l_k >= 1 to match u's "
            f"d={d}, got {tuple(k.shape)}"
        )
    if D is not None:
        want = (k.shape[0], d) if multi else (d,)
        check_tensor("D", D, shape=want, dtypes=_FLOATS, legend="(channels, d)" if multi else "(d,)")
    check_same_device(u=u, k=k, D=D)

    k3 = (k if multi else k[None])[..., :l]                               # (c, d, l_k <= l)
    D2 = None if D is None else (D if multi else D[None])                 # (c, d)
    fn = resolve("fft_conv", backend, u, k3, D2).fn
    y = fn(u, k3, D=D2)                                                   # (b, c, d, l)
    return y if multi else y[:, 0]


__all__ = ["fft_conv"]
