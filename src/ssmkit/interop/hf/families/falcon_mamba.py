"""Falcon-Mamba ("falcon_mamba", tiiuae/falcon-mamba-7b): transformers' Mamba layout, with dt, B and
C RMS-normalized (no weights, epsilon mixer_rms_eps) inside each mixer: ssmkit's Mamba with
`bcdt_rms_eps`. Same weight names as "mamba" (the norms' weights are not stored).
"""

from __future__ import annotations

from typing import Any

from ssmkit.interop.hf.families.mamba import MAMBA_DEFAULTS, MambaStack
from ssmkit.interop.hf.registry import register_family


@register_family
class FalconMamba(MambaStack):
    model_type = "falcon_mamba"
    hf_class = "FalconMambaForCausalLM"
    defaults = dict(MAMBA_DEFAULTS, mixer_rms_eps=1e-6)
    priority = 1
    bcdt_rms = True

    def mixer_kwargs(self, c: dict[str, Any]) -> dict[str, Any]:
        return {**super().mixer_kwargs(c), "bcdt_rms_eps": float(c["mixer_rms_eps"])}

    def mixer_fields(self, model) -> dict[str, Any]:
        eps = model.backbone.layers[0].mixer.bcdt_rms_eps
        return {**super().mixer_fields(model), "mixer_rms_eps": eps}
