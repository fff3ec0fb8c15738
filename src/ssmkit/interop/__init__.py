"""Hugging Face checkpoints in and out (transformers imported lazily): see `ssmkit.interop.hf`."""

from ssmkit._lazy import lazy_exports

_EXPORTS = {"from_hf": "ssmkit.interop.hf", "to_hf": "ssmkit.interop.hf"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
