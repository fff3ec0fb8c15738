"""Triton tier of the causal convolution: forward, backward and the one-token update, on CUDA (or on CPU
tensors under Triton's interpreter, TRITON_INTERPRET=1).

The forward writes act(pre) in x's dtype and keeps nothing but its inputs; the backward recomputes
pre for the activation's derivative (one kernel, skipped without an activation), then one kernel
writes dx and the initial state's gradient and accumulates dweight and dbias. Kernel widths are any
k >= 1 (Mamba uses 2-4); `seq_idx` keeps the taps inside each packed sequence, as the reference does.
The final state (the last k-1 inputs) is sliced in PyTorch, so autograd sees it directly.
Kernels: ssmkit.ops.causal_conv1d._triton_kernels (imported on first use: no Triton at import time).
"""

from __future__ import annotations

import torch

from ssmkit.ops import _triton
from ssmkit.ops._dispatch import Backend
from ssmkit.ops._triton import empty, pow2

BD, BL = 16, 64                      # channels x positions per program

BACKEND = Backend(devices=("cuda",), dtypes=_triton.DTYPES, priority=30)


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    return _triton.unsupported_reason(*tensors)


def _strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, state, seq_idx, silu):
        from ssmkit.ops.causal_conv1d import _triton_kernels as kern

        init = state if state is not None and state.shape[-1] > 0 else None     # k = 1: no state to read
        b, d, l = x.shape
        k = weight.shape[1]
        y = empty(b, d, l, dtype=x.dtype, device=x.device)
        grid = (b, -(-d // BD), -(-l // BL))
        kern.conv_fwd[grid](x, weight, bias, init, seq_idx, None, y, d, l,
                            *x.stride(), *weight.stride(), *_strides(init, 3), *_strides(seq_idx, 2),
                            *y.stride(), K=k, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
                            HAS_SEQ=seq_idx is not None, SILU=silu, GRAD=False, BD=BD, BL=BL)
        ctx.save_for_backward(x, weight, bias, init, seq_idx)
        ctx.silu = silu
        ctx.empty_state = None if state is None or init is not None else (state.shape, state.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        from ssmkit.ops.causal_conv1d import _triton_kernels as kern

        x, weight, bias, init, seq_idx = ctx.saved_tensors
        b, d, l = x.shape
        k = weight.shape[1]
        grid = (b, -(-d // BD), -(-l // BL))
        common = dict(K=k, HAS_INIT=init is not None, HAS_SEQ=seq_idx is not None, BD=BD, BL=BL)
        dpre = dy
        if ctx.silu:
            dpre = empty(b, d, l, dtype=torch.float32, device=x.device)
            kern.conv_fwd[grid](x, weight, bias, init, seq_idx, dy, dpre, d, l,
                                *x.stride(), *weight.stride(), *_strides(init, 3), *_strides(seq_idx, 2),
                                *dpre.stride(), HAS_BIAS=bias is not None, SILU=True, GRAD=True, **common)
        dx = empty(b, d, l, dtype=x.dtype, device=x.device)
        dinit = None if init is None else empty(*init.shape, dtype=init.dtype, device=x.device)
        dw = torch.zeros(d, k, dtype=torch.float32, device=x.device)
        dbias = None if bias is None else torch.zeros(d, dtype=torch.float32, device=x.device)
        grid = (b, -(-d // BD), -(-(l + k - 1) // BL))
        kern.conv_bwd[grid](x, weight, init, seq_idx, dpre, dx, dinit, dw, dbias, d, l,
                            *x.stride(), *weight.stride(), *_strides(init, 3), *_strides(seq_idx, 2),
                            *dpre.stride(), *dx.stride(), *_strides(dinit, 3),
                            HAS_BIAS=bias is not None, **common)
        dbias = None if bias is None else dbias.to(bias.dtype)
        if ctx.empty_state is not None:
            dinit = torch.zeros(ctx.empty_state[0], dtype=ctx.empty_state[1], device=x.device)
        return dx, dw.to(weight.dtype), dbias, dinit, None, None


def causal_conv1d(x, weight, *, bias=None, initial_state=None, activation=None, return_final_state=False,
                  seq_idx=None):
    """Normalized arguments as in ssmkit.ops.causal_conv1d.reference; y and the state in x's dtype."""
    b, d, l = x.shape
    k = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None
    y = _Conv.apply(x, weight, bias, initial_state, seq_idx, activation == "silu")
    if not return_final_state:
        return y
    # the last k-1 columns of state ‖ x
    if l >= k - 1:
        final = x[..., l - (k - 1):]
    else:
        state = x.new_zeros(b, d, k - 1) if initial_state is None else initial_state.to(x.dtype)
        final = torch.cat([state[..., l:], x], dim=-1)
    return y, final.to(x.dtype)


def causal_conv1d_update(x_t, conv_state, weight, bias=None, activation=None):
    """One token: x_t (b, d), conv_state (b, d, k-1) -> (y_t (b, d), new conv_state); nothing in place."""
    from ssmkit.ops.causal_conv1d import _triton_kernels as kern

    b, d = x_t.shape
    k = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None
    y = empty(b, d, dtype=x_t.dtype, device=x_t.device)
    new = empty(b, d, k - 1, dtype=conv_state.dtype, device=x_t.device)
    block = min(pow2(d), 256)
    kern.conv_update[(b, -(-d // block))](x_t, conv_state, weight, bias, y, new, d, *x_t.stride(),
                                          *conv_state.stride(), *weight.stride(), *y.stride(), *new.stride(),
                                          K=k, HAS_BIAS=bias is not None, SILU=activation == "silu", BD=block)
    return y, new
