"""The mixer protocol that every sequence layer speaks (see DESIGN.md).

    y = layer(x)                                        # x: (batch, length, d_model)
    y, state = layer(x, state=state, return_state=True) # stream in chunks
    state = layer.init_state(batch_size, device, dtype) # the empty state
    y_t, state = layer.step(x_t, state)                 # x_t: (batch, d_model), O(1) per token

A state is a plain `dict[str, Tensor]` whose every tensor has the batch as its first dimension, so
a model-level `State` can batch, index, move, save and load it without knowing the layer. Layers
never modify a state they were given in place: they return a new dict, so gradients reach the
initial state. Bidirectional layers have no causal state: their `init_state`/`step` raise.
The one exception is `step_`, for a caller that owns the state (see Mixer.step_).

A state given to a layer must have exactly the keys and shapes of its `init_state` (the batch, and
any dimension that is empty in the initial state because it grows with the context, may differ):
a state of another layer or another configuration is refused with one clear error.

Batching: `cat_states` joins the states of several sequences along the batch and `select_state`
takes rows; the defaults concatenate and index every tensor, and a layer whose state grows with the
context (attention's KV cache, Hyena's history) pads rows of different lengths in `cat_states`.

Empty inputs: a batch of 0 sequences or a length of 0 gives an empty output (and the state it was
given, or the empty state); layers call `_empty_forward` / `_empty_step` first. Inputs of another
floating dtype than the layer's parameters raise up front (cast the input or the layer; under
torch.autocast the cast is autocast's), except in layers that compute in the input's precision
(`any_input_dtype = True`: S4, S4D, S5).

A mixer registers itself under a pattern name with `ssmkit.layers.registry.register` and lists the
parameters trained without weight decay in `no_weight_decay`.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit._checks import FLOAT_DTYPES, check_tensor

StateDict = dict[str, torch.Tensor]


class Mixer(nn.Module):
    """Base class: input checks and the protocol's signatures. Subclasses implement the three methods."""

    d_model: int
    bidirectional: bool = False
    no_weight_decay: tuple[str, ...] = ()
    """Names of this module's own parameters that the optimizer must not decay (A_log, D, ...)."""
    any_input_dtype: bool = False
    """True when the layer computes in the input's precision whatever its parameters' dtype."""

    def forward(self, x: torch.Tensor, state: StateDict | None = None, return_state: bool = False):
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        raise NotImplementedError

    def step_(self, x_t: torch.Tensor, state: StateDict) -> torch.Tensor:
        """`step` for a caller that owns `state` (generate's working copy): the new state is written
        into the dict, and a layer with a fused decoding kernel overwrites its tensors in place, so
        decoding allocates nothing per token. Returns y_t. By default: step, then the dict updated."""
        y_t, new = self.step(x_t, state)
        state.update(new)
        return y_t

    def block_step_(self, residual_t: torch.Tensor, norm, residual_multiplier: float, state: StateDict):
        """A block's whole step, residual_t + residual_multiplier * step_(norm(residual_t)), where this
        layer has one kernel for it (Mamba, Mamba-2 on CPU); None otherwise (the block runs its parts)."""
        return None

    def block_step(self, residual_t: torch.Tensor, norm, residual_multiplier: float, state: StateDict):
        """block_step_ without writing `state`: (output, new state), or None."""
        return None

    @classmethod
    def stack_step_(cls, mixers: list, norms: list, residual_multiplier: float, residual_t: torch.Tensor,
                    states: list, owner) -> torch.Tensor | None:
        """Every block of a model (norms[i], mixers[i], all of this class) as one kernel call where the
        class has one (Mamba, Mamba-2 on CPU); None otherwise (the blocks run one by one)."""
        return None

    # ---- helpers for subclasses -------------------------------------------------------------
    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        check_tensor(name, x, ndim=3, dtypes=FLOAT_DTYPES, legend="(batch, length, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: {name} must have last dimension d_model={self.d_model}, "
                f"got shape {tuple(x.shape)}"
            )
        self._check_dtype(x, name)

    def _check_x_t(self, x_t: torch.Tensor) -> None:
        check_tensor("x_t", x_t, ndim=2, dtypes=FLOAT_DTYPES, legend="(batch, d_model)")
        if x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: x_t must have shape (batch, {self.d_model}), got {tuple(x_t.shape)}"
            )
        self._check_dtype(x_t, "x_t")

    def _check_dtype(self, x: torch.Tensor, name: str) -> None:
        if self.any_input_dtype or torch.is_autocast_enabled(x.device.type):
            return
        check_param_dtype(self, x, name)

    def _empty_forward(self, x: torch.Tensor, state: StateDict | None, return_state: bool):
        """The result of forward() when x has no batch or no length, else None (go on computing)."""
        self._check_x(x)
        if x.shape[0] and x.shape[1]:
            return None
        if state is not None or return_state:
            self._check_causal("a state")
        if state is not None:
            self._check_state(state, x.shape[0])
        y = x.new_zeros(*x.shape[:-1], getattr(self, "d_out", self.d_model))  # d_out: Attention's option
        if not return_state:
            return y
        return y, state if state is not None else self.init_state(x.shape[0], device=x.device)

    def _empty_step(self, x_t: torch.Tensor, state: StateDict):
        """The result of step() for a batch of 0 sequences, else None."""
        self._check_causal("step")
        self._check_x_t(x_t)
        self._check_state(state, x_t.shape[0])
        return None if x_t.shape[0] else (x_t.new_zeros(0, getattr(self, "d_out", self.d_model)), state)

    def _padding_mask(self, attention_mask, x: torch.Tensor, stateful: bool) -> torch.Tensor | None:
        """attention_mask (b, l), 1 = token, 0 = pad -> (b, l) in x's dtype, or None when it has no pad.

        For layers whose pads cannot leave a carried state untouched (time-invariant decay), pads
        together with a state in or out raise instead of giving a state that differs from the rows'.
        """
        if attention_mask is None:
            return None
        b, l = x.shape[:2]
        legend = "(batch, length), 1 = token, 0 = pad"
        check_tensor("attention_mask", attention_mask, shape=(b, l), legend=legend)
        mask = attention_mask.to(device=x.device, dtype=x.dtype)
        if bool((mask != 0).all()):
            return None
        if stateful:
            raise ValueError(
                f"{type(self).__name__}: attention_mask with padding runs without a carried state only "
                "(its pads would decay the state); call it without state= and return_state=True"
            )
        return mask

    def _check_causal(self, what: str) -> None:
        if self.bidirectional:
            raise RuntimeError(
                f"{type(self).__name__} was built with bidirectional=True: it has no causal state, so "
                f"{what} is not available; build it with bidirectional=False to stream"
            )

    def _check_state(self, state: StateDict, batch_size: int) -> None:
        """Raise one clear error unless `state` has this layer's keys, shapes and batch size."""
        name = type(self).__name__
        if not isinstance(state, dict):
            got = type(state).__name__
            raise TypeError(f"{name}: state must be a dict of tensors (from init_state), got {got}")
        template = self._state_template()
        if set(state) != set(template):
            raise ValueError(
                f"{name}: state has keys {sorted(state)}, but this layer's states have keys "
                f"{sorted(template)} (a state made by another kind of layer?)"
            )
        for k, want in template.items():
            v = state[k]
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            fits = isinstance(v, torch.Tensor) and v.dim() == len(want) and all(
                w in (None, g) for w, g in zip(want, v.shape)
            )
            if not fits or v.shape[0] != batch_size:
                shape = ", ".join("*" if w is None else str(w) for w in (batch_size, *want[1:]))
                raise ValueError(
                    f"{name}: state[{k!r}] must have shape ({shape}) for this layer, got {got} "
                    "(a state of another configuration, or of another batch?)"
                )

    def _state_template(self) -> dict[str, tuple[int | None, ...]]:
        """{key: shape} of this layer's states; None marks the batch and dimensions that grow."""
        cached = self.__dict__.get("_template")
        if cached is None:
            empty = self.init_state(1, device="meta")
            cached = {k: (None, *(None if s == 0 else s for s in v.shape[1:])) for k, v in empty.items()}
            self.__dict__["_template"] = cached
        return cached

    # ---- batching states ----------------------------------------------------------------------
    @classmethod
    def cat_states(cls, states: list[StateDict]) -> StateDict:
        """The states of several sequences joined along the batch, in the order given."""
        keys = set(states[0])
        for s in states[1:]:
            if set(s) != keys:
                raise ValueError(
                    f"{cls.__name__}.cat_states: states have different keys {sorted(keys)} and {sorted(s)}"
                )
        return {k: torch.cat([s[k] for s in states]) for k in states[0]}

    @classmethod
    def select_state(cls, state: StateDict, idx) -> StateDict:
        """Rows `idx` (a slice or a 1-D index tensor) of a state."""
        if isinstance(idx, torch.Tensor):
            return {k: v[idx.to(v.device)] for k, v in state.items()}
        return {k: v[idx] for k, v in state.items()}


def check_param_dtype(module: nn.Module, x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error when x's floating dtype differs from the module's parameters'."""
    param = _first_float_parameter(module)
    if param is not None and x.dtype != param.dtype:
        dt = lambda d: str(d).replace("torch.", "")  # noqa: E731
        raise TypeError(
            f"{type(module).__name__}: {name} has dtype {dt(x.dtype)} but the layer's parameters are "
            f"{dt(param.dtype)}; cast the input (x.to({param.dtype})) or the layer (layer.to({x.dtype})), "
            "or run under torch.autocast"
        )


def _first_float_parameter(module: nn.Module) -> torch.Tensor | None:
    """The first floating parameter in `module.parameters()` order, read off the module dicts
    (the parameters() generator costs more than a decoding step's small matmuls)."""
    for p in module._parameters.values():
        if p is not None and p.is_floating_point():
            return p
    for child in module._modules.values():
        if child is not None and (p := _first_float_parameter(child)) is not None:
            return p
    return None


def state_nbytes(state: StateDict) -> int:
    """Bytes held by a layer state."""
    return sum(v.numel() * v.element_size() for v in state.values())
