"""The oracle for `fft_conv`: the direct causal convolution, y_t = sum_{s<=t} k_s u_{t-s} + D u_t.

Plain `conv1d` over every tap (O(l * l_k) work), in float32 at least. Every tier takes the
normalized arguments that `ssmkit.ops.fft_conv` hands it, fft_conv(u, k, *, D=None):

    u   (b, d, l)      input, float
    k   (c, d, l_k)    causal kernel, 1 <= l_k <= l, c output channels per input channel
    D   (c, d) | None  skip
    ->  y (b, c, d, l) in u's dtype
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0, fallback=True)


def fft_conv(u: torch.Tensor, k: torch.Tensor, *, D: torch.Tensor | None = None) -> torch.Tensor:
    b, d, l = u.shape
    c, _, lk = k.shape
    real = acc_dtype(u.dtype)
    uf = F.pad(u.to(real), (lk - 1, 0))                                   # (b, d, lk-1+l): causal
    # conv1d correlates: flip the taps. Grouped by input channel d: out channel j reads group j // c.
    weight = k.to(real).flip(-1).permute(1, 0, 2).reshape(d * c, 1, lk)   # (d*c, 1, lk)
    y = F.conv1d(uf, weight, groups=d)                                    # (b, d*c, l)
    y = y.view(b, d, c, l).transpose(1, 2)                                # (b, c, d, l)
    if D is not None:
        y = y + D.to(real)[..., None] * u.to(real)[:, None]
    return y.to(u.dtype)
