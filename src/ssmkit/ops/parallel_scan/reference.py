"""The sequential loop for the diagonal linear recurrence: the oracle that every other path is tested against.

    h_t = a_t * h_{t-1} + b_t        (elementwise; real or complex; h_{-1} = initial_state or 0)

Normalized arguments (checked in `ssmkit.ops.parallel_scan`):
    a:             (batch or 1, length or 1, ...)   broadcasts against b
    b:             (batch, length, ...)
    initial_state: (batch, ...) or None
Returns (h, h_last): h (batch, length, ...) every state, h_last (batch, ...) the final one.
Gradients come from autograd through the loop.
"""

from __future__ import annotations

import torch


def parallel_scan(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None):
    # unbind, not a[:, t]: indexing's backward would build a full-size zero tensor per step
    a_t = a.expand_as(b).unbind(1)
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state
    hs = []
    for t, b_t in enumerate(b.unbind(1)):
        h = a_t[t] * h + b_t
        hs.append(h)
    return torch.stack(hs, dim=1), h
