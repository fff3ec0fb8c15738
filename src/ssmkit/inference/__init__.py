"""The whole model's recurrent state (State), generation and streaming."""

from ssmkit._lazy import lazy_exports

_EXPORTS = {
    "State": "ssmkit.inference.state",
    "generate": "ssmkit.inference.generate",
    "return_freed_memory": "ssmkit.inference.memory",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
