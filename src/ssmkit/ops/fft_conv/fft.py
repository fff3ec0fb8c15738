"""The FFT path of `fft_conv`: causal convolution by real FFTs, O(l log l).

Zero padding to n >= l + l_k - 1 (we take the next power of two >= 2l) makes the circular
convolution of the FFT equal the linear one on the first l outputs, so nothing wraps around into
the causal part. Runs in float32 at least (half precision is upcast, the result cast back). Plain
torch.fft, so it runs on any device.

Channels go through in blocks whose spectra stay under BLOCK_BYTES, each block's output written into
the result, and the backward (a torch.autograd.Function: the correlations of the output's gradient
with k and u, by the same FFTs) reuses the spectra of u and k when they are small (SAVE_BYTES in all)
and recomputes them block by block otherwise. At long
lengths autograd's own graph held and re-allocated (b, c, d, n) spectra: tens of MB per tensor, past
glibc's 32 MiB mmap ceiling, so each was fresh memory faulted in page by page every step (a Hyena
training step at length 32768 took 45 us/token against 37 with that memory kept); blocks of a few MB
are reused from the heap and stay in cache.

Gradients: with G = rfft(dy), U = rfft(u), K = rfft(k) (each zero-padded to n),
    du = sum_c irfft(conj(K) G)[:l]      (the correlation of dy with k: taps that wrap are k's zeros)
    dk = sum_b irfft(conj(U) G)[:l_k]
    dD = sum_(b, t) dy u
Arguments as in reference.py.
"""

from __future__ import annotations

import torch

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64), priority=10)

BLOCK_BYTES = 4 << 20  # a block's largest spectrum, (b, c, block, n/2 + 1) complex
SAVE_BYTES = 128 << 20 # the spectra of u and k kept for the backward at most; beyond, recomputed


def fft_size(l: int) -> int:
    """The FFT length for inputs of length l: the next power of two >= 2l."""
    return 1 << (2 * l - 1).bit_length()


def _blocks(b: int, c: int, d: int, n: int, real: torch.dtype):
    """Channel ranges [d0, d1) whose (b, c, d1 - d0, n/2 + 1) complex spectra fit BLOCK_BYTES, as even
    as can be (64 channels that fit 63 at a time go as 32 + 32, not 63 + 1)."""
    per_channel = max(b, 1) * c * (n // 2 + 1) * 2 * torch.finfo(real).bits // 8
    blocks = -(-d // max(1, BLOCK_BYTES // per_channel))
    step = -(-d // blocks)
    return [(d0, min(d, d0 + step)) for d0 in range(0, d, step)]


class _FFTConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k, D):
        b, d, l = u.shape
        c, _, lk = k.shape
        real = acc_dtype(u.dtype)
        n = fft_size(l)
        y = u.new_empty(b, c, d, l, dtype=real)
        keep = (b + c) * d * (n // 2 + 1) * 2 * torch.finfo(real).bits // 8 <= SAVE_BYTES
        spectra = []
        for d0, d1 in _blocks(b, c, d, n, real):
            U = torch.fft.rfft(u[:, d0:d1].to(real), n=n)                          # (b, B, n/2+1)
            K = torch.fft.rfft(k[:, d0:d1].to(real), n=n)                          # (c, B, n/2+1)
            y[:, :, d0:d1] = torch.fft.irfft(U[:, None] * K, n=n)[..., :l]         # (b, c, B, l)
            if keep:
                spectra += [U, K]
        if D is not None:
            y += D.to(real)[..., None] * u.to(real)[:, None]
        ctx.save_for_backward(u, k, D, *spectra)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        u, k, D, *spectra = ctx.saved_tensors
        b, d, l = u.shape
        c, _, lk = k.shape
        real = acc_dtype(u.dtype)
        n = fft_size(l)
        dy = dy.to(real)
        need_u, need_k, need_D = ctx.needs_input_grad
        du = torch.empty(b, d, l, dtype=real, device=u.device) if need_u else None
        dk = torch.empty(c, d, lk, dtype=real, device=u.device) if need_k else None
        for i, (d0, d1) in enumerate(_blocks(b, c, d, n, real)):
            G = torch.fft.rfft(dy[:, :, d0:d1], n=n)                               # (b, c, B, n/2+1)
            if need_u:
                K = spectra[2 * i + 1] if spectra else torch.fft.rfft(k[:, d0:d1].to(real), n=n)
                du[:, d0:d1] = torch.fft.irfft((G * K.conj()).sum(1), n=n)[..., :l]
            if need_k:
                U = spectra[2 * i] if spectra else torch.fft.rfft(u[:, d0:d1].to(real), n=n)
                dk[:, d0:d1] = torch.fft.irfft((G * U.conj()[:, None]).sum(0), n=n)[..., :lk]
        dD = None
        if D is not None:
            if need_u:
                du += (D.to(real)[..., None] * dy).sum(1)
            if need_D:
                dD = (dy * u.to(real)[:, None]).sum((0, 3)).to(D.dtype)
        return (
            None if du is None else du.to(u.dtype),
            None if dk is None else dk.to(k.dtype),
            dD,
        )


def fft_conv(u: torch.Tensor, k: torch.Tensor, *, D: torch.Tensor | None = None) -> torch.Tensor:
    return _FFTConv.apply(u, k, D)
