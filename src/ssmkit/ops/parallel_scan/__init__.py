"""`parallel_scan`: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t over time, all h_t at once.

Backends (chosen by `ssmkit.ops._dispatch`):
    reference  plain PyTorch. The oracle is the loop in reference.py (L Python steps); for inputs
               longer than chunked.CHUNK the public function runs the two-level chunked scan of
               chunked.py instead (~2 sqrt(L) Python steps; same recurrence, no division; its
               temporaries are about twice the output; its backward is the same scan reversed).
    cpu        fused numba kernels, forward and backward (cpu.py).
"""

from __future__ import annotations

import torch

from ssmkit._checks import check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def parallel_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
):
    """h_t = a_t * h_{t-1} + b_t elementwise (real or complex), h_{-1} = initial_state (zeros if None).

    Args:
        a: (batch, length, ...) decay, or any shape that broadcasts against b with the same number of
           dims, i.e. each dim equal to b's or 1: a time-invariant a is (batch or 1, 1, ...).
           Same dtype as b. Its gradient has a's own shape (summed over broadcast dims).
        b: (batch, length, ...) input; float or complex.
        initial_state: (batch, ...) = b.shape without the length dim, or None.
        return_final_state: also return h_{length-1}, shape (batch, ...).
        backend: "auto" | "reference" | "cpu" | "triton" (see ssmkit.ops._dispatch).
    Returns:
        h: (batch, length, ...) every state, same shape and dtype as b; and h_last if asked.
    Gradients flow to a, b and initial_state.
    """
    check_tensor("b", b, dtypes=_DTYPES)
    if b.dim() < 2:
        raise ValueError(f"b must have at least 2 dimensions (batch, length, ...), got {tuple(b.shape)}")
    legend = f"(like b: {tuple(b.shape)}, dims of 1 broadcast)"
    check_tensor("a", a, ndim=b.dim(), dtypes=(b.dtype,), legend=legend)
    if any(sa not in (1, sb) for sa, sb in zip(a.shape, b.shape)):
        raise ValueError(
            f"a must broadcast against b (each dim equal to b's or 1): b has shape {tuple(b.shape)}, "
            f"got a of shape {tuple(a.shape)}"
        )
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(b.shape[0], *b.shape[2:]), dtypes=(b.dtype,),
                     legend="(batch, ...) = b.shape without length")
    check_same_device(a=a, b=b, initial_state=initial_state)
    if b.shape[1] == 0:
        raise ValueError(f"b must have length >= 1 (dim 1), got shape {tuple(b.shape)}")

    name, fn = resolve("parallel_scan", backend, b, a, *(() if initial_state is None else (initial_state,)))
    if name == "reference" and b.shape[1] > _chunk():
        from ssmkit.ops.parallel_scan.chunked import parallel_scan as fn
    h, h_last = fn(a, b, initial_state)
    return (h, h_last) if return_final_state else h


def _chunk() -> int:
    from ssmkit.ops.parallel_scan.chunked import CHUNK

    return CHUNK


__all__ = ["parallel_scan"]
