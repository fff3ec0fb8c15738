"""The sequential loop for the diagonal linear recurrence: the oracle that every other path is tested against.

    h_t = a_t * h_{t-1} + b_t        (elementwise; real or complex; h_{-1} = initial_state or 0)

Normalized arguments (checked in `ssmkit.ops.parallel_scan`), the same for every tier:
    a:                  (batch or 1, length or 1, ...)   broadcasts against b
    b:                  (batch, length, ...)
    initial_state:      (batch, ...) or None (zeros)
    return_final_state: also return h_last
Returns h (batch, length, ...) every state, and h_last (batch, ...) the final one if asked.
Gradients come from autograd through the loop.
"""

from __future__ import annotations

import torch

from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0, fallback=True)


def parallel_scan(a: torch.Tensor, b: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False):
    # unbind, not a[:, t]: indexing's backward would build a full-size zero tensor per step
    a_t = a.expand_as(b).unbind(1)
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state
    hs = []
    for t, b_t in enumerate(b.unbind(1)):
        h = a_t[t] * h + b_t
        hs.append(h)
    hs = torch.stack(hs, dim=1)
    return (hs, h) if return_final_state else hs
