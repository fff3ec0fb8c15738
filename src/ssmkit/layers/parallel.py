"""Several mixers side by side on one input, their outputs summed: Falcon-H1's blocks (Mamba-2 and
attention in parallel, each with its own input and output multiplier).

    y = sum_name out_multipliers[name] * mixers[name](in_multipliers[name] * x)

Glossary (code name: meaning)
    mixers:          {layer name: its keyword arguments}, in order; each a registered mixer, built as
                     in a block (the SSMConfig fields its registration lists, e.g. attention's n_head,
                     are defaults its own keywords override)
    in_multipliers:  {layer name: factor on its input} (default 1)
    out_multipliers: {layer name: factor on its output} (default 1)

Parameters live under `branches.<layer name>.` (e.g. branches.mamba2.in_proj.weight).

State: every branch's state, its keys prefixed "<layer name>." ({"mamba2.conv", "mamba2.ssm",
"attention.k", "attention.v", "attention.pos"}); batching and selecting go through each branch's
own cat_states / select_state (attention left-pads its caches), found by the prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers import registry
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.registry import register

CONFIG_FIELDS = ("n_head", "n_kv_head", "rope_theta", "window")


def _split(state: StateDict) -> dict[str, StateDict]:
    """{"mamba2.conv": t, ...} -> {"mamba2": {"conv": t}, ...}."""
    out: dict[str, StateDict] = {}
    for key, v in state.items():
        name, _, sub = key.partition(".")
        out.setdefault(name, {})[sub] = v
    return out


def _join(parts: dict[str, StateDict]) -> StateDict:
    return {f"{name}.{k}": v for name, s in parts.items() for k, v in s.items()}


@register("parallel", config=CONFIG_FIELDS)
class Parallel(Mixer):
    """Mixers side by side on the same input, outputs summed with multipliers (Falcon-H1's blocks)."""

    def __init__(
        self,
        d_model: int,
        mixers: dict[str, dict] | None = None,
        in_multipliers: dict[str, float] | None = None,
        out_multipliers: dict[str, float] | None = None,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **config_defaults,
    ):
        super().__init__()
        mixers = {"mamba2": {}, "attention": {}} if mixers is None else mixers
        if not isinstance(mixers, dict) or not mixers:
            raise ValueError(f"Parallel: mixers must be a non-empty dict name -> kwargs, got {mixers!r}")
        unknown = sorted(set(config_defaults) - set(CONFIG_FIELDS))
        if unknown:
            raise TypeError(f"Parallel: unexpected arguments {unknown}")
        self.in_multipliers = self._factors(in_multipliers, mixers, "in_multipliers")
        self.out_multipliers = self._factors(out_multipliers, mixers, "out_multipliers")
        self.d_model, self.bidirectional = d_model, bidirectional
        branches = {}
        for name, kwargs in mixers.items():
            if name == "parallel":
                raise ValueError("Parallel: a branch cannot itself be 'parallel'")
            spec = registry.get(name)
            kw = {k: v for k, v in config_defaults.items() if k in spec.config}
            kw.update(kwargs, bidirectional=bidirectional, device=device, dtype=dtype)
            branches[name] = spec.cls(d_model, **kw)
        self.branches = nn.ModuleDict(branches)
        self.takes = {name: frozenset(registry.get(name).call_kwargs) for name in mixers}

    @staticmethod
    def _factors(given, mixers, what: str) -> dict[str, float]:
        given = {} if given is None else dict(given)
        unknown = sorted(set(given) - set(mixers))
        if unknown:
            raise ValueError(f"Parallel: {what} names {unknown}, not among the mixers {list(mixers)}")
        return {name: float(given.get(name, 1.0)) for name in mixers}

    def _input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        m = self.in_multipliers[name]
        return x if m == 1.0 else x * m

    def _sum(self, ys: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_name out_multipliers[name] * ys[name]; without autograd in place on the branches' outputs
        (fresh tensors), one buffer of the block's output instead of one per factor and sum."""
        out = None
        grad = torch.is_grad_enabled()
        for name, y in ys.items():
            m = self.out_multipliers[name]
            if out is None:
                out = y if m == 1.0 else (y * m if grad else y.mul_(m))
            else:
                out = out + y * m if grad else out.add_(y if m == 1.0 else y.mul_(m))
        return out

    # ---- the protocol ------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        branches = self.branches.items()
        return _join({n: m.init_state(batch_size, device=device, dtype=dtype) for n, m in branches})

    def forward(
        self,
        x: torch.Tensor,
        state: StateDict | None = None,
        return_state: bool = False,
        *,
        attention_mask: torch.Tensor | None = None,
    ):
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        if state is not None:
            self._check_state(state, x.shape[0])
        parts = _split(state) if state is not None else {}
        ys, states = {}, {}
        for name, mixer in self.branches.items():
            kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
            if kw and "attention_mask" not in self.takes[name]:
                raise TypeError(f"Parallel: the {name!r} branch takes no attention_mask")
            if return_state:
                ys[name], states[name] = mixer(
                    self._input(name, x), state=parts.get(name), return_state=True, **kw
                )
            else:
                ys[name] = mixer(self._input(name, x), state=parts.get(name), **kw)
        y = self._sum(ys)
        return (y, _join(states)) if return_state else y

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        parts, ys, states = _split(state), {}, {}
        for name, mixer in self.branches.items():
            ys[name], states[name] = mixer.step(self._input(name, x_t), parts[name])
        return self._sum(ys), _join(states)

    def step_(self, x_t: torch.Tensor, state: StateDict) -> torch.Tensor:
        """step, each branch writing its part of `state` (in place where it decodes in place)."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty[0]
        parts = _split(state)
        ys = {name: mixer.step_(self._input(name, x_t), parts[name]) for name, mixer in self.branches.items()}
        state.update(_join(parts))
        return self._sum(ys)

    # ---- batching: each branch's own rules ---------------------------------------------------
    @classmethod
    def cat_states(cls, states: list[StateDict]) -> StateDict:
        split = [_split(s) for s in states]
        names = list(split[0])
        for s in split[1:]:
            if list(s) != names:
                raise ValueError(f"Parallel.cat_states: states of different branches {names} and {list(s)}")
        return _join({n: registry.mixer_class(n).cat_states([s[n] for s in split]) for n in names})

    @classmethod
    def select_state(cls, state: StateDict, idx) -> StateDict:
        return _join({n: registry.mixer_class(n).select_state(s, idx) for n, s in _split(state).items()})
