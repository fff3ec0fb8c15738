"""Decoding through CUDA graphs: one captured model step per batch size, replayed once per token.

At small batch a decoding step is a few short kernels per layer, and launching them costs more than
running them. A CUDA graph records the whole step once (embedding, every layer's `step`, the final
norm, lm_head, and the copy of the new states into the graph's own state buffers) and replays it with
one launch. Sampling stays outside the graph.

A model qualifies when its state keeps its shapes from one step to the next (not attention's growing
KV cache): `fixed_size` checks that on the first, eager, step. Graphs are kept per model, keyed by
batch size, device, the states' dtypes and the weights' addresses (`graph_key`), for as long as the
model lives, so a later `generate`
at a batch size already seen replays at once, and moving or re-creating the weights captures anew.
`StaticStep(capture=False)` runs the same static-buffer step without a graph: the CPU path of the
tests, and the fallback when a capture fails.
"""

from __future__ import annotations

import warnings
import weakref

import torch

_WARMUP = 2
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # model -> {key: StaticStep}


def fixed_size(before: list[dict], after: list[dict]) -> bool:
    """Whether every state tensor kept its shape and dtype across one step."""
    if len(before) != len(after):
        return False
    for b, a in zip(before, after):
        if b.keys() != a.keys():
            return False
        if any(tuple(b[k].shape) != tuple(a[k].shape) or b[k].dtype != a[k].dtype for k in b):
            return False
    return True


def graph_key(model, state) -> tuple:
    """What a captured step depends on: batch size, device, the states' layout and the weights' storage."""
    layout = tuple((k, tuple(v.shape), v.dtype) for d in state.layers for k, v in sorted(d.items()))
    weights = tuple(p.data_ptr() for p in model.parameters())
    return state.batch_size, str(next(model.parameters()).device), layout, hash(weights)


class StaticStep:
    """model.step on static buffers: a token buffer, state buffers updated in place, a logits buffer."""

    def __init__(self, model, state, capture: bool):
        self._model = weakref.ref(model)                 # the cache entry must not keep its model alive
        self.vocab = model.config.vocab_size
        self.layers = [{k: v.clone() for k, v in d.items()} for d in state.layers]
        self.tok = torch.zeros(state.batch_size, dtype=torch.long, device=next(model.parameters()).device)
        self.graph = None
        self.logits = None
        self.in_use = False
        if capture:
            self._capture(state)

    def _step(self) -> torch.Tensor:
        model = self._model()
        hidden, new = model.backbone.step(self.tok, self.layers)
        for old, fresh in zip(self.layers, new):
            for k, v in old.items():
                v.copy_(fresh[k])
        return model.lm_head(hidden)[..., : self.vocab]

    def _capture(self, state) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(_WARMUP):                     # compiles the kernels; allocations settle
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self.logits = self._step()
        self.graph = graph
        self.load(state)                                 # the warm-up steps moved the buffers on

    def release(self) -> None:
        """Hand the buffers back: the next `static_step` may load another state into them."""
        self.in_use = False

    def load(self, state) -> None:
        """Copy a State's tensors into the static buffers."""
        for mine, theirs in zip(self.layers, state.layers):
            for k, v in mine.items():
                v.copy_(theirs[k])

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """Next-token logits (b, vocab_size) for tok (b,); the static state buffers advance by one token.
        The logits tensor is reused by the next call."""
        self.tok.copy_(tok)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        with torch.no_grad():
            return self._step()


def static_step(model, state, capture: bool) -> StaticStep | None:
    """The cached StaticStep for this model and state layout (captured on first use), loaded with `state`
    and marked in use until `release()`; None while another decode holds it (that one decodes eagerly)."""
    cache = _cache.setdefault(model, {})
    key = (graph_key(model, state), capture)
    runner = cache.get(key)
    if runner is not None and runner.in_use:
        return None
    if runner is None:
        try:
            runner = StaticStep(model, state, capture)
        except RuntimeError as e:                       # a layer whose step cannot be captured
            warnings.warn(f"decoding without CUDA graphs: capturing the step failed ({e})", RuntimeWarning,
                          stacklevel=3)
            runner = StaticStep(model, state, capture=False)
        cache[key] = runner
    runner.load(state)
    runner.in_use = True
    return runner
