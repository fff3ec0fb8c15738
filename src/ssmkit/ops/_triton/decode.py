"""One decoding step of the Mamba and Mamba-2 mixers in Triton, for the layers' `step`.

    Mamba:   conv update (ssmkit.ops.causal_conv1d.triton) -> x_proj, dt_proj (PyTorch matmuls) ->
             `selective_state_update`: softplus(delta + bias), state update, C h + D u, gate.
    Mamba-2: `mamba2_step`: conv update of x, B, C, dt, state update, C state + D x, optional gate,
             one kernel per token (in_proj, the norm and out_proj stay PyTorch).
Results equal the layers' unfused step (the reference ops at length 1); states are returned as new
tensors, never updated in place. `fused_step(op, backend, x)` says whether a layer should take this
path: when its ops would run on the triton backend (CUDA tensors under "auto", or backend="triton").
Kernels: ssmkit.ops._triton.decode_kernels (imported on first use).
"""

from __future__ import annotations

import torch

from ssmkit.ops._triton import empty, pow2
from ssmkit.ops.causal_conv1d.triton import causal_conv1d_update

__all__ = ["causal_conv1d_update", "fused_step", "mamba2_step", "selective_state_update"]


def fused_step(op: str, backend: str, x: torch.Tensor) -> bool:
    """True when `op` with this backend would take its triton tier for tensors like x."""
    from ssmkit.ops._dispatch import resolve

    return resolve(op, backend, x).name == "triton"


def selective_state_update(h, u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h (b, d, n) float32, u, delta, z (b, d), A (d, n), B, C (b, n) or (b, g, n), D, delta_bias (d,)
    -> y (b, d) in u's dtype, new state (b, d, n) float32."""
    from ssmkit.ops._triton import decode_kernels as kern

    b, d = u.shape
    n = A.shape[1]
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    B3, C3 = (B[:, None] if B.dim() == 2 else B), (C[:, None] if C.dim() == 2 else C)
    y = empty(b, d, dtype=u.dtype, device=u.device)
    new = empty(b, d, n, dtype=torch.float32, device=u.device)
    bd = max(1, min(pow2(d), 512 // pow2(n)))            # 512-element tiles: many programs at batch 1
    zz = z if z is not None else u
    kern.selective_state_update[(b, -(-d // bd))](
        h, u, delta, A, B3, C3, D, zz, delta_bias, y, new, d, n, d // B3.shape[1], *h.stride(), *u.stride(),
        *delta.stride(), *A.stride(), *B3.stride(), *C3.stride(), *zz.stride(), *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BD=bd, BN=pow2(n))
    return y, new


def mamba2_step(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A, D, z, *, ngroups: int,
                dt_limit=(0.0, float("inf"))):
    """xBC (b, d_inner + 2 G N) before the conv, dt (b, H) before bias/softplus, conv_state
    (b, conv_dim, k-1), ssm_state (b, H, P, N) float32, conv_weight (conv_dim, k), conv_bias (conv_dim,),
    dt_bias, A (H,), D (H,) or (H, P), z (b, d_inner) or None (no gate)
    -> y (b, d_inner) in xBC's dtype, new conv state, new ssm state."""
    from ssmkit.ops._triton import decode_kernels as kern

    b, conv_dim = xBC.shape
    _, H, P, N = ssm_state.shape
    conv_bias, dt_bias, A, D = (t.contiguous() if t is not None else None for t in (conv_bias, dt_bias, A, D))
    k = conv_weight.shape[1]
    d_inner = H * P
    y = empty(b, d_inner, dtype=xBC.dtype, device=xBC.device)
    new_conv = empty(b, conv_dim, k - 1, dtype=conv_state.dtype, device=xBC.device)
    new_ssm = empty(b, H, P, N, dtype=torch.float32, device=xBC.device)
    zz = z if z is not None else xBC
    kern.mamba2_step[(b, H)](
        xBC, conv_state, conv_weight, conv_bias, dt, dt_bias, A, D, zz, ssm_state, y, new_conv, new_ssm,
        H, P, ngroups, N, d_inner, float(dt_limit[0]), float(dt_limit[1]), *xBC.stride(),
        *conv_state.stride(), *conv_weight.stride(), *dt.stride(), *zz.stride(), *ssm_state.stride(),
        *y.stride(), *new_conv.stride(),
        K=k, HAS_CBIAS=conv_bias is not None, HAS_DT_BIAS=dt_bias is not None, HAS_D=D is not None,
        D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None, BP=pow2(P), BN=pow2(N),
        num_warps=8 if P * N >= 4096 else 4)
    return y, new_conv, new_ssm
