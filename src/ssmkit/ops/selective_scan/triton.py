"""Triton tier of the selective scan: chunked forward and backward on CUDA (or on CPU tensors under
Triton's interpreter, TRITON_INTERPRET=1), plus the one-token state update used by Mamba's decoding.

The state lives in registers while a program walks its channels' sequence; within a chunk of T steps
the recurrence is an associative scan (see the kernels' docstring). What is kept for the backward is
the inputs and the state entering each chunk, (b, d, l/T, n) float32: the backward recomputes each
chunk's states from it instead of storing every step's. B and C are per group, (b, g, n, l); every
program's channels lie in one group. No `seq_idx`: the reference has none (Mamba runs packed sequences
one by one).
Kernels: ssmkit.ops.selective_scan._triton_kernels (imported on first use: no Triton at import time).
"""

from __future__ import annotations

import torch

from ssmkit.ops import _triton
from ssmkit.ops._dispatch import Backend
from ssmkit.ops._triton import empty, pow2

T_CHUNK = 32          # steps per chunk: the scan's parallel width

BACKEND = Backend(devices=("cuda",), dtypes=_triton.DTYPES, priority=30)


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    return _triton.unsupported_reason(*tensors)


def _channels_per_program(d: int, groups: int, channels_last: bool, backward: bool) -> int:
    """A power of two dividing d / groups (a program's channels share one group of B and C); wider
    for a channels-last u so that each step's loads cover whole memory sectors; narrower for the
    backward, which holds more (channels, state, steps) tiles at once."""
    per_group, most = d // groups, (8 if backward else 16) if channels_last else 4
    bd = 1
    while bd < most and per_group % (2 * bd) == 0:
        bd *= 2
    return bd


def _z(z, u):
    return z if z is not None else u            # a placeholder pointer; HAS_Z=False never reads it


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        from ssmkit.ops.selective_scan import _triton_kernels as kern

        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        bd = _channels_per_program(d, g, u.stride(1) == 1, backward=False)
        bn, T = pow2(n), T_CHUNK
        out = empty(b, d, l, dtype=u.dtype, device=u.device)
        hT = empty(b, d, n, dtype=torch.float32, device=u.device)
        save = any(ctx.needs_input_grad)
        hs = empty(b, d, -(-l // T), n, dtype=torch.float32, device=u.device) if save else None
        zz = _z(z, u)
        kern.scan_fwd[(b, d // bd)](
            u, delta, A, B, C, D, zz, delta_bias, h0, out, hT, hs, d, n, l, d // g,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(),
            *(h0.stride() if h0 is not None else (0, 0, 0)), *out.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            HAS_H0=h0 is not None, SAVE_STATES=save, BD=bd, BN=bn, T=T)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, hs)
            ctx.softplus = softplus
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        from ssmkit.ops.selective_scan import _triton_kernels as kern

        u, delta, A, B, C, D, z, delta_bias, h0, hs = ctx.saved_tensors
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        bd = _channels_per_program(d, g, u.stride(1) == 1, backward=True)
        dout = dout.contiguous()
        f32 = dict(dtype=torch.float32, device=u.device)
        du = empty(b, d, l, dtype=u.dtype, device=u.device)
        ddelta = empty(b, d, l, dtype=delta.dtype, device=u.device)
        dz = empty(b, d, l, dtype=z.dtype, device=u.device) if z is not None else None
        dB, dC = torch.zeros(b, g, n, l, **f32), torch.zeros(b, g, n, l, **f32)
        dA, dh0 = torch.zeros(d, n, **f32), empty(b, d, n, **f32)
        dD = torch.zeros(d, **f32) if D is not None else None
        dbias = torch.zeros(d, **f32) if delta_bias is not None else None
        dhT = dhT.contiguous() if dhT is not None else None
        zz = _z(z, u)
        kern.scan_bwd[(b, d // bd)](
            u, delta, A, B, C, D, zz, delta_bias, hs, dout, dhT,
            du, ddelta, dA, dB, dC, dD, dz if dz is not None else du, dbias, dh0, d, n, l, g, d // g,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *dout.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.softplus, HAS_DHT=dhT is not None, BD=bd, BN=pow2(n), T=T_CHUNK, num_warps=8)
        cast = lambda grad, like: None if like is None else grad.to(like.dtype)   # noqa: E731
        return (du, ddelta, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz, cast(dbias, delta_bias),
                cast(dh0, h0), None)


def selective_scan(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False):
    """Normalized arguments as in ssmkit.ops.selective_scan.reference (B, C: (b, g, n, l))."""
    if u.shape[-1] == 0:
        from ssmkit.ops.selective_scan import reference

        return reference.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                        delta_softplus=delta_softplus, initial_state=initial_state,
                                        return_final_state=return_final_state)
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    out, hT = _Scan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus))
    return (out, hT) if return_final_state else out
