"""Progress (tqdm on a terminal, else one plain line every `log_every` steps) and the metrics log.

The metrics log is JSON Lines, one object per event ({"step", "split", ...}); with tensorboard=True
the same scalars also go to TensorBoard (imported only then). A resumed run opens it with
`keep_through=<the checkpoint's step>`: the rows a killed run logged after its checkpoint are dropped
(the resumed run logs those steps again), so no step appears twice.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ssmkit._files import write_bytes_atomic


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60:02d}:{seconds % 60:02d}"
    )


class Progress:
    """Steps done, loss, tokens/s and ETA; silent on ranks other than 0."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        desc: str = "train",
        log_every: int = 10,
        enabled: bool = True,
        max_time: float = 0.0,
        stream=None,
        by_time: bool = False,
    ):
        self.total, self.step, self.desc, self.log_every = total, start, desc, max(1, log_every)
        self.enabled, self.max_time, self.by_time = enabled, max_time, by_time and max_time > 0
        self.stream = stream or sys.stderr
        self.t0, self.tokens, self.start = time.perf_counter(), 0, start
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm

                if self.by_time:  # the bar fills with the time budget; steps go in the postfix
                    self.bar = tqdm(
                        total=round(max_time),
                        desc=desc,
                        unit="s",
                        file=self.stream,
                        dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]",
                    )
                else:
                    self.bar = tqdm(
                        total=total,
                        initial=start,
                        desc=desc,
                        unit="step",
                        file=self.stream,
                        dynamic_ncols=True,
                    )
            except ImportError:
                pass

    def rate(self) -> float:
        return self.tokens / max(1e-9, time.perf_counter() - self.t0)

    def eta(self) -> float:
        elapsed = time.perf_counter() - self.t0
        done = self.step - self.start
        eta = elapsed / done * (self.total - self.step) if done else float("nan")
        if self.max_time:
            eta = min(eta, self.max_time - elapsed)
        return eta

    def update(self, step: int, tokens: int, loss: float, lr: float) -> None:
        self.step, self.tokens = step, self.tokens + tokens
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        if self.bar is not None:
            if self.by_time:
                self.bar.update(min(elapsed, self.max_time) - self.bar.n)
                self.bar.set_postfix_str(
                    f"step {step} loss {loss:.3f} {self.rate():,.0f} tok/s", refresh=False
                )
            else:
                self.bar.update(1)
                self.bar.set_postfix_str(
                    f"loss {loss:.3f} lr {lr:.2e} {self.rate():,.0f} tok/s", refresh=False
                )
        elif step % self.log_every == 0 or step == self.total:
            eta = self.eta()
            where = f"{_fmt_time(elapsed)}/{_fmt_time(self.max_time)}" if self.by_time else f"/{self.total}"
            print(
                f"{self.desc} step {step}{' ' if self.by_time else ''}{where} loss {loss:.4f} lr {lr:.2e} "
                f"{self.rate():,.0f} tok/s ETA {_fmt_time(eta) if eta == eta else '?'}",
                file=self.stream,
                flush=True,
            )

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _row_step(line: bytes) -> int | None:
    """The step of one JSON line of the log; None for a torn or foreign line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


def truncate_metrics(path: str, step: int) -> None:
    """Keep the rows of `path` logged at steps <= `step` (rewritten atomically; torn lines dropped)."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.splitlines()
    kept = [line + b"\n" for line in lines if (s := _row_step(line)) is not None and s <= step]
    if len(kept) != len(lines) or not data.endswith(b"\n"):
        write_bytes_atomic(path, b"".join(kept))


class MetricsLog:
    """Append JSON lines to `path` (and TensorBoard scalars when asked); no-op when path is None.
    `keep_through`: drop the rows already in the file logged after this step."""

    def __init__(self, path: str | None, tensorboard: bool = False, keep_through: int | None = None):
        self.path, self.tb = path, None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if keep_through is not None:
                truncate_metrics(path, keep_through)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ImportError(
                        "tensorboard=True needs the tensorboard package: pip install tensorboard"
                    ) from None
                self.tb = SummaryWriter(os.path.join(os.path.dirname(os.path.abspath(path)), "tensorboard"))

    def log(self, step: int, split: str, **values) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
