"""Forecasting half-hourly electricity demand (pmdarima's `load_taylor`, 4032 points, 12 weeks).

S4D / Mamba / Transformer forecasters (SSMForForecasting: last hidden state -> the next `horizon`
values, with reversible instance normalization) against the seasonal-naive baselines (the value one
day, resp. one week, earlier), scored by MAE and MSE on the held-out last `test_fraction` of the series
(forecast origins every `test_stride` steps; a look-back may reach into the training part, a target
never does). No paper reports this series: there is no paper column, the baseline is the reference.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from benchmarks.reproduce import harness as H

NAME = "forecasting"
CLAIM = "SSM forecasters beat the seasonal-naive baseline on a real series with long look-back"
SOURCE = ("no paper number for this series (pmdarima load_taylor); the seasonal-naive forecast is the "
          "reference")
DAY, WEEK = 48, 336

CONFIGS = {
    "tiny": dict(context=96, horizon=8, d_model=8, batch_size=4, steps=2, lr=1e-3,
                 test_stride=400),
    "small": dict(context=2 * WEEK, horizon=DAY, d_model=32, batch_size=32, steps=2000,
                  lr=2e-3, test_stride=12),
    "full": dict(context=3 * WEEK, horizon=DAY, d_model=64, batch_size=32, steps=20000,
                 lr=1e-3, test_stride=1),
}
TEST_FRACTION, N_LAYER = 0.2, 2
MODELS = [("S4D", "s4d", 0), ("Mamba", "mamba", 0), ("Transformer", "attention", 1)]


def _series():
    from ssmkit.training.datasets import load_taylor

    try:
        return load_taylor(), None
    except ImportError:
        H.log(f"{NAME}: installing pmdarima (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pmdarima"], capture_output=True,
                       timeout=600)
    try:
        return load_taylor(), None
    except ImportError as e:
        return None, str(e)


def _windows(s: torch.Tensor, context: int, horizon: int, first_target: int, stride: int):
    """Windows with targets from first_target on: inputs (n, context, 1), targets (n, horizon, 1)."""
    starts = torch.arange(first_target, s.shape[0] - horizon + 1, stride)
    idx = (starts - context)[:, None] + torch.arange(context + horizon)[None, :]
    w = s[idx]                                                             # (n, context + horizon, 1)
    return w[:, :context], w[:, context:]


def _scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    err = pred.float() - target.float()
    return {"mae": float(err.abs().mean()), "mse": float((err**2).mean())}


class _Batches:
    def __init__(self, s, context, horizon, end, batch_size, seed):
        self.s, self.c, self.h, self.end, self.b, self.seed = s, context, horizon, end, batch_size, seed

    def get(self, step: int, micro: int = 0) -> dict:
        g = torch.Generator().manual_seed(self.seed + step)
        starts = torch.randint(self.c, self.end - self.h + 1, (self.b,), generator=g)
        idx = (starts - self.c)[:, None] + torch.arange(self.c + self.h)[None, :]
        w = self.s[idx]
        return {"inputs": w[:, :self.c], "targets": w[:, self.c:]}


def _model(pattern: str, mlp: int, cfg: dict):
    from ssmkit import SSMConfig, SSMForForecasting

    return SSMForForecasting(SSMConfig(d_model=cfg["d_model"], n_layer=N_LAYER, layers=pattern, input_dim=1,
                                       horizon=cfg["horizon"], d_intermediate=mlp * cfg["d_model"], n_head=4))


def run(cfg: dict, full: bool = False, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    s, why = _series()
    if s is None:
        H.log(f"{NAME}: skipped: {why}")
        return H.result(NAME, CLAIM, cfg, [], t0, full, source=SOURCE, skipped=why)
    T = s.shape[0]
    split = T - int(T * TEST_FRACTION)
    x, y = _windows(s, cfg["context"], cfg["horizon"], split, cfg["test_stride"])
    rows = []
    for label, season in (("seasonal naive (1 day)", DAY), ("seasonal naive (1 week)", WEEK)):
        reps = -(-cfg["horizon"] // season)
        pred = x[:, -season:].repeat(1, reps, 1)[:, :cfg["horizon"]]      # (n, horizon, 1)
        rows.append({"model": label, "params": 0, **_scores(pred, y)})

    def row(label, pattern, mlp):
        # the curve's metric: MAE on 64 windows of the last tenth before the test split, held out of training
        val = split - int(T * 0.1)
        vx, vy = _windows(s[:split], cfg["context"], cfg["horizon"], val, max(1, (split - val) // 64))
        vx, vy = vx[:64], vy[:64]

        def val_mae(m):
            m.eval()
            with torch.no_grad():
                mae = _scores(m(vx).prediction, vy)["mae"]
            m.train()
            return mae

        model, fit = H.fit(lambda: H.build(lambda: _model(pattern, mlp, cfg), seed),
                           _Batches(s, cfg["context"], cfg["horizon"], val, cfg["batch_size"], seed),
                           cfg["steps"], H.lr_of(cfg["lr"], pattern), val_mae, label=f"{NAME}: {label}",
                           higher_is_better=False, weight_decay=0.01)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 64]).prediction for i in range(0, x.shape[0], 64)])
        scores = _scores(pred, y)
        H.log(f"{NAME}: {label}: MAE {scores['mae']:.1f} after {fit['steps']} steps")
        return {"model": label, "params": H.n_params(model), **fit, **scores}

    rows += [H.guarded(m[0], lambda m=m: row(*m)) for m in MODELS]
    return H.result(NAME, CLAIM, cfg, rows, t0, full, source=SOURCE, n_test_windows=int(x.shape[0]),
                    series_length=T, test_points=T - split, model={"n_layer": N_LAYER, "revin": True})


def markdown(r: dict) -> str:
    if r.get("skipped"):
        return f"Skipped: {r['skipped']}."
    c = r["config"]
    head = (f"Series length {r['series_length']} (half-hourly); held-out tail {r['test_points']} points; "
            f"look-back {c['context']} steps ({c['context'] // DAY} days), horizon {c['horizon']} "
            f"({c['horizon'] / DAY:.2g} day); {r['n_test_windows']} forecast origins every "
            f"{c['test_stride']} steps. Errors in the series' units (MW). {r['source']}.\n\n")
    rows = []
    for x in r["rows"]:
        if x.get("status") == H.NOT_AVAILABLE:
            rows.append([x["model"], None, None, None, None, f"not available: {x['reason']}"])
        else:
            rows.append([x["model"], x["params"] or "–", x.get("steps", "–"), f"{x['mae']:.0f}",
                         f"{x['mse']:.3e}", ""])
    return head + H.table(["model", "params", "steps", "MAE", "MSE", "note"], rows)
