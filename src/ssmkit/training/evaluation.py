"""Validation of a causal LM: loss, perplexity, next-token accuracy, bits per byte; autocast choice.

result = evaluate(model, windows, batch_size=16, bytes_per_token=1.0)   # {"loss", "ppl", "acc", ...}
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.training import distributed as D

LN2 = math.log(2.0)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """None = no autocast. "auto": bf16 on a CUDA device that supports it, fp32 elsewhere."""
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    bytes_per_token: float | None = None,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict:
    """Next-token loss (nats), perplexity, accuracy and bits per byte on `windows` (n, seq_len).

    Under DDP each rank takes every world_size-th window and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    mine = windows[rank::world]
    for i in range(0, mine.shape[0], batch_size):
        ids = mine[i : i + batch_size].to(device)
        with autocast(device, amp_dtype):
            out = model(ids)
        logits = (out.logits if hasattr(out, "logits") else out)[:, :-1].float()  # (b, l-1, vocab)
        target = ids[:, 1:]
        sums[0] += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        sums[1] += (logits.argmax(-1) == target).sum()
        sums[2] += target.numel()
    D.all_reduce_sum(sums)
    model.train(was_training)
    loss = (sums[0] / sums[2]).item()
    result = {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "acc": (sums[1] / sums[2]).item(),
        "bits_per_token": loss / LN2,
    }
    if bytes_per_token:
        result["bpb"] = loss / LN2 / bytes_per_token
    return result
