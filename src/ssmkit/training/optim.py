"""AdamW with the SSM parameter groups, and the warm-up + cosine learning-rate schedule.

No weight decay on the SSM's dynamics and on scale/shift parameters: decaying A_log pulls the
decay rates of A toward 1 (the state stops forgetting), decaying dt_bias / log_dt moves the step
size, and decaying D, norms and biases has no regularizing meaning (Mamba and S4 train this way).
A module lists its own parameters that take no weight decay in `no_weight_decay` (every mixer
declares them, see `ssmkit.layers.base.Mixer`); biases, vectors and norm weights never take it. A
module may also hand over groups with their own options (S4's smaller learning rate) with a
`param_groups()` method returning [{"params": [...], <AdamW options>}, ...].
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _declared_no_decay(model: nn.Module) -> set[int]:
    """ids of the parameters that their module lists in `no_weight_decay`."""
    ids = set()
    for module in model.modules():
        for name in getattr(module, "no_weight_decay", ()):
            p = module._parameters.get(name)
            if p is not None:
                ids.add(id(p))
    return ids


def _no_decay(name: str, param: nn.Parameter, declared: set[int]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return id(param) in declared or leaf == "bias" or param.ndim < 2 or "norm" in name.lower()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed matrices, no-decay params, any groups that layers define themselves]."""
    custom: list[dict] = []
    claimed: set[int] = set()
    for module in model.modules():
        hook = getattr(module, "param_groups", None)
        if not callable(hook):
            continue
        for group in hook():
            params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                custom.append({**group, "params": params})
    decay, no_decay, seen = [], [], set(claimed)
    declared = _declared_no_decay(model)
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (no_decay if _no_decay(name, p, declared) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups + custom if g["params"]]


_FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; torch's fused kernel (one call for every tensor) where it runs: a small
    model's step otherwise spends more time launching per-tensor ops than updating weights."""
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """The LR multiplier at `step`: linear from 1/warmup to 1, then cosine down to min_lr_ratio."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_time(step: int, warmup_steps: int, time_fraction: float, min_lr_ratio: float) -> float:
    """As warmup_cosine, but the cosine follows the fraction of a time budget spent (0..1)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, max(0.0, time_fraction))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, max_steps, min_lr_ratio)
    )
