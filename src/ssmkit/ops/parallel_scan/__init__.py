"""`parallel_scan`: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t over time, all h_t at once.

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the sequential loop (L Python steps): the oracle.
    chunked    the two-level chunked scan, any device (~2 sqrt(L) Python steps; same recurrence, no
               division; temporaries about twice the output; its backward is the same scan reversed).
    numba      fused CPU kernels, forward and backward.
"auto" takes numba on CPU; where it cannot run, chunked, except that sequences of at most
chunked.CHUNK steps run the loop, which has less to set up.
"""

from __future__ import annotations

import torch

from ssmkit._checks import check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve
from ssmkit.ops.parallel_scan import chunked, reference

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def parallel_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
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
        backend: "auto", or a tier: "reference", "chunked", "numba" (see the module docstring).
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

    choice = resolve("parallel_scan", backend, b, a, initial_state)
    fn = choice.fn
    if choice.auto and choice.name == "chunked" and b.shape[1] <= chunked.CHUNK:
        fn = reference.parallel_scan
    return fn(a, b, initial_state=initial_state, return_final_state=bool(return_final_state))


__all__ = ["parallel_scan"]
