"""The mixer protocol that every sequence layer speaks (see DESIGN.md).

    y = layer(x)                                        # x: (batch, length, d_model)
    y, state = layer(x, state=state, return_state=True) # stream in chunks
    state = layer.init_state(batch_size, device, dtype) # the empty state
    y_t, state = layer.step(x_t, state)                 # x_t: (batch, d_model), O(1) per token

A state is a plain `dict[str, Tensor]` whose every tensor has the batch as its first dimension, so
a model-level `State` can batch, index, move, save and load it without knowing the layer. Layers
never modify a state they were given in place: they return a new dict, so gradients reach the
initial state. Bidirectional layers have no causal state: their `init_state`/`step` raise.
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

    def forward(self, x: torch.Tensor, state: StateDict | None = None, return_state: bool = False):
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        raise NotImplementedError

    # ---- helpers for subclasses -------------------------------------------------------------
    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        check_tensor(name, x, ndim=3, dtypes=FLOAT_DTYPES, legend="(batch, length, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: {name} must have last dimension d_model={self.d_model}, "
                f"got shape {tuple(x.shape)}"
            )

    def _check_x_t(self, x_t: torch.Tensor) -> None:
        check_tensor("x_t", x_t, ndim=2, dtypes=FLOAT_DTYPES, legend="(batch, d_model)")
        if x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: x_t must have shape (batch, {self.d_model}), got {tuple(x_t.shape)}"
            )

    def _check_causal(self, what: str) -> None:
        if self.bidirectional:
            raise RuntimeError(
                f"{type(self).__name__} was built with bidirectional=True: it has no causal state, so "
                f"{what} is not available; build it with bidirectional=False to stream"
            )

    def _check_state(self, state: StateDict, batch_size: int) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of tensors (from init_state), got {type(state).__name__}")
        for k, v in state.items():
            if not isinstance(v, torch.Tensor) or v.shape[0] != batch_size:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"state[{k!r}] must be a tensor with batch size {batch_size} first, got {shape}"
                )


def state_nbytes(state: StateDict) -> int:
    """Bytes held by a layer state."""
    return sum(v.numel() * v.element_size() for v in state.values())
