"""What Mamba and Mamba-2 share beyond their math: variable-length inputs and the bidirectional form.

Variable length (per call, keyword only):
    seq_idx (b, l) int, nondecreasing: packed sequences, each run as if it were alone;
    cu_seqlens (n_seq + 1,) with b == 1: the same given as cumulative lengths;
    attention_mask (b, l), 1 = token, 0 = pad: pads enter the conv as zeros and get a step of 0, so
        the state passes through them unchanged (left or right padding, rows as if alone).
bidirectional=True adds an independent second mixer of the same class (`reverse.*`, its own
parameters, as in bidirectional Mamba / Caduceus without weight tying) that reads the reversed
sequence; the outputs are summed. Such a layer has no causal state (no init_state/step).

A subclass implements `_forward(x, state, seq_idx, mask) -> (y, new_state)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit._checks import check_tensor
from ssmkit.layers.base import Mixer, StateDict


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """cu_seqlens (n_seq + 1,) = [0, l_1, l_1 + l_2, ..., length] -> seq_idx (1, length) int64."""
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64), legend="(n_seq + 1,)")
    cu = cu_seqlens.long()
    if cu.numel() < 2 or cu[0].item() != 0 or cu[-1].item() != length or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(
            f"cu_seqlens must start at 0, be nondecreasing and end at the packed length {length}, "
            f"got {cu_seqlens.tolist()}"
        )
    t = torch.arange(length, device=cu.device)
    return (torch.bucketize(t, cu[1:], right=True))[None]  # (1, l)


def varlen_args(x, seq_idx, cu_seqlens, attention_mask):
    """Validate the variable-length arguments; return (seq_idx or None, mask (b, l) in x's dtype or None)."""
    b, l = x.shape[:2]
    if seq_idx is not None and cu_seqlens is not None:
        raise ValueError("pass seq_idx or cu_seqlens, not both")
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"cu_seqlens needs the packed sequences in one row (batch 1), got batch {b}")
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens.to(x.device), l)
    if seq_idx is not None:
        check_tensor(
            "seq_idx", seq_idx, shape=(b, l), dtypes=(torch.int32, torch.int64), legend="(batch, length)"
        )
        if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("seq_idx must be nondecreasing along each row")
    if attention_mask is not None:
        if seq_idx is not None:
            raise ValueError("pass packed sequences (seq_idx / cu_seqlens) or attention_mask, not both")
        check_tensor(
            "attention_mask", attention_mask, shape=(b, l), legend="(batch, length), 1 = token, 0 = pad"
        )
        attention_mask = attention_mask.to(x.dtype)
    return seq_idx, attention_mask


def reverse_seq_idx(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """seq_idx of the time-reversed row, made nondecreasing again."""
    if seq_idx is None:
        return None
    r = seq_idx.flip(1)
    return r[:, :1] - r


def mask_conv_state(conv_state: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
    """Zero the entries of a final conv state (b, d, k-1) that belong to an earlier packed sequence."""
    k1 = conv_state.shape[-1]
    if k1 == 0:
        return conv_state
    tail = seq_idx[:, -k1:]  # (b, <=k-1)
    keep = (tail == seq_idx[:, -1:]).to(conv_state.dtype)
    keep = F.pad(keep, (k1 - keep.shape[1], 0))  # positions before the start of x: not this sequence's
    return conv_state * keep[:, None, :]


class VarlenMixer(Mixer):
    """forward() with the variable-length keywords and the bidirectional sum, around `_forward`."""

    def _add_reverse(self, init_args: dict) -> None:
        """Build `self.reverse`: the same mixer, its own freshly initialized parameters."""
        args = {k: v for k, v in init_args.items() if k not in ("self", "__class__")}
        self.reverse = type(self)(**{**args, "bidirectional": False})

    def _forward(self, x, state, seq_idx, mask):
        raise NotImplementedError

    # ---- decoding through fused CPU kernels (ssmkit.ops._numba.decode), where a subclass has them ----
    def _numba_step(self, x_t: torch.Tensor, state: StateDict):
        """(the decode kernels module, what they read of this layer) when this step should run them
        (ssmkit.ops._decode.numba_step), else None."""
        return None

    def _fused_step_(self, fused, x_t: torch.Tensor, state: StateDict) -> torch.Tensor:
        """y_t by the kernels (fused: `_numba_step`'s result), `state` written in place."""
        raise NotImplementedError

    def _fused_step(self, x_t: torch.Tensor, state: StateDict):
        """step's (y_t, new state) by the kernels, on copies of `state`; None where they do not apply."""
        if (fused := self._numba_step(x_t, state)) is None:
            return None
        state = {k: v.clone() for k, v in state.items()}
        return self._fused_step_(fused, x_t, state), state

    def step_(self, x_t: torch.Tensor, state: StateDict) -> torch.Tensor:
        """step, writing `state` in place (Mixer.step_): the fused kernels for CPU inference, else step's
        result copied in."""
        if (empty := self._empty_step(x_t, state)) is None and (fused := self._numba_step(x_t, state)):
            return self._fused_step_(fused, x_t, state)
        return super().step_(x_t, state) if empty is None else empty[0]

    def forward(
        self,
        x: torch.Tensor,
        state: StateDict | None = None,
        return_state: bool = False,
        *,
        seq_idx: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        """x (b, l, d_model) -> y (b, l, d_model) [, state after x]."""
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        seq_idx, mask = varlen_args(x, seq_idx, cu_seqlens, attention_mask)
        if self.bidirectional:
            if state is not None or return_state:
                self._check_causal("a state")
            y, _ = self._forward(x, None, seq_idx, mask)
            m_r = None if mask is None else mask.flip(1)
            y_r, _ = self.reverse._forward(x.flip(1), None, reverse_seq_idx(seq_idx), m_r)
            return y + y_r.flip(1)
        if state is not None:
            self._check_state(state, x.shape[0])
        y, new_state = self._forward(x, state, seq_idx, mask)
        return (y, new_state) if return_state else y
