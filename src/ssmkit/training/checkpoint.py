"""Training checkpoints: model, optimizer, scheduler, data position (the step) and every RNG.

Written atomically (`ssmkit._files.write_atomic`: a temporary name in the same directory, flushed,
renamed over the old one), so a crash at any moment leaves the previous checkpoint or the new one,
never half a file. The file carries a checksum of its content, checked on load: a damaged checkpoint
is one clear error naming it, not a run resumed from garbage. It also records the model's config
(when the model has one), so resuming with another model is refused saying what differs.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ssmkit._files import check_digest, check_readable, digest, write_atomic
from ssmkit.training.config import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in np_state["state"].items()
            },
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np_state = {
        **np_state,
        "state": {
            k: (np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v)
            for k, v in np_state["state"].items()
        },
    }
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict, path: str) -> None:
    """torch.save of {**obj, "sha256": digest(obj)} to `path` through a temporary file and a rename."""
    payload = {**obj, "sha256": digest(obj)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    write_atomic(path, write)


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict at `path`, its checksum verified; clear errors naming the file."""
    check_readable(path, "training checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training checkpoint {path} (truncated or corrupt?): {e}") from e
    stored = ckpt.pop("sha256", None)
    check_digest(stored, ckpt, f"training checkpoint {path}")
    return ckpt


def save_state(
    path: str, model_state: dict, optim_state: dict, sched_state: dict, step: int, extra: dict | None = None
) -> None:
    """One checkpoint file from state dicts (plus this process's RNG states)."""
    atomic_save(
        {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": sched_state,
            "step": step,
            "rng": rng_state(),
            "extra": extra or {},
        },
        path,
    )


def model_config(model) -> dict | None:
    """The config dict of a model that has one (`model.config.to_dict()`), else None."""
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    return to_dict() if callable(to_dict) else None


def save_checkpoint(path: str, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    extra = {**(extra or {}), "model_config": model_config(model)}
    save_state(path, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), step, extra)


class ResumeMismatch(ConfigError):
    """The checkpoint to resume from was written for another model."""


def _differences(saved: dict, current: dict) -> list[str]:
    """ "key: old -> new" for every key whose value differs ("unset" where a side lacks it)."""

    def show(d: dict, k) -> str:
        return repr(d[k]) if k in d else "unset"

    keys = sorted(set(saved) | set(current), key=str)
    return [
        f"{k}: {show(saved, k)} -> {show(current, k)}" for k in keys if show(saved, k) != show(current, k)
    ]


def check_same_model(ckpt: dict, model, path: str) -> None:
    """Raise ResumeMismatch, saying what differs, unless `model` is the model `ckpt` was written for
    (by its recorded config, else by its parameters' names and shapes)."""
    saved, current = (ckpt.get("extra") or {}).get("model_config"), model_config(model)
    if saved is not None and current is not None:
        diffs = _differences(saved, current)
    else:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
        diffs = [f"parameter {d}" for d in _differences(stored, shapes)]
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ResumeMismatch(
            f"cannot resume from {path}: it was written for another model ({shown}); to start afresh "
            "use --no-resume (resume: false) or another --out (out_dir)"
        )


def load_checkpoint(path: str, model, optimizer=None, scheduler=None, map_location="cpu") -> dict:
    """Restore into the given objects; returns the checkpoint dict (step, extra, ...). A checkpoint
    of another model raises ResumeMismatch before anything is loaded."""
    ckpt = read_checkpoint(path, map_location)
    check_same_model(ckpt, model, path)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return ckpt
