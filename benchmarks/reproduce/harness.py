"""What every reproduction entry shares: hardware record, seeded model building, a budgeted training
loop, token accuracy (optionally streamed through the recurrent state in chunks), JSON results.

An entry module defines CONFIGS = {"tiny": ..., "small": ..., "full": ...}, `run(cfg) -> dict` and
`markdown(result) -> str`. A row whose layer does not import (or cannot be built) is recorded with
status "not available" and the reason, never a crash.

Budgets: a fixed number of steps per task, the same for every model of a table (what the time
depends on: the machine and its load, is recorded beside it, not the other way round). Each row's
training records a learning curve (`train(evaluate=...)`), so a reader can see whether the budget let
the model converge; learning rates come from a small sweep (`fit`) whose scores the JSON keeps.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
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


class PauseClock:
    """Time this process spent stopped (SIGSTOP: on the shared machine, another user's benchmark pauses
    the other processes), seen by a daemon thread as gaps between its ticks. Wall times are recorded
    without it: what a run costs, not how long it was held."""

    def __init__(self, tick: float = 0.25, gap: float = 2.0):
        self.tick, self.gap, self.gaps = tick, gap, []                    # gaps: (end, seconds stopped)
        threading.Thread(target=self._run, daemon=True, name="pause-clock").start()

    def _run(self) -> None:
        last = time.perf_counter()                # CLOCK_MONOTONIC: it runs on while the process is stopped
        while True:
            time.sleep(self.tick)
            now = time.perf_counter()
            if now - last > self.gap:
                self.gaps.append((now, now - last - self.tick))
            last = now

    def since(self, t0: float) -> float:
        return sum(g for end, g in list(self.gaps) if end > t0)


PAUSES: PauseClock | None = None                                          # started by the runner


def stopped_since(t0: float) -> float:
    """Seconds this process was stopped since perf_counter() read t0 (0 when no PauseClock runs)."""
    return PAUSES.since(t0) if PAUSES is not None else 0.0


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


def train(model, batches, steps: int, lr: float, warmup: int | None = None, weight_decay: float = 0.1,
          clip: float = 1.0, evaluate: Callable[[], float] | None = None, curve_points: int = 8) -> dict:
    """AdamW + warmup-cosine (ssmkit.training.optim) for exactly `steps` steps.

    warmup: linear warm-up steps (default steps // 10, at most 200). evaluate: a metric of the model
    (accuracy, error), taken at `curve_points` evenly spaced steps and at the end: the learning curve
    that says whether the budget let the model converge. The training loss is recorded as the mean
    over each of `curve_points` windows. Returns the steps, the time they took, the curves, the final
    loss (mean of the last 5% of steps).
    """
    from ssmkit.training.optim import build_optimizer, build_scheduler

    model.train()
    warmup = min(steps // 10, 200) if warmup is None else warmup
    opt = build_optimizer(model, lr, weight_decay, (0.9, 0.98))
    sched = build_scheduler(opt, warmup, steps, 0.05)
    marks = sorted({max(1, round(steps * (k + 1) / curve_points)) for k in range(curve_points)})
    t0, losses, curve, eval_s = time.perf_counter(), [], [], 0.0
    for step in range(steps):
        loss = model(**batches.get(step)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step + 1 in marks:
            point = {"step": step + 1, "loss": round(_mean(losses[-max(1, steps // curve_points):]), 4)}
            if evaluate is not None:
                te = time.perf_counter()
                point["metric"] = evaluate()
                eval_s += time.perf_counter() - te
                model.train()
            curve.append(point)
            log(f"  step {step + 1}/{steps}: loss {point['loss']:.4g}"
                + (f", metric {point['metric']:.4g}" if "metric" in point else ""))
    train_s = time.perf_counter() - t0 - eval_s - stopped_since(t0)
    return {"steps": steps, "lr": lr, "warmup": warmup, "train_s": round(train_s, 1),
            "s_per_step": round(train_s / max(1, steps), 4),
            "final_loss": round(_mean(losses[-max(1, steps // 20):]), 4), "curve": curve}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def still_improving(curve: list[dict], key: str = "metric", higher_is_better: bool = True,
                    tol: float = 0.01) -> bool:
    """Whether the last quarter of a learning curve still moved the metric by more than tol (relative
    to its scale): a budget that ends on a rising curve has not converged."""
    pts = [p[key] for p in curve if key in p]
    if len(pts) < 4:
        return False
    q = pts[-(len(pts) // 4 + 1):]
    gain = (q[-1] - q[0]) if higher_is_better else (q[0] - q[-1])
    return gain > tol * max(abs(q[0]), abs(q[-1]), 1e-12)


def fit(make: Callable[[], torch.nn.Module], batches, steps: int, lrs, evaluate: Callable, label: str = "",
        sweep_steps: int | None = None, higher_is_better: bool = True, **train_kw) -> tuple:
    """A fresh make() trained `steps` steps at the best of `lrs`, with its learning curve.

    lrs: one learning rate, or several: then each trains a fresh make() for `sweep_steps` (default a
    quarter of `steps`) and the best final evaluate(model) wins; the sweep's scores are returned under
    "lr_sweep". evaluate(model) -> the entry's metric (accuracy, error), also the curve's points.
    Returns (model, train()'s record + "lr_sweep").
    """
    lrs = list(lrs) if isinstance(lrs, (list, tuple)) else [lrs]
    sweep = None
    if len(lrs) > 1:
        n = sweep_steps or max(1, steps // 4)
        scores = {}
        for lr in lrs:
            m = make()
            r = train(m, batches, n, lr, evaluate=lambda m=m: evaluate(m), curve_points=1, **train_kw)
            scores[str(lr)] = r["curve"][-1]["metric"]
            log(f"{label}: sweep: lr {lr:g} -> {scores[str(lr)]:.4g} after {n} steps")
        ok = {k: v for k, v in scores.items() if v == v}              # NaN (diverged) never wins
        best = float((max if higher_is_better else min)(ok, key=ok.get)) if ok else lrs[0]
        sweep = {"steps": n, "scores": scores, "best": best}
        lrs = [best]
    model = make()
    record = train(model, batches, steps, lrs[0], evaluate=lambda: evaluate(model), **train_kw)
    return model, {**record, "lr_sweep": sweep}


def lr_of(lrs, key: str):
    """A config's learning rates for one model: `lrs` itself, or lrs[key] when it is a dict."""
    return lrs[key] if isinstance(lrs, dict) else lrs


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
    """wall_s: the entry's wall time, not counting time the process was stopped (stopped_s, if any)."""
    stopped = stopped_since(t0)
    return {"name": name, "claim": claim, "config": cfg, "rows": rows, **extra,
            "wall_s": round(time.perf_counter() - t0 - stopped, 1),
            **({"stopped_s": round(stopped, 1)} if stopped else {}), "command": command(name, full),
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
