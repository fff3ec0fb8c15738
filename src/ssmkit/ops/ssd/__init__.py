"""`ssmkit.ops.ssd`: Mamba-2's scan (structured state space duality), validated once, then dispatched.

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the recurrence, one step at a time: the oracle.
    chunked    Mamba-2's chunked algorithm in PyTorch, any device.
    numba      fused CPU kernels (float32/bfloat16), forward and backward.
"auto" takes numba on CPU and chunked where numba cannot run.
"""

from __future__ import annotations

import math

import torch

from ssmkit._checks import FLOAT_DTYPES, check_positive_int, check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve

__all__ = ["ssd"]

_STATE_DTYPES = (torch.float32, torch.float64)


def _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_state, seq_idx):
    check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES, legend="(batch, length, heads, headdim)")
    b, l, h, p = x.shape
    check_tensor("dt", dt, shape=(b, l, h), dtypes=FLOAT_DTYPES, legend="(batch, length, heads)")
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"A must be real (float32), got complex dtype {str(A.dtype).replace('torch.', '')}")
    check_tensor("A", A, shape=(h,), dtypes=_STATE_DTYPES, legend="(heads,)")
    check_tensor("B", B, ndim=4, dtypes=FLOAT_DTYPES, legend="(batch, length, groups, d_state)")
    g, n = B.shape[2], B.shape[3]
    if B.shape[:2] != (b, l):
        raise ValueError(f"B must have shape ({b}, {l}, groups, d_state), got {tuple(B.shape)}")
    check_tensor("C", C, shape=(b, l, g, n), dtypes=FLOAT_DTYPES, legend="(batch, length, groups, d_state)")
    if h % g != 0:
        raise ValueError(f"ssd: groups={g} (B.shape[2]) must divide heads={h} (x.shape[2])")
    check_positive_int("chunk_size", chunk_size)
    if D is not None:
        check_tensor("D", D, ndim=(1, 2), dtypes=FLOAT_DTYPES, legend="(heads,) or (heads, headdim)")
        if tuple(D.shape) not in ((h,), (h, p)):
            raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor(
            "z", z, shape=(b, l, h, p), dtypes=FLOAT_DTYPES, legend="(batch, length, heads, headdim)"
        )
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(h,), dtypes=FLOAT_DTYPES, legend="(heads,)")
    if len(tuple(dt_limit)) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"dt_limit must be (low, high) with low <= high, got {dt_limit!r}")
    if initial_state is not None:
        check_tensor(
            "initial_state",
            initial_state,
            shape=(b, h, p, n),
            dtypes=_STATE_DTYPES,
            legend="(batch, heads, headdim, d_state)",
        )
    if seq_idx is not None:
        check_tensor(
            "seq_idx", seq_idx, shape=(b, l), dtypes=(torch.int32, torch.int64), legend="(batch, length)"
        )
        if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("seq_idx must be nondecreasing along each row (packed sequences, in order)")
    check_same_device(
        x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state, seq_idx=seq_idx
    )


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
):
    """SSD: state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T; y_t = state_t C_t + D x_t; y * silu(z).

    Args (b = batch, l = length, h = heads, p = headdim, g = groups, n = d_state):
        x: (b, l, h, p); dt: (b, l, h); A: (h,) real float32; B, C: (b, l, g, n) with h % g == 0;
        D: (h,) or (h, p); z: (b, l, h, p); dt_bias: (h,); dt_softplus: dt <- softplus(dt + dt_bias);
        dt_limit: dt is clamped to [low, high]; initial_state: (b, h, p, n) float32, differentiable;
        seq_idx: (b, l) int, nondecreasing: the state restarts from zero where it changes (packed
        sequences), so initial_state only reaches each row's first sequence.
        chunk_size: the chunked tier's chunk length (the others ignore it).
        backend: "auto", or a tier: "reference", "chunked", "numba" (see the module docstring).
    Returns out (b, l, h, p) in x's dtype, and the final state (b, h, p, n) float32 if asked.
    """
    _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_state, seq_idx)
    fn = resolve("ssd", backend, x).fn
    return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=bool(dt_softplus),
              dt_limit=(float(dt_limit[0]), float(dt_limit[1])), initial_state=initial_state, seq_idx=seq_idx,
              return_final_state=bool(return_final_state))
