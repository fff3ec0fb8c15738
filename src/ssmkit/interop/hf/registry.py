"""The family registry: one `Family` subclass per transformers `model_type`, declared where it is defined.

    @register_family
    class FalconMamba(Family):
        model_type = "falcon_mamba"
        hf_class = "FalconMambaForCausalLM"
        defaults = {...}                     # transformers' defaults of the fields it reads

        def config(self, c) -> SSMConfig     # config.json (over `defaults`) -> SSMConfig
        def weights(self, model, c) -> Table # checkpoint keys <-> ssmkit keys, both ways
        def hf_config(self, model) -> dict   # only where the family round-trips (to_hf)

Every module of `ssmkit.interop.hf.families` is imported on the first lookup, so a new family is one
file there (and its test), nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ssmkit.interop.hf.table import Table

_FAMILIES: dict[str, Family] = {}
_discovered = False


class Family:
    """One transformers model_type in ssmkit's terms. Subclasses set the class attributes and methods."""

    model_type: str = ""
    hf_class: str = ""
    """The transformers class to_hf names in config.json's architectures."""
    defaults: dict[str, Any] = {}
    """transformers' defaults of the config fields `config` reads, for a config.json that leaves one out."""
    ignored: tuple[str, ...] = ()
    """Regexes of checkpoint keys with no ssmkit counterpart (e.g. multi-token-prediction heads)."""
    priority: int = 100
    """to_hf without a model_type tries the families in this order (lower first)."""

    def config(self, c: dict[str, Any]):
        """The SSMConfig of a transformers config dict (already merged over `defaults`)."""
        raise NotImplementedError

    def weights(self, model, c: dict[str, Any]) -> Table:
        """The weight table of `model` (an SSMForCausalLM built from this family's config `c`)."""
        raise NotImplementedError

    def prepare(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's tensors in the one layout `weights` names (e.g. from an older or newer
        layout of the same family); the default keeps them as they are."""
        return tensors

    def hf_config(self, model) -> dict[str, Any]:
        """The transformers config dict of `model`; a ValueError names what has no counterpart."""
        raise ValueError(f"{self.model_type} models are read only: to_hf does not write them")

    def table(self, model) -> Table:
        return Table(model, self.ignored)


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: `cls` reads and writes transformers checkpoints of `cls.model_type`."""
    name = cls.model_type
    if not name:
        raise ValueError(f"{cls.__name__} must set model_type")
    old = _FAMILIES.get(name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"model_type {name!r} is taken by {type(old).__module__}.{type(old).__qualname__}")
    _FAMILIES[name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import ssmkit.interop.hf.families as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def names() -> list[str]:
    """Every supported model_type, sorted."""
    _discover()
    return sorted(_FAMILIES)


def get(model_type: str) -> Family:
    """The family of `model_type`; an unsupported one raises a ValueError listing the supported ones."""
    if model_type not in _FAMILIES:
        _discover()
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"from_hf: model_type {model_type!r} is not supported; supported: {', '.join(names())}"
        ) from None


def in_priority_order() -> list[Family]:
    _discover()
    return sorted(_FAMILIES.values(), key=lambda f: (f.priority, f.model_type))
