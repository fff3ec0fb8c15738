"""The layer registry: the one place a mixer declares itself.

    @register("mamba2")
    class Mamba2(Mixer): ...

    @register("attention", config=("n_head", "n_kv_head", "rope_theta", "window"))
    class Attention(Mixer): ...

A registration is everything the rest of ssmkit needs to know about a mixer, read from the class:
    name            its name in layer patterns (`SSMConfig.layers="mamba2*3,attention"`)
    cls             the Mixer subclass; built as `cls(d_model, **kwargs)`
    config          SSMConfig fields passed to the constructor as defaults (layer_kwargs win)
    call_kwargs     per-call keywords its `forward` takes (keyword-only parameters, e.g. seq_idx,
                    attention_mask): Backbone passes those, and only those, through
    summary         the first line of the class docstring (`ssmkit info`, the docs)
The class itself carries the rest: `no_weight_decay` (names of its parameters trained without weight
decay) and `cat_states` / `select_state` (how its states are batched and split).

Every module of `ssmkit.layers` is imported on the first lookup, so a new mixer is one file in this
package and nothing else is edited; a mixer defined elsewhere (a plugin, a test) registers when its
module is imported.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

_REGISTRY: dict[str, MixerSpec] = {}
_discovered = False


@dataclass(frozen=True)
class MixerSpec:
    name: str
    cls: type
    config: tuple[str, ...] = ()

    @property
    def call_kwargs(self) -> tuple[str, ...]:
        params = inspect.signature(self.cls.forward).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.split("\n", 1)[0].strip()


def register(name: str, *, config: tuple[str, ...] = ()):
    """Class decorator: make `cls` the mixer called `name` in layer patterns."""
    if not isinstance(name, str) or not name or name != name.strip().lower() or "," in name or "*" in name:
        raise ValueError(f"a mixer name must be a lower-case word without ',' or '*', got {name!r}")

    def decorate(cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"mixer name {name!r} is taken by {old.cls.__module__}.{old.cls.__qualname__}")
        _REGISTRY[name] = MixerSpec(name, cls, tuple(config))
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a registration (tests that register a toy mixer clean up with this)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import ssmkit.layers as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in ("base", "registry"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def names() -> list[str]:
    """Every registered mixer name, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> MixerSpec:
    """The registration of `name`; an unknown name raises a ValueError listing the known ones."""
    if name not in _REGISTRY:
        _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown layer name {name!r}; known: {names()}") from None


def mixer_class(name: str) -> type:
    return get(name).cls
