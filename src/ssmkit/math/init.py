"""Step-size initializations shared by the layers.

S4, S4D, S5 and H3 draw their step sizes Delta log-uniform in [dt_min, dt_max] and learn log Delta;
Mamba and Mamba-2 draw Delta the same way and store it through the inverse softplus (the bias that
softplus maps back to Delta).
"""

from __future__ import annotations

import math

import torch


def log_uniform_log_dt(n: int, dt_min: float, dt_max: float, dtype=torch.float64) -> torch.Tensor:
    """log Delta for n step sizes, Delta ~ log-uniform in [dt_min, dt_max]: (n,)."""
    return torch.rand(n, dtype=dtype) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Delta ~ log-uniform in [dt_min, dt_max] (at least dt_init_floor), through the inverse softplus:
    softplus(returned) == Delta. (n,) float32."""
    dt = torch.exp(log_uniform_log_dt(n, dt_min, dt_max, torch.float32)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))
