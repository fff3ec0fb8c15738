"""SSMConfig, Backbone (a stack of blocks from a layer pattern) and the task heads."""

from ssmkit._lazy import lazy_exports

_EXPORTS = {
    "SSMConfig": "ssmkit.models.config",
    "Backbone": "ssmkit.models.backbone",
    "Block": "ssmkit.models.backbone",
    "SSMForCausalLM": "ssmkit.models.heads",
    "SSMForSequenceClassification": "ssmkit.models.heads",
    "SSMForForecasting": "ssmkit.models.heads",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
