"""ssmkit: state space sequence models on PyTorch.

Subpackages, dependencies pointing down: math -> ops -> layers -> models -> inference/interop/training -> cli.
"""

from __future__ import annotations

from ssmkit._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "math": "ssmkit.math",
    "ops": "ssmkit.ops",
    "layers": "ssmkit.layers",
    "models": "ssmkit.models",
    "inference": "ssmkit.inference",
    "interop": "ssmkit.interop",
    "training": "ssmkit.training",
    "SSMConfig": "ssmkit.models.config",
    "Backbone": "ssmkit.models.backbone",
    "SSMForCausalLM": "ssmkit.models.heads",
    "SSMForSequenceClassification": "ssmkit.models.heads",
    "SSMForForecasting": "ssmkit.models.heads",
    "State": "ssmkit.inference.state",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
