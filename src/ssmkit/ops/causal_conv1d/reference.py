"""Depthwise causal convolution (Mamba's short conv), the oracle: a plain sum over the k taps.

Glossary: x (b, d, l) input; weight (d, k) one filter per channel, tap k-1 multiplies the current
input; bias (d,); state (b, d, k-1) = the last k-1 inputs seen (zeros for an empty state), oldest first.
    y[:, c, t] = bias[c] + sum_j weight[c, j] * xs[:, c, t + j],   xs = state ‖ x
optionally followed by silu. The final state is the last k-1 columns of state ‖ x.

Normalized tier signature (what `ssmkit.ops.causal_conv1d` calls on every tier):
    causal_conv1d(x, weight, *, bias=None, initial_state=None, activation=None,
                  return_final_state=False) -> y | (y, final_state)
y and the state have x's dtype, computed in float32 (float64 for float64 inputs). This tier alone
also takes seq_idx, and the one-token `causal_conv1d_update`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit._dtypes import acc_dtype
from ssmkit.ops._dispatch import Backend

BACKEND = Backend(priority=0, fallback=True)


def causal_conv1d(x, weight, *, bias=None, initial_state=None, activation=None, return_final_state=False,
                  seq_idx=None):
    """See the module docstring. `seq_idx` (b, l), reference only: taps never reach across a change
    of seq_idx (packed sequences), as if each sequence started from an empty state."""
    b, d, l = x.shape
    k = weight.shape[1]
    acc = acc_dtype(x.dtype)
    if initial_state is None:
        initial_state = x.new_zeros(b, d, k - 1)
    xs = torch.cat([initial_state.to(acc), x.to(acc)], dim=-1)  # (b, d, k-1+l)
    w = weight.to(acc)
    y = (
        torch.zeros(b, d, l, dtype=acc, device=x.device)
        if bias is None
        else bias.to(acc)[:, None].expand(b, d, l)
    )
    if seq_idx is not None:
        # position of tap j for output t is t - (k-1) + j; it counts only inside t's own sequence
        seq = F.pad(seq_idx, (k - 1, 0), value=-1)  # (b, k-1+l): the state belongs to the first sequence
        seq[:, : k - 1] = seq_idx[:, :1]
    for j in range(k):
        term = w[:, j, None] * xs[..., j : j + l]  # (b, d, l)
        if seq_idx is not None:
            term = term * (seq[:, None, j : j + l] == seq_idx[:, None, :]).to(acc)
        y = y + term
    if activation == "silu":
        y = F.silu(y)
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, xs[..., xs.shape[-1] - (k - 1) :].to(x.dtype)


def causal_conv1d_update(x_t, conv_state, weight, *, bias=None, activation=None):
    """One token: x_t (b, d), conv_state (b, d, k-1) -> y_t (b, d), new state (b, d, k-1)."""
    acc = acc_dtype(x_t.dtype)
    window = torch.cat([conv_state.to(acc), x_t.to(acc)[..., None]], dim=-1)  # (b, d, k)
    y = (window * weight.to(acc)).sum(-1)
    if bias is not None:
        y = y + bias.to(acc)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x_t.dtype), window[..., 1:].to(conv_state.dtype)
