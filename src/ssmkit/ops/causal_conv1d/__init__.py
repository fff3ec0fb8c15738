"""`ssmkit.ops.causal_conv1d`: depthwise causal convolution with a carried state, and its one-token update.

The state is the last k-1 inputs (b, d, k-1), oldest first: an empty state is zeros, and
`causal_conv1d(x, ..., initial_state=s, return_final_state=True)` continues exactly where the call
that returned `s` stopped. `causal_conv1d_update` is the O(1) decoding step on the same state.
`seq_idx` (packed sequences; taps never cross a boundary) runs on the reference and triton tiers;
the update on the reference (Mamba's fused decoding step has its own, ssmkit.ops._triton.decode).

Tiers (backends, chosen by `ssmkit.ops._dispatch` from their declarations):
    reference  the sum over the k taps: the oracle.
    numba      fused CPU kernels (float32/bfloat16), forward and backward.
    triton     GPU kernels (CUDA; CPU tensors under Triton's interpreter when asked by name).
"""

from __future__ import annotations

import torch

from ssmkit._checks import FLOAT_DTYPES, check_choice, check_same_device, check_tensor
from ssmkit.ops._dispatch import resolve
from ssmkit.ops.causal_conv1d import reference

__all__ = ["causal_conv1d", "causal_conv1d_update"]

_ACTIVATIONS = (None, "silu")
_SEQ_IDX_TIERS = ("reference", "triton")


def _check_weight(weight, bias, d):
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, legend="(d, kernel_size)")
    if weight.shape[0] != d:
        raise ValueError(f"weight must have shape ({d}, kernel_size), got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(d,), dtypes=FLOAT_DTYPES, legend="(d,)")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    backend: str = "auto",
):
    """y[:, c, t] = act(bias[c] + sum_j weight[c, j] x[:, c, t - (k-1) + j]), earlier inputs from the state.

    Args: x (b, d, l); weight (d, k); bias (d,); initial_state (b, d, k-1) = the last k-1 inputs;
    activation None or "silu"; seq_idx (b, l) int, nondecreasing (reference and triton tiers);
    backend "auto", "reference", "numba" or "triton".
    Returns y (b, d, l) in x's dtype [, final state (b, d, k-1)].
    """
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES, legend="(batch, d, length)")
    b, d, l = x.shape
    _check_weight(weight, bias, d)
    k = weight.shape[1]
    if initial_state is not None:
        check_tensor(
            "initial_state",
            initial_state,
            shape=(b, d, k - 1),
            dtypes=FLOAT_DTYPES,
            legend="(batch, d, kernel_size - 1)",
        )
    check_choice("activation", activation, _ACTIVATIONS)
    check_same_device(x=x, weight=weight, bias=bias, initial_state=initial_state, seq_idx=seq_idx)
    if seq_idx is not None:
        check_tensor(
            "seq_idx", seq_idx, shape=(b, l), dtypes=(torch.int32, torch.int64), legend="(batch, length)"
        )
        choice = resolve("causal_conv1d", backend, x)
        if choice.name not in _SEQ_IDX_TIERS and not choice.auto:
            raise ValueError(f"causal_conv1d: seq_idx runs on the {' and '.join(_SEQ_IDX_TIERS)} tiers only, "
                             f"got backend={backend!r}")
        fn = choice.fn if choice.name in _SEQ_IDX_TIERS else reference.causal_conv1d
        return fn(x, weight, bias=bias, initial_state=initial_state, activation=activation,
                  return_final_state=bool(return_final_state), seq_idx=seq_idx)
    fn = resolve("causal_conv1d", backend, x).fn
    return fn(x, weight, bias=bias, initial_state=initial_state, activation=activation,
              return_final_state=bool(return_final_state))


def causal_conv1d_update(
    x_t: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x_t (b, d), conv_state (b, d, k-1) -> (y_t (b, d), new conv_state); inputs untouched."""
    check_tensor("x_t", x_t, ndim=2, dtypes=FLOAT_DTYPES, legend="(batch, d)")
    b, d = x_t.shape
    _check_weight(weight, bias, d)
    k = weight.shape[1]
    check_tensor(
        "conv_state",
        conv_state,
        shape=(b, d, k - 1),
        dtypes=FLOAT_DTYPES,
        legend="(batch, d, kernel_size - 1)",
    )
    check_choice("activation", activation, _ACTIVATIONS)
    return reference.causal_conv1d_update(x_t, conv_state, weight, bias=bias, activation=activation)
