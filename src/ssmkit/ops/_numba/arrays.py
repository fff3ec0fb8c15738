"""Tensors as numpy arrays for the kernels, without a copy where the layout allows.

`as_array`: a C-contiguous float32 array (a view, or a copy; a transposed (b, d, l) projection is
copied by `copy_transposed`, 16 channels at a time). `rows`: a (b, d, l) tensor as 2-D rows, either
channels-last (the layout every layer's projections hand the ops) or contiguous; the kernels read
both through `load_tile`, LANES channels by TILE time steps at a time, and write a result in its
input's layout (`rows_like`) through `store_tile`.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.buffers import out_tensor, poison


def as_array(t: torch.Tensor) -> np.ndarray:
    """t as a C-contiguous float32 numpy array: a view when t already is one, else a copy.

    A (b, d, l) tensor that is a transposed (b, l, d) projection (stride 1 along d, as every layer
    hands its kernels) is copied by `copy_transposed`, 16 channels at a time along l, which reads
    whole cache lines where torch's strided copy gathers one element per line.
    """
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    if t.is_contiguous():
        return t.numpy()
    out = poison(t.shape)
    copy_into(out, t)
    return out


def copy_into(dst: np.ndarray, t: torch.Tensor) -> None:
    """dst[...] = t (float32), through `copy_transposed` when t is a transposed (b, d, l) projection."""
    t = t.detach().float()
    if t.dim() == 3 and t.stride(1) == 1 and t.shape[1] > 1 and not t.is_contiguous():
        copy_transposed(t.numpy(), dst)
    else:
        dst[...] = t.numpy()


# the inference kernels (forward only, channels-last) give each job LANES channels, vectorized
# across them, and walk time in tiles of TILE steps staged in (TILE, LANES) buffers (L1/L2)
LANES = 64
TILE = 128


def rows(t: torch.Tensor) -> tuple[np.ndarray, int, bool]:
    """A (b, d, l) tensor as a 2-D C-contiguous float32 array, without a copy where the layout allows.

    Returns (arr, col0, channels_last):
      channels_last: arr is (b*l, W) and t[i, c, s] = arr[i*l + s, col0 + c] (rows of time steps);
        a transposed (b, l, d) projection, also a column slice of a wider one (W > d, as the gate z
        and the conv input are halves of in_proj's output), comes this way as a view;
      else: arr is (b*d, l) and t[i, c, s] = arr[i*d + c, s], col0 = 0 (a contiguous (b, d, l)).
    Any other layout is copied to channels-last first. The kernels read both forms with `load_tile`.
    """
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    b, d, l = t.shape
    if t.is_contiguous():
        return t.numpy().reshape(b * d, l), 0, False
    sb, sc, sl = t.stride()
    if (sc == 1 or d == 1) and sl >= d and (sb == l * sl or b == 1):
        off = t.storage_offset()
        col0 = min(off, sl - d)
        if off - col0 + b * l * sl <= t.untyped_storage().nbytes() // 4:
            flat = torch.as_strided(t, (b * l, sl), (sl, 1), off - col0)
            return flat.numpy(), col0, True
    return t.transpose(1, 2).contiguous().numpy().reshape(b * l, d), 0, True


def rows_like(r: tuple[np.ndarray, int, bool], b: int, d: int, L: int) -> tuple[torch.Tensor, np.ndarray]:
    """A new (b, d, l) float32 tensor in the layout `rows` gave as r (channels-last or contiguous), and
    its 2-D array for `store_tile`: a gradient in its input's layout, so neither side copies."""
    if r[2]:
        t = out_tensor((b, L, d))
        return t.transpose(1, 2), t.numpy().reshape(b * L, d)
    t = out_tensor((b, d, L))
    return t, t.numpy().reshape(b * d, L)


@njit(inline="always")
def load_tile(src, col0, cl, i, d, L, c0, cb, t0, tl, buf):
    """buf[s, c] = x[i, c0 + c, t0 + s] for s < tl, c < cb, x given as `rows` gives it.

    Each row is sliced first and indexed by the loop variable alone, so numba drops its negative-index
    check, which a computed index (col0 + c0 + c) would keep inside this short loop.
    """
    if cl:
        for s in range(tl):
            seg = src[i * L + t0 + s, col0 + c0: col0 + c0 + cb]
            for c in range(cb):
                buf[s, c] = seg[c]
    else:
        for c in range(cb):
            seg = src[i * d + c0 + c, t0: t0 + tl]
            for s in range(tl):
                buf[s, c] = seg[s]


@njit(inline="always")
def store_tile(dst, cl, i, d, L, c0, cb, t0, tl, buf):
    """x[i, c0 + c, t0 + s] = buf[s, c] for s < tl, c < cb; dst is x channels-last (b*l, d) if cl, else
    contiguous rows (b*d, l): the inverse of `load_tile`."""
    if cl:
        for s in range(tl):
            seg = dst[i * L + t0 + s, c0: c0 + cb]
            for c in range(cb):
                seg[c] = buf[s, c]
    else:
        for c in range(cb):
            seg = dst[i * d + c0 + c, t0: t0 + tl]
            for s in range(tl):
                seg[s] = buf[s, c]


@njit(parallel=True)
def copy_transposed(src, dst):
    # dst[i, c, t] = src[i, c, t] for src strided along t: a block of 16 channels reads whole
    # cache lines of src and writes 16 rows of dst
    b, d, L = src.shape
    nblk = (d + 15) // 16
    for job in prange(b * nblk):
        i = job // nblk
        c0 = (job % nblk) * 16
        c1 = min(d, c0 + 16)
        for t in range(L):
            for c in range(c0, c1):
                dst[i, c, t] = src[i, c, t]
