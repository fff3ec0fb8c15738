"""What every reproduction entry shares: hardware record, seeded model building, a budgeted training
loop, token accuracy (optionally streamed through the recurrent state in chunks), JSON results.

An entry module defines CONFIGS = {"tiny": ..., "small": ..., "full": ...}, `run(cfg) -> dict` and
`markdown(result) -> str`. A row whose layer does not import (or cannot be built) is recorded with
status "not available" and the reason, never a crash.

Budgets: a row gets `budget_s` seconds of training. The number of steps is fixed before training, by
timing a few probe steps (`ssmkit.training.demo.calibrate_steps`), capped by the config's `steps`, so
the learning-rate schedule always completes; the steps actually run are recorded beside the result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssmkit.training.tasks import IGNORE_INDEX, as_lm_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(ROOT, "docs", "results")
NOT_AVAILABLE = "not available"


# ---- environment ---------------------------------------------------------------------------------
def hardware() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1min": round(os.getloadavg()[0], 1),           # other work on the machine, if any
    }


def command(name: str, full: bool) -> str:
    return f"python -m benchmarks.reproduce {name}" + (" --full" if full else "")


# ---- models --------------------------------------------------------------------------------------
def build(make: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """make() with the initialization seeded."""
    torch.manual_seed(seed)
    return make()


def n_params(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def unavailable_row(label: str, reason: str, **extra) -> dict:
    return {"model": label, "status": NOT_AVAILABLE, "reason": reason, **extra}


def guarded(label: str, fn: Callable[[], dict], **extra) -> dict:
    """fn() -> a result row; a missing module (a layer still landing) gives a "not available" row and any
    other failure an "error" row with the message (and the traceback on stderr), not a lost entry."""
    try:
        return fn()
    except ImportError as e:
        log(f"{label}: not available: {e}")
        return unavailable_row(label, f"{type(e).__name__}: {e}".splitlines()[0][:300], **extra)
    except Exception as e:  # noqa: BLE001 - recorded in the results, shown in the report
        traceback.print_exc()
        return {"model": label, "status": NOT_AVAILABLE, "reason": f"error: {type(e).__name__}: {e}"[:300],
                **extra}


# ---- training ------------------------------------------------------------------------------------
@dataclass
class TaskBatches:
    """Batch k = make(seed + k): a pure function of the step, so a run is reproducible."""

    make: Callable[[int], dict]
    seed: int

    def get(self, step: int, micro: int = 0) -> dict:
        return self.make(self.seed + 1000 * step + micro)


def lm_batches(task: Callable, batch_size: int, seed: int, **task_kwargs) -> TaskBatches:
    return TaskBatches(lambda s: as_lm_batch(*task(batch_size, seed=s, **task_kwargs)), seed)


def seconds_per_step(model, batches, probe: int = 2) -> float:
    """Median forward+backward time after one warm-up step (numba compiles); weights untouched."""
    times = []
    for i in range(probe + 1):
        t = time.perf_counter()
        model(**batches.get(10**7 + i)).loss.backward()
        times.append(time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    return sorted(times[1:])[probe // 2] * 1.1                      # + the optimizer step


def train(model, batches, steps: int, lr: float, budget_s: float, weight_decay: float = 0.1,
          warmup: int | None = None, clip: float = 1.0) -> dict:
    """AdamW + warmup-cosine (ssmkit.training.optim) for min(steps, what fits in budget_s) steps."""
    from ssmkit.training.optim import build_optimizer, build_scheduler

    model.train()
    fit = int(budget_s / seconds_per_step(model, batches)) if budget_s > 0 else steps
    n = max(1, min(steps, fit))
    warmup = min(n // 10, 200) if warmup is None else warmup
    opt = build_optimizer(model, lr, weight_decay, (0.9, 0.98))
    sched = build_scheduler(opt, warmup, n, 0.05)
    t0, losses = time.perf_counter(), []
    for step in range(n):
        loss = model(**batches.get(step)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, n // 20):]
    return {"steps": n, "steps_cap": steps, "train_s": round(time.perf_counter() - t0, 1),
            "final_loss": round(sum(tail) / len(tail), 4)}


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def lm_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 64,
                chunk: int | None = None) -> dict:
    """Accuracy of argmax(logits[t]) against targets[t] where targets != IGNORE_INDEX.

    chunk: feed each sequence in pieces of `chunk` tokens, carrying the recurrent state (memory flat in
    length for recurrent layers). Returns token accuracy and the fraction of sequences all right.
    """
    model.eval()
    right = total = seq_right = 0
    for i in range(0, inputs.shape[0], batch_size):
        x, y = inputs[i:i + batch_size], targets[i:i + batch_size]
        asked = y != IGNORE_INDEX
        first = int(asked.float().argmax(1).min())                # no prediction is needed before it
        preds = torch.full_like(y, -1)
        if chunk is None or chunk >= x.shape[1]:
            preds = model(x).logits.argmax(-1)
        else:
            state = model.init_state(x.shape[0])
            for s in range(0, x.shape[1], chunk):
                piece = x[:, s:s + chunk]
                if s + piece.shape[1] <= first:               # only advance the state
                    model(piece, state=state, num_last_tokens=1)
                else:
                    preds[:, s:s + piece.shape[1]] = model(piece, state=state).logits.argmax(-1)
        ok = (preds == y) & asked
        right += int(ok.sum())
        total += int(asked.sum())
        seq_right += int((ok | ~asked).all(1).sum())
    model.train()
    return {"acc": right / max(1, total), "seq_acc": seq_right / max(1, inputs.shape[0])}


def cross_entropy_at(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---- results -------------------------------------------------------------------------------------
def save(result: dict, out_dir: str = RESULTS_DIR) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{result['name']}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def result(name: str, claim: str, cfg: dict, rows: list[dict], t0: float, full: bool, **extra) -> dict:
    return {"name": name, "claim": claim, "config": cfg, "rows": rows, **extra,
            "wall_s": round(time.perf_counter() - t0, 1), "command": command(name, full),
            "hardware": hardware(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats with 3 significant digits."""
    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(v) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
