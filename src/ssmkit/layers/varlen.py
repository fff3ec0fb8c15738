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
from torch import nn

from ssmkit._checks import check_tensor
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.int8 import Int8Linear
from ssmkit.ops._decode import numba_block, numba_stack


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


def parameters_at(module: nn.Module, paths: tuple) -> tuple:
    """The parameters (or buffers: an int8 weight) at `paths`, ("submodule", "name") pairs (None where a
    name holds none), read through the modules' own dictionaries: a decoding step looks up about fifteen
    per layer, and nn.Module's attribute lookup costs ~0.5 us a name."""
    mods = module._modules
    out = []
    for m, n in paths:
        mod = mods[m]
        p = mod._parameters.get(n)
        out.append(mod._buffers.get(n) if p is None else p)
    return tuple(out)


def linear_arrays(linear: nn.Module, kernels) -> tuple:
    """(weight, scale, bias) arrays of an nn.Linear (scale empty) or an int8 Int8Linear, as the block
    decoding kernels take a projection."""
    scale = linear.weight_scale if isinstance(linear, Int8Linear) else None
    return kernels.array(linear.weight), kernels.array(scale), kernels.array(linear.bias)


LINEARS = (nn.Linear, Int8Linear)  # the projections the block decoding kernels read


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

    # ---- a whole block's decoding step in one kernel (ssmkit.ops._numba.block_decode) ----
    _block_op: str | None = None  # the op whose tier decides, "selective_scan" or "ssd"; None: no kernel
    _block_kernel: str = ""  # its function in block_decode

    def _block_params(self) -> tuple | None:
        """The parameters the block kernel reads besides the norm's; None where this layer cannot take it."""
        return None

    def _block_arrays(self, kernels) -> tuple:
        """Those parameters (and what derives from them) as the kernel takes them (see block_decode)."""
        raise NotImplementedError

    def block_step_(self, residual_t: torch.Tensor, norm, residual_multiplier: float, state: StateDict):
        """residual_t + residual_multiplier * step_(norm(residual_t)) as one kernel call, `state` written in
        place (Mixer.step_); None where the kernel does not apply (the block then runs its parts)."""
        done = self._block_step(residual_t, norm, residual_multiplier, state, copy=False)
        return None if done is None else done[0]

    def block_step(self, residual_t: torch.Tensor, norm, residual_multiplier: float, state: StateDict):
        """block_step_ on a copy of `state`: (output, new state), or None."""
        return self._block_step(residual_t, norm, residual_multiplier, state, copy=True)

    def _block_step(self, residual_t, norm, residual_multiplier, state, copy: bool):
        params = None if self._block_op is None else self._block_params()
        conv, ssm = state.get("conv"), state.get("ssm")
        if params is None or conv is None or ssm is None:
            return None  # no kernel, or a wrong state (the per-part path says what is wrong with it)
        fused = numba_block(self, self._block_op, self.backend, residual_t, norm, (conv, ssm), params,
                            lambda kernels: (self._block_arrays(kernels), self._state_shapes()))
        if fused is None:
            return None
        kernels, (norm_arrays, (arrays, (conv_shape, ssm_shape))) = fused
        b = residual_t.shape[0]
        expected = (len(state) == 2 and b and residual_t.shape == (b, self.d_model)
                    and conv.shape == (b, *conv_shape) and ssm.shape == (b, *ssm_shape))
        if not expected and self._empty_step(residual_t, state) is not None:  # raises on a wrong input
            return None
        if copy:
            conv, ssm = conv.clone(), ssm.clone()
        out = torch.empty_like(residual_t)
        state_arrays = (kernels.array(conv), kernels.array(ssm))
        getattr(kernels, self._block_kernel)(kernels.array(residual_t), state_arrays, norm_arrays,
                                             float(residual_multiplier), arrays, out.numpy())
        return out, {"conv": conv, "ssm": ssm}

    @classmethod
    def stack_step_(cls, mixers: list, norms: list, residual_multiplier: float, residual_t: torch.Tensor,
                    states: list, owner) -> torch.Tensor | None:
        """Blocks i = 0, 1, ... (norms[i], mixers[i], all of this class) in turn as one kernel call,
        block_step_ by block_step_; `states` written in place; None where the kernel does not apply.
        owner: the module whose cache entry this is (the backbone)."""
        if cls._block_op is None:
            return None
        params, tensors = [norm._parameters["weight"] for norm in norms], []
        for mixer, state in zip(mixers, states):
            p, conv, ssm = mixer._block_params(), state.get("conv"), state.get("ssm")
            if p is None or conv is None or ssm is None or len(state) != 2:
                return None
            params.extend(p)
            tensors.extend((conv, ssm))
        if any(norm.group_size != w.shape[0] for norm, w in zip(norms, params)):
            return None

        def build(kernels):
            norm_tuple = kernels.stack_tuple((kernels.array(norm.weight), float(norm.eps)) for norm in norms)
            mixer_tuple = kernels.stack_tuple(mixer._block_arrays(kernels) for mixer in mixers)
            if norm_tuple is None or mixer_tuple is None:
                return None  # blocks of different array types: one call each (block_step_)
            return norm_tuple, mixer_tuple, [mixer._state_shapes() for mixer in mixers]

        fused = numba_stack(owner, cls._block_op, mixers[0].backend, residual_t, tensors, params, build)
        b = residual_t.shape[0]
        if fused is None or fused[1] is None or not b or residual_t.shape != (b, mixers[0].d_model):
            return None
        kernels, (norm_list, mixer_list, shapes) = fused
        for (conv_shape, ssm_shape), conv, ssm in zip(shapes, tensors[::2], tensors[1::2]):
            if conv.shape != (b, *conv_shape) or ssm.shape != (b, *ssm_shape):
                return None  # the per-block path says what is wrong
        out = torch.empty_like(residual_t)
        arrays = tuple(zip(map(kernels.array, tensors[::2]), map(kernels.array, tensors[1::2])))
        kernels.stack_(cls._block_kernel, kernels.array(residual_t), arrays, norm_list, residual_multiplier,
                       mixer_list, out.numpy())
        return out

    def _state_shapes(self) -> tuple:
        """The shapes of this layer's state tensors past the batch, in init_state's order."""
        return tuple(v.shape[1:] for v in self.init_state(1).values())

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
