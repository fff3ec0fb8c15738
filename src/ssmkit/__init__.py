"""ssmkit: state space sequence models on PyTorch.

Subpackages, dependencies pointing down: math -> ops -> layers -> models -> inference/interop/training -> cli.
"""

from __future__ import annotations

import os
import sys

# ssmkit runs torch's OpenMP pool and numba's side by side. OpenMP's default lets idle workers spin, and
# a spinning pool takes the cores the other one needs: a small Mamba's training step took 0.74 s with it
# and 0.16 s with passive waiting (H3: 2.07 vs 0.07 s; 2 threads on a loaded 2-core machine). The policy
# is read when torch loads its OpenMP runtime, so this only takes effect when ssmkit is imported first
# (the CLI, the tests, the benchmarks); a user's own OMP_WAIT_POLICY is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ssmkit._lazy import lazy_exports  # noqa: E402

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
