"""AdamW with the SSM parameter groups, and the warm-up + cosine learning-rate schedule.

No weight decay on the SSM's dynamics and on scale/shift parameters: decaying A_log pulls the
decay rates of A toward 1 (the state stops forgetting), decaying dt_bias / log_dt moves the step
size, and decaying D, norms and biases has no regularizing meaning (Mamba and S4 train this way).
A parameter opts out with `param._no_weight_decay = True`; a layer may also hand over its own
groups with a `param_groups()` method returning [{"params": [...], <AdamW options>}, ...].
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", "A_re", "A_im", "log_A_real", "A_imag", "D", "dt_bias", "log_dt", "inv_dt")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (
        getattr(param, "_no_weight_decay", False)
        or leaf in NO_DECAY_NAMES
        or leaf == "bias"
        or param.ndim < 2
        or "norm" in name.lower()
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed matrices, no-decay params, any groups that layers define themselves]."""
    custom: list[dict] = []
    claimed: set[int] = set()
    for module in model.modules():
        hook = getattr(module, "param_groups", None)
        if module is model or not callable(hook):
            continue
        for group in hook():
            params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                custom.append({**group, "params": params})
    decay, no_decay, seen = [], [], set(claimed)
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups + custom if g["params"]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


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
