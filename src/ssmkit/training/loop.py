"""The training loop: any nn.Module whose forward(input_ids, labels=...) returns an object with .loss.

    result = train(model, batches, cfg, val_windows=windows, bytes_per_token=1.0, out_dir="runs/x")

One optimizer step = `grad_accum` micro-batches (loss / grad_accum each; DDP syncs only on the last),
then gradient clipping, AdamW (SSM parameter groups) and the warm-up + cosine schedule. Every
`eval_every` steps: validation loss, bits per byte, perplexity, next-token accuracy. Every
`save_every` steps and at the end: an atomic checkpoint; a run started again with the same out_dir
resumes from it at the same step, same data, same RNG, and ends with the same weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.training import distributed as D
from ssmkit.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, save_state
from ssmkit.training.config import TrainConfig
from ssmkit.training.optim import build_optimizer, build_scheduler, warmup_cosine_time
from ssmkit.training.progress import MetricsLog, Progress

LN2 = math.log(2.0)


@dataclass
class TrainResult:
    step: int
    stopped: str  # "max_steps" | "max_time"
    elapsed: float  # seconds of training in this process
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    tokens: int = 0  # tokens seen in this process (all ranks)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """None = no autocast. "auto": bf16 on a CUDA device that supports it, fp32 elsewhere."""
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each block of `model.backbone.layers` (or `model.layers`) in backward; returns the count."""
    from torch.utils.checkpoint import checkpoint

    inner = D.unwrap(model)
    if hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable()
        return -1
    blocks = getattr(getattr(inner, "backbone", inner), "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            "gradient_checkpointing needs a model with backbone.layers or layers (an nn.ModuleList)"
        )
    for block in blocks:
        forward = block.forward

        def wrapped(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = wrapped
    return len(blocks)


def set_time_lr(optimizer, cfg: TrainConfig, step: int, time_fraction: float, info: D.DistInfo) -> None:
    """schedule="time": LR from the fraction of max_time spent (rank 0's clock under DDP)."""
    if info.enabled:
        t = torch.tensor([time_fraction if info.is_main else 0.0], dtype=torch.float64, device=info.device)
        time_fraction = float(D.all_reduce_sum(t).item())
    factor = warmup_cosine_time(step, cfg.warmup_steps, time_fraction, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


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
        with _autocast(device, amp_dtype):
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops before the update that would spread it."""


def check_finite(out, step: int, desc: str) -> None:
    """Raise TrainingDiverged, naming the step and the loss, unless the step's loss is finite."""
    if bool(torch.isfinite(out.loss).all()):
        return
    aux = getattr(out, "aux_loss", None)
    bad_aux = aux is not None and not bool(torch.isfinite(aux).all())
    which = "the MoE load-balancing loss" if bad_aux else "the loss"
    raise TrainingDiverged(
        f"{desc}: {which} is {float(out.loss.detach().float().mean())} at step {step} (non-finite); training "
        "stopped before this update, so the last checkpoint holds finite weights. Lower the learning "
        "rate, set grad_clip, or train in float32."
    )


def train(
    model: nn.Module,
    batches,
    cfg: TrainConfig,
    *,
    val_windows: torch.Tensor | None = None,
    bytes_per_token: float | None = None,
    out_dir: str | None = None,
    info: D.DistInfo | None = None,
    evaluator: Callable[[nn.Module], dict] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` on `batches.get(step, micro) -> {"input_ids", "labels"}` for cfg.max_steps steps.

    `model` should already be on `info.device` (1 process: cfg.device); it is wrapped in DDP/FSDP here
    when running under torchrun. `on_step(step, loss)` runs after each optimizer step (tests use it
    to kill a run). `evaluator(model) -> {"loss": ..., ...}` replaces the LM evaluation on `val_windows`
    (classification, forecasting). Returns the losses and evaluations of this process's part of the run.
    """
    info = info or D.DistInfo(device=D.resolve_device(cfg.device))
    device = info.device
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir else None
    resume_from = ckpt_path if (ckpt_path and cfg.resume and os.path.isfile(ckpt_path)) else None
    fsdp = info.enabled and cfg.distributed == "fsdp"
    if fsdp and device.type != "cuda":
        raise ValueError(
            "distributed: fsdp needs CUDA devices (FSDP does not run on CPU); use distributed: ddp"
        )
    start = 0
    if not fsdp:  # the optimizer holds the model's own parameters; DDP shares them
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        if resume_from:
            start = load_checkpoint(resume_from, model, optimizer, scheduler, map_location=device)["step"]
        wrapped = D.wrap(model, info, cfg.distributed)
    else:  # FSDP flattens and shards the parameters: full weights in first, optimizer on the shards
        ckpt = load_checkpoint(resume_from, model, map_location="cpu") if resume_from else None
        wrapped = D.wrap(model, info, "fsdp")
        optimizer = build_optimizer(wrapped, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        if ckpt is not None:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            optimizer.load_state_dict(FSDP.optim_state_dict_to_load(wrapped, optimizer, ckpt["optimizer"]))
            scheduler.load_state_dict(ckpt["scheduler"])
            start = ckpt["step"]
    amp = autocast_dtype(cfg.dtype, device)
    metrics = MetricsLog(
        os.path.join(out_dir, "metrics.jsonl") if (out_dir and info.is_main) else None,
        tensorboard=cfg.tensorboard,
    )
    progress = Progress(
        cfg.max_steps,
        start,
        desc,
        cfg.log_every,
        enabled=info.is_main,
        max_time=cfg.max_time,
        by_time=cfg.schedule == "time",
    )
    result = TrainResult(step=start, stopped="max_steps", elapsed=0.0)
    t0 = time.perf_counter()

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        if fsdp:  # every rank takes part in gathering the full state; rank 0 writes it
            model_state, optim_state = D.fsdp_full_state(wrapped, optimizer)
            if info.is_main:
                save_state(ckpt_path, model_state, optim_state, scheduler.state_dict(), step)
        elif info.is_main:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, step)
        D.barrier()

    def run_eval(step: int) -> None:
        if evaluator is not None:
            ev = evaluator(wrapped)
        elif val_windows is not None:
            ev = evaluate(wrapped, val_windows, cfg.batch_size, bytes_per_token, device, amp)
        else:
            return
        ev = {**ev, "step": step, "time": time.perf_counter() - t0, "tokens": result.tokens}
        result.evals.append(ev)
        metrics.log(step, "val", **{k: v for k, v in ev.items() if k != "step"})
        bpb = f" bpb {ev['bpb']:.3f}" if "bpb" in ev else ""
        acc = f" acc {ev['acc']:.3f}" if "acc" in ev else ""
        progress.write(f"{desc} step {step}: val loss {ev['loss']:.4f}{bpb}{acc}")

    wrapped.train()
    step = start
    try:
        for step in range(start + 1, cfg.max_steps + 1):
            loss_sum = torch.zeros((), device=device)
            n_tokens = 0
            for micro in range(cfg.grad_accum):
                batch = {k: v.to(device) for k, v in batches.get(step - 1, micro).items()}
                sync = micro == cfg.grad_accum - 1 or not info.enabled or D.is_fsdp(wrapped)
                ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                with ctx:
                    with _autocast(device, amp):
                        out = wrapped(**batch)
                    check_finite(out, step, desc)
                    loss = out.loss.float() / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
                first = next(iter(batch.values()))  # input_ids / inputs: (b, l, ...)
                n_tokens += first.shape[0] * (first.shape[1] if first.ndim > 1 else 1) * info.world_size
            if cfg.grad_clip:
                if D.is_fsdp(wrapped):
                    wrapped.clip_grad_norm_(cfg.grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            if cfg.schedule == "time":
                set_time_lr(optimizer, cfg, step - 1, (time.perf_counter() - t0) / cfg.max_time, info)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if info.enabled:
                D.all_reduce_sum(loss_sum)
                loss_sum /= info.world_size
            loss_value = loss_sum.item()
            result.step, result.tokens = step, result.tokens + n_tokens
            result.train_losses.append((step, loss_value))
            progress.update(step, n_tokens, loss_value, lr)
            if step % max(1, cfg.log_every) == 0:
                metrics.log(step, "train", loss=loss_value, lr=lr, tokens_per_s=progress.rate())
            if on_step is not None:
                on_step(step, loss_value)
            last = step == cfg.max_steps
            out_of_time = bool(cfg.max_time) and time.perf_counter() - t0 >= cfg.max_time
            if out_of_time and info.enabled:  # every rank must stop at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                out_of_time = bool(D.all_reduce_sum(flag).item() > 0)
            if last or out_of_time or (cfg.eval_every and step % cfg.eval_every == 0):
                run_eval(step)
            if last or out_of_time or (cfg.save_every and step % cfg.save_every == 0):
                save(step)
            if out_of_time and not last:
                result.stopped = "max_time"
                break
    finally:
        progress.close()
        metrics.close()
    result.elapsed = time.perf_counter() - t0
    return result
