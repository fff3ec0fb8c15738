"""State: a whole model's recurrent state as one object (per-layer dicts of batch-first tensors).

    state = model.init_state(batch_size)        # empty state
    out = model(ids, state=state)               # state now holds everything read so far
    state[0], state.select([0, 2])              # rows; State.cat([s1, s2]) batches them again
    state.save("chat.safetensors"); State.load("chat.safetensors")
    State.from_bytes(state.to_bytes())          # the same bytes, for a database blob

Dependency direction: layers -> models -> inference. State knows nothing about models: it stores the
layout (one layer name per layer) and the model config's hash as plain strings, and a model checks
them when it is handed a State (`State.check_for`). Rows are joined and taken by each layer's own
`cat_states` / `select_state`, found through the layer registry by the layout's names (attention's
and Hyena's states grow with the context, so rows of different lengths are padded to be batched).

Every layer dict follows the mixer protocol (ssmkit/layers/base.py): batch is the first dimension of
every tensor, and tensors are never modified in place; a State is updated by replacing its dicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from ssmkit._files import check_readable, loads_safetensors, safetensors_bytes, write_bytes_atomic

StateDict = dict[str, torch.Tensor]
_FORMAT = "ssmkit.State"
_VERSION = "1"


class State:
    """Per-layer recurrent states of one model, for a batch of sequences.

    layers: list of dict[str, Tensor], one per block (empty dict for a layer without state), then one
            per use of a shared block (its KV cache).
    layout: list of layer names (e.g. ["mamba2", "attention"]), one per block, then "attention" for
            each use of a shared block (SSMConfig.state_layout).
    config_hash: SSMConfig.config_hash() of the model the state belongs to (None = unchecked).
    """

    def __init__(self, layers: Sequence[StateDict], layout: Sequence[str], config_hash: str | None = None):
        layers, layout = list(layers), [str(x) for x in layout]
        if len(layers) != len(layout):
            raise ValueError(f"State: {len(layers)} layer states but a layout of {len(layout)} names")
        for i, d in enumerate(layers):
            if not isinstance(d, dict) or not all(isinstance(v, torch.Tensor) for v in d.values()):
                raise TypeError(f"State: layer {i} state must be a dict of tensors, got {type(d).__name__}")
        self.layers, self.layout, self.config_hash = layers, layout, config_hash
        _ = self.batch_size  # validates that every tensor agrees on the batch size

    # ---- shape ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        sizes = {(i, k): v.shape[0] for i, d in enumerate(self.layers) for k, v in d.items()}
        if not sizes:
            raise ValueError("State has no tensors, so no batch size")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"State: tensors disagree on the batch size: {sizes}")
        return next(iter(sizes.values()))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        return sum(v.numel() * v.element_size() for d in self.layers for v in d.values())

    def __repr__(self) -> str:
        kinds = ",".join(self.layout)
        return f"State(batch_size={self.batch_size}, layers=[{kinds}], nbytes={self.nbytes})"

    # ---- rows -------------------------------------------------------------------------------
    def select(self, idx) -> State:
        """Rows `idx` (int, slice, list or 1-D index tensor); an int keeps the batch dimension."""
        if isinstance(idx, int):
            b = self.batch_size
            if not -b <= idx < b:
                raise IndexError(f"State row {idx} out of range for batch size {b}")
            idx = slice(idx % b, idx % b + 1)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
            if idx.dim() != 1:
                raise ValueError(
                    f"State.select: idx must be an int, slice or 1-D index, got shape {tuple(idx.shape)}"
                )
        layers = [_mixer(kind).select_state(d, idx) if d else {} for kind, d in zip(self.layout, self.layers)]
        return State(layers, self.layout, self.config_hash)

    def __getitem__(self, idx) -> State:
        return self.select(idx)

    @staticmethod
    def cat(states: Sequence[State]) -> State:
        """Batch states of the same model together (row order as given)."""
        states = list(states)
        if not states:
            raise ValueError("State.cat needs at least one State")
        first = states[0]
        for s in states[1:]:
            if s.layout != first.layout or s.config_hash != first.config_hash:
                raise ValueError(
                    "State.cat: states belong to different models "
                    f"(layout {s.layout} vs {first.layout}, "
                    f"config hash {s.config_hash} vs {first.config_hash})"
                )
        layers = []
        for i, kind in enumerate(first.layout):
            parts = [s.layers[i] for s in states]
            layers.append(_mixer(kind).cat_states(parts) if parts[0] else {})
        return State(layers, first.layout, first.config_hash)

    # ---- conversions ------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> State:
        """A new State on `device`; floating-point tensors cast to `dtype` (integer counters kept)."""

        def move(v: torch.Tensor) -> torch.Tensor:
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)

        return State([{k: move(v) for k, v in d.items()} for d in self.layers], self.layout, self.config_hash)

    def detach(self) -> State:
        return State(
            [{k: v.detach() for k, v in d.items()} for d in self.layers], self.layout, self.config_hash
        )

    def clone(self) -> State:
        return State(
            [{k: v.clone() for k, v in d.items()} for d in self.layers], self.layout, self.config_hash
        )

    def update_(self, other: State) -> None:
        """Make this object hold `other`'s tensors (how a model updates the State it was given)."""
        self.layers, self.layout, self.config_hash = other.layers, other.layout, other.config_hash

    def check_for(self, config_hash: str, layout: Sequence[str], batch_size: int | None = None) -> None:
        """Raise a clear error unless this state belongs to a model with this config hash and layout."""
        if self.config_hash is not None and self.config_hash != config_hash:
            raise ValueError(
                f"this State was made by a model with config hash {self.config_hash}, but it is being "
                f"used with a model whose config hash is {config_hash}: a state only fits the model "
                "(same SSMConfig) that produced it"
            )
        if list(layout) != self.layout:
            raise ValueError(f"State layout {self.layout} does not match the model's layers {list(layout)}")
        if batch_size is not None and self.batch_size != batch_size:
            raise ValueError(
                f"State has batch size {self.batch_size} but the input has batch size {batch_size}"
            )

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write `to_bytes()` to a file (atomic: a temporary name, then renamed)."""
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> State:
        """Read a State written by `save`; a missing, unreadable, truncated, corrupt or foreign file
        raises a clear error naming it."""
        path = os.fspath(path)
        check_readable(path, "State file")
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), device=device, source=f"State file {path}")

    # ---- bytes ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A safetensors file's bytes whose header carries the config hash, the layout and a checksum."""
        tensors = {f"layers.{i}.{k}": v for i, d in enumerate(self.layers) for k, v in d.items()}
        header = {
            "config_hash": self.config_hash,
            "layout": self.layout,
            "keys": [list(d) for d in self.layers],
        }
        meta = {"format": _FORMAT, "version": _VERSION, "state": json.dumps(header)}
        return safetensors_bytes(tensors, meta)

    @classmethod
    def from_bytes(
        cls, data: bytes, device: str | torch.device = "cpu", source: str = "State bytes"
    ) -> State:
        """The State whose `to_bytes()` gave `data`; truncated, corrupt or foreign bytes: a ValueError."""
        tensors, meta = loads_safetensors(data, source, fmt=_FORMAT)
        header = json.loads(meta["state"])
        layers = [
            {k: tensors[f"layers.{i}.{k}"].to(device) for k in keys} for i, keys in enumerate(header["keys"])
        ]
        return cls(layers, header["layout"], header["config_hash"])


def _mixer(kind: str) -> type:
    """The registered mixer class of a layout name (its cat_states / select_state)."""
    from ssmkit.layers.registry import mixer_class

    return mixer_class(kind)
