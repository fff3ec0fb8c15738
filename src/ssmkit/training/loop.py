"""The training loop: any nn.Module whose forward(input_ids, labels=...) returns an object with .loss.

    result = train(model, batches, cfg, val_windows=windows, bytes_per_token=1.0, out_dir="runs/x")

One optimizer step = `grad_accum` micro-batches (loss / grad_accum each; DDP syncs only on the last),
then gradient clipping, AdamW (SSM parameter groups) and the warm-up + cosine schedule. Every
`eval_every` steps: validation loss, bits per byte, perplexity, next-token accuracy. Every
`save_every` steps and at the end: an atomic checkpoint.

A run started again with the same out_dir resumes from its checkpoint ("resuming from step N
(checkpoint ...)" on stderr) at the same step, same data, same RNG, and ends with the same weights;
metrics.jsonl keeps only the rows up to the checkpoint's step, so no step is logged twice. A run whose
checkpoint is already at max_steps trains nothing (stopped="finished"). SIGINT (Ctrl-C) or SIGTERM
finishes the step in progress, writes a checkpoint and raises TrainingInterrupted naming it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from ssmkit.training import distributed as D
from ssmkit.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    model_config,
    save_checkpoint,
    save_state,
)
from ssmkit.training.config import TrainConfig
from ssmkit.training.evaluation import autocast, autocast_dtype, evaluate
from ssmkit.training.interrupt import StopSignals, TrainingInterrupted
from ssmkit.training.optim import build_optimizer, build_scheduler, warmup_cosine_time
from ssmkit.training.progress import MetricsLog, Progress


@dataclass
class TrainResult:
    step: int
    stopped: str  # "max_steps" | "max_time" | "finished" (the checkpoint was at max_steps already)
    elapsed: float  # seconds of training in this process
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    tokens: int = 0  # tokens seen in this process (all ranks)
    checkpoint: str | None = None  # the run's checkpoint file (None without an out_dir)
    resumed_from: int = 0  # the checkpoint's step this process started from (0: from scratch)


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


class _Session:
    """One process's part of a run: the (wrapped) model, its optimizer and schedule restored from the
    checkpoint, the clock, the progress display and the metrics log."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo, out_dir: str | None, desc: str):
        self.model, self.cfg, self.info, self.desc = model, cfg, info, desc
        self.device = info.device
        self.fsdp = info.enabled and cfg.distributed == "fsdp"
        if self.fsdp and self.device.type != "cuda":
            raise ValueError(
                "distributed: fsdp needs CUDA devices (FSDP does not run on CPU); use distributed: ddp"
            )
        self.ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir else None
        resume = (
            self.ckpt_path if (self.ckpt_path and cfg.resume and os.path.isfile(self.ckpt_path)) else None
        )
        self.start = self._build_and_restore(resume)
        if resume and info.is_main and self.start < cfg.max_steps:
            print(
                f"{desc}: resuming from step {self.start} (checkpoint {resume})", file=sys.stderr, flush=True
            )
        self.amp = autocast_dtype(cfg.dtype, self.device)
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl") if (out_dir and info.is_main) else None
        self.t0 = time.perf_counter()

    def _build_and_restore(self, resume: str | None) -> int:
        """Optimizer, scheduler and the DDP/FSDP wrapper; their state from `resume`; the start step."""
        cfg, model = self.cfg, self.model
        if not self.fsdp:  # the optimizer holds the model's own parameters; DDP shares them
            self.optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
            self.scheduler = build_scheduler(
                self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio
            )
            start = 0
            if resume:
                start = load_checkpoint(resume, model, self.optimizer, self.scheduler, self.device)["step"]
            self.wrapped = D.wrap(model, self.info, cfg.distributed)
            return start
        # FSDP flattens and shards the parameters: full weights in first, optimizer on the shards
        ckpt = load_checkpoint(resume, model, map_location="cpu") if resume else None
        self.wrapped = D.wrap(model, self.info, "fsdp")
        self.optimizer = build_optimizer(self.wrapped, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        if ckpt is None:
            return 0
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        self.optimizer.load_state_dict(
            FSDP.optim_state_dict_to_load(self.wrapped, self.optimizer, ckpt["optimizer"])
        )
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return ckpt["step"]

    def open_logs(self) -> None:
        cfg = self.cfg
        self.metrics = MetricsLog(self.metrics_path, tensorboard=cfg.tensorboard, keep_through=self.start)
        self.progress = Progress(
            cfg.max_steps,
            self.start,
            self.desc,
            cfg.log_every,
            enabled=self.info.is_main,
            max_time=cfg.max_time,
            by_time=cfg.schedule == "time",
        )

    def optimizer_step(self, batches, step: int) -> tuple[float, float, int]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, the lr used, tokens seen)."""
        cfg, info, wrapped = self.cfg, self.info, self.wrapped
        loss_sum = torch.zeros((), device=self.device)
        n_tokens = 0
        for micro in range(cfg.grad_accum):
            batch = {k: v.to(self.device) for k, v in batches.get(step - 1, micro).items()}
            sync = micro == cfg.grad_accum - 1 or not info.enabled or D.is_fsdp(wrapped)
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                with autocast(self.device, self.amp):
                    out = wrapped(**batch)
                check_finite(out, step, self.desc)
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
            set_time_lr(self.optimizer, cfg, step - 1, self.elapsed() / cfg.max_time, info)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if info.enabled:
            D.all_reduce_sum(loss_sum)
            loss_sum /= info.world_size
        return loss_sum.item(), lr, n_tokens

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stop_now(self, signals: StopSignals) -> tuple[bool, int | None]:
        """(out of time, the stop signal) as every rank agrees on them, so all stop at the same step."""
        out_of_time = bool(self.cfg.max_time) and self.elapsed() >= self.cfg.max_time
        signum = signals.requested
        if self.info.enabled:
            flags = D.all_reduce_sum(
                torch.tensor([float(out_of_time), float(signum is not None)], device=self.device)
            )
            out_of_time = bool(flags[0] > 0)
            if flags[1] > 0 and signum is None:  # another rank was signalled: stop with it
                signum = signal.SIGTERM
        return out_of_time, signum

    def save(self, step: int) -> None:
        if self.ckpt_path is None:
            return
        if self.fsdp:  # every rank takes part in gathering the full state; rank 0 writes it
            model_state, optim_state = D.fsdp_full_state(self.wrapped, self.optimizer)
            if self.info.is_main:
                extra = {"model_config": model_config(self.model)}
                save_state(self.ckpt_path, model_state, optim_state, self.scheduler.state_dict(), step, extra)
        elif self.info.is_main:
            save_checkpoint(self.ckpt_path, self.model, self.optimizer, self.scheduler, step)
        D.barrier()

    def evaluate(self, step: int, result: TrainResult, evaluator, val_windows, bytes_per_token) -> None:
        if evaluator is not None:
            ev = evaluator(self.wrapped)
        elif val_windows is not None:
            ev = evaluate(
                self.wrapped, val_windows, self.cfg.batch_size, bytes_per_token, self.device, self.amp
            )
        else:
            return
        ev = {**ev, "step": step, "time": self.elapsed(), "tokens": result.tokens}
        result.evals.append(ev)
        self.metrics.log(step, "val", **{k: v for k, v in ev.items() if k != "step"})
        bpb = f" bpb {ev['bpb']:.3f}" if "bpb" in ev else ""
        acc = f" acc {ev['acc']:.3f}" if "acc" in ev else ""
        self.progress.write(f"{self.desc} step {step}: val loss {ev['loss']:.4f}{bpb}{acc}")

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()


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
    eval_at: Collection[int] = (),
) -> TrainResult:
    """Train `model` on `batches.get(step, micro) -> {"input_ids", "labels"}` for cfg.max_steps steps.

    `model` should already be on `info.device` (1 process: cfg.device); it is wrapped in DDP/FSDP here
    when running under torchrun. `on_step(step, loss)` runs after each optimizer step (tests use it
    to kill a run). `evaluator(model) -> {"loss": ..., ...}` replaces the LM evaluation on `val_windows`
    (classification, forecasting); `eval_at`: steps to evaluate at besides every `eval_every` and the
    last. Returns the losses and evaluations of this process's part of the run; raises
    TrainingInterrupted after checkpointing on SIGINT / SIGTERM.
    """
    info = info or D.DistInfo(device=D.resolve_device(cfg.device))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    s = _Session(model, cfg, info, out_dir, desc)
    result = TrainResult(
        step=s.start, stopped="max_steps", elapsed=0.0, checkpoint=s.ckpt_path, resumed_from=s.start
    )
    if s.start >= cfg.max_steps:
        result.stopped = "finished"
        return result
    s.open_logs()
    s.wrapped.train()
    with StopSignals(announce=info.is_main) as signals:
        try:
            for step in range(s.start + 1, cfg.max_steps + 1):
                loss, lr, n_tokens = s.optimizer_step(batches, step)
                result.step, result.tokens = step, result.tokens + n_tokens
                result.train_losses.append((step, loss))
                s.progress.update(step, n_tokens, loss, lr)
                if step % max(1, cfg.log_every) == 0:
                    s.metrics.log(step, "train", loss=loss, lr=lr, tokens_per_s=s.progress.rate())
                if on_step is not None:
                    on_step(step, loss)
                out_of_time, signum = s.stop_now(signals)
                end = step == cfg.max_steps or out_of_time
                if not signum and (end or step in eval_at or (cfg.eval_every and step % cfg.eval_every == 0)):
                    s.evaluate(step, result, evaluator, val_windows, bytes_per_token)
                if end or signum or (cfg.save_every and step % cfg.save_every == 0):
                    s.save(step)
                if signum:
                    raise TrainingInterrupted(signum, step, s.ckpt_path)
                if out_of_time and step < cfg.max_steps:
                    result.stopped = "max_time"
                    break
        finally:
            s.close()
    result.elapsed = s.elapsed()
    return result
