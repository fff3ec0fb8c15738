"""nn.Modules on the mixer protocol (see base.py).

`ssmkit.layers.<Class>` imports the built-in layers below on first use; any other registered mixer
(ssmkit.layers.registry) is found by its class name.
"""

from ssmkit._lazy import lazy_exports
from ssmkit.layers.base import Mixer, state_nbytes  # noqa: F401  (re-exported, see __all__)
from ssmkit.layers.norm import RMSNorm  # noqa: F401

_EXPORTS = {
    "S4": "ssmkit.layers.s4",
    "S4D": "ssmkit.layers.s4d",
    "S5": "ssmkit.layers.s5",
    "H3": "ssmkit.layers.h3",
    "Hyena": "ssmkit.layers.hyena",
    "Mamba": "ssmkit.layers.mamba",
    "Mamba2": "ssmkit.layers.mamba2",
    "Attention": "ssmkit.layers.attention",
    "MLP": "ssmkit.layers.mlp",
    "GatedMLP": "ssmkit.layers.mlp",
    "MoE": "ssmkit.layers.mlp",
}
_builtin = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str):
    try:
        return _builtin(name)
    except AttributeError:
        import importlib

        registry = importlib.import_module("ssmkit.layers.registry")
        for mixer in registry.names():
            if registry.get(mixer).cls.__name__ == name:
                return registry.get(mixer).cls
        raise
__all__ = sorted([*_EXPORTS, "Mixer", "RMSNorm", "state_nbytes"])
