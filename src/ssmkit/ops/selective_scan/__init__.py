"""`ssmkit.ops.selective_scan`: Mamba-1's selective scan, validated once, then dispatched.

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the sequential loop, one step at a time: the oracle.
    chunked    chunks scanned in parallel in log space, any device, bounded memory.
    numba      fused CPU kernels (float32/bfloat16), forward and backward.
"auto" takes numba on CPU; where it cannot run, chunked, except that sequences of at most
`CHUNKED_ABOVE` steps run the loop, which has less to set up.
"""

from __future__ import annotations

import torch

from ssmkit._checks import FLOAT_DTYPES, check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve
from ssmkit.ops.selective_scan import reference

CHUNKED_ABOVE = 256
_STATE_DTYPES = (torch.float32, torch.float64)

__all__ = ["selective_scan"]


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state):
    check_tensor("u", u, ndim=3, dtypes=FLOAT_DTYPES, legend="(batch, d, length)")
    b, d, l = u.shape
    check_tensor("delta", delta, shape=(b, d, l), dtypes=FLOAT_DTYPES, legend="(batch, d, length)")
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"A must be real (float32), got complex dtype {str(A.dtype).replace('torch.', '')}")
    check_tensor("A", A, ndim=2, dtypes=_STATE_DTYPES, legend="(d, d_state)")
    if A.shape[0] != d:
        raise ValueError(f"A must have shape (d={d}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    Bs = {}
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t, ndim=(3, 4), dtypes=FLOAT_DTYPES, legend="(batch, [groups,] d_state, length)")
        t4 = t.unsqueeze(1) if t.dim() == 3 else t  # (b, g, n, l)
        if t4.shape[0] != b or t4.shape[2] != n or t4.shape[3] != l:
            raise ValueError(
                f"{name} must have shape ({b}, {n}, {l}) or ({b}, groups, {n}, {l}) "
                f"(batch, [groups,] d_state, length), got {tuple(t.shape)}"
            )
        if d % t4.shape[1] != 0:
            raise ValueError(f"{name}: groups={t4.shape[1]} must divide d={d}")
        Bs[name] = t4
    if Bs["B"].shape[1] != Bs["C"].shape[1]:
        gb, gc = Bs["B"].shape[1], Bs["C"].shape[1]
        raise ValueError(f"B and C must have the same number of groups, got {gb} and {gc}")
    if D is not None:
        check_tensor("D", D, shape=(d,), dtypes=FLOAT_DTYPES, legend="(d,)")
    if z is not None:
        check_tensor("z", z, shape=(b, d, l), dtypes=FLOAT_DTYPES, legend="(batch, d, length)")
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, shape=(d,), dtypes=FLOAT_DTYPES, legend="(d,)")
    if initial_state is not None:
        check_tensor(
            "initial_state", initial_state, shape=(b, d, n), dtypes=_STATE_DTYPES, legend="(b, d, d_state)"
        )
    check_same_device(
        u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state
    )
    return Bs["B"], Bs["C"]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
):
    """Selective scan: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = C_t h_t + D u_t; y * silu(z).

    Args (b = batch, d = channels, n = d_state, g = groups, l = length):
        u, delta: (b, d, l) float; A: (d, n) real float32; B, C: (b, n, l) or (b, g, n, l), d % g == 0;
        D, delta_bias: (d,); z: (b, d, l); initial_state: (b, d, n) float32, differentiable.
        delta_softplus: delta <- softplus(delta + delta_bias) before use.
        backend: "auto", or a tier: "reference", "chunked", "numba" (see the module docstring).
    Returns out (b, d, l) in u's dtype, and the final state (b, d, n) float32 if return_final_state.
    """
    B4, C4 = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    choice = resolve("selective_scan", backend, u)
    fn = choice.fn
    if choice.auto and choice.name == "chunked" and u.shape[-1] <= CHUNKED_ABOVE:
        fn = reference.selective_scan
    return fn(u, delta, A, B4, C4, D=D, z=z, delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
              initial_state=initial_state, return_final_state=bool(return_final_state))
