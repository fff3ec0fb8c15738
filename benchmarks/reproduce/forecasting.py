"""Forecasting two real series: half-hourly electricity demand (pmdarima's `load_taylor`, 4032 points,
12 weeks) and monthly sunspot numbers (pmdarima's `load_sunspots`, 2820 points, 235 years).

S4D / Mamba / Transformer forecasters (SSMForForecasting) against the naive baselines (the value one
season earlier: one day and one week for electricity; one month, i.e. the last value, and one solar
cycle of 11 years for sunspots), scored by MAE and MSE on the held-out last `TEST_FRACTION` of each series
(forecast origins every `test_stride` steps; a look-back may reach into the training part, a target never
does). What practitioners use for such series, as in PatchTST (Nie et al. 2023):
- patches: the look-back is cut into patches of `patch` steps (one day; one year), each patch one token
  with `patch` channels, and the model forecasts the next patch (horizon = one patch), so a two-week
  look-back is a sequence of 14 tokens;
- reversible instance normalization (SSMForForecasting's revin) of each channel over the look-back;
- the loss in standardized units (the series scaled by its training part's mean and std), the errors
  reported in the series' own units.
No paper reports these series: there is no paper column, the baselines are the reference.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from benchmarks.reproduce import harness as H

NAME = "forecasting"
CLAIM = ("SSM forecasters beat the seasonal-naive baseline and a same-size Transformer on real series with "
         "long look-back")
SOURCE = ("no paper number for these series (pmdarima load_taylor, load_sunspots); the naive forecasts are "
          "the reference")
DAY, WEEK = 48, 336
YEAR, CYCLE = 12, 132

# per series: loader, unit, patch (= horizon), look-back, baselines (label, season), origins' stride
SERIES = {
    "electricity": dict(load="load_taylor", unit="MW", step="half-hourly", patch=DAY, context=2 * WEEK,
                        baselines=[("seasonal naive (1 day)", DAY), ("seasonal naive (1 week)", WEEK)],
                        test_stride=12),
    "sunspots": dict(load="load_sunspots", unit="sunspot number", step="monthly", patch=YEAR,
                     context=2 * CYCLE, baselines=[("naive (last value)", 1),
                                                   ("seasonal naive (11 years)", CYCLE)],
                     test_stride=3),
}
CONFIGS = {
    "tiny": dict(series=["electricity"], d_model=8, batch_size=4, steps=2, lr=1e-3, stride_scale=30),
    # small: 2 layers of width 32, 1000 steps; learning rates: the best of the sweep, 150 steps each
    "small": dict(series=["electricity", "sunspots"], d_model=32, batch_size=32, steps=1000,
                  lr=[1e-3, 3e-3], sweep_steps=150, stride_scale=1),
    "full": dict(series=["electricity", "sunspots"], d_model=64, batch_size=32, steps=10000,
                 lr=[3e-4, 1e-3, 3e-3], sweep_steps=2000, stride_scale=1),
}
TEST_FRACTION, VAL_FRACTION, N_LAYER = 0.2, 0.1, 2
MODELS = [("S4D", "s4d", 0), ("Mamba", "mamba", 0), ("Transformer", "attention", 1)]


def _load(name: str):
    from ssmkit.training import datasets

    loader = getattr(datasets, SERIES[name]["load"])
    try:
        return loader(), None
    except ImportError:
        H.log(f"{NAME}: installing pmdarima (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pmdarima"], capture_output=True,
                       timeout=600)
    try:
        return loader(), None
    except ImportError as e:
        return None, str(e)


def _windows(s: torch.Tensor, context: int, horizon: int, first_target: int, stride: int, end=None):
    """Windows with targets in [first_target, end): inputs (n, context, 1), targets (n, horizon, 1)."""
    end = s.shape[0] if end is None else end
    starts = torch.arange(first_target, end - horizon + 1, stride)
    idx = (starts - context)[:, None] + torch.arange(context + horizon)[None, :]
    w = s[idx]                                                             # (n, context + horizon, 1)
    return w[:, :context], w[:, context:]


def _scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    err = pred.float() - target.float()
    return {"mae": float(err.abs().mean()), "mse": float((err**2).mean())}


class Patched(torch.nn.Module):
    """A forecaster over patches: (b, context, 1) -> (b, context / patch, patch) tokens -> the next patch."""

    def __init__(self, model: torch.nn.Module, patch: int):
        super().__init__()
        self.model, self.patch = model, patch

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None):
        b, p = inputs.shape[0], self.patch
        out = self.model(inputs.reshape(b, -1, p),
                         None if targets is None else targets.reshape(b, 1, p))
        return type(out)(prediction=out.prediction.reshape(b, p, 1), loss=out.loss, aux_loss=out.aux_loss)


class _Batches:
    """Random training windows (seeded by step) whose targets end before `end`."""

    def __init__(self, s, context, horizon, end, batch_size, seed):
        self.s, self.c, self.h, self.end, self.b, self.seed = s, context, horizon, end, batch_size, seed

    def get(self, step: int, micro: int = 0) -> dict:
        g = torch.Generator().manual_seed(self.seed + step)
        starts = torch.randint(self.c, self.end - self.h + 1, (self.b,), generator=g)
        idx = (starts - self.c)[:, None] + torch.arange(self.c + self.h)[None, :]
        w = self.s[idx]
        return {"inputs": w[:, :self.c], "targets": w[:, self.c:]}


def _model(pattern: str, mlp: int, d_model: int, patch: int):
    from ssmkit import SSMConfig, SSMForForecasting

    cfg = SSMConfig(d_model=d_model, n_layer=N_LAYER, layers=pattern, input_dim=patch, horizon=1,
                    d_intermediate=mlp * d_model, n_head=4)
    return Patched(SSMForForecasting(cfg), patch)


def _series_run(name: str, cfg: dict, seed: int) -> dict:
    spec = SERIES[name]
    raw, why = _load(name)
    if raw is None:
        H.log(f"{NAME}/{name}: skipped: {why}")
        return {"skipped": why}
    T, P, C = raw.shape[0], spec["patch"], spec["context"]
    split = T - int(T * TEST_FRACTION)
    val = split - int(T * VAL_FRACTION)                      # the curve's windows: before the test part
    mean, std = raw[:split].mean(), raw[:split].std()
    s = (raw - mean) / std                                   # training and model in standardized units
    x, y = _windows(raw, C, P, split, spec["test_stride"] * cfg["stride_scale"])
    rows = []
    for label, season in spec["baselines"]:
        reps = -(-P // season)
        pred = x[:, -season:].repeat(1, reps, 1)[:, :P]                    # (n, horizon, 1)
        rows.append({"model": label, "params": 0, "baseline": True, **_scores(pred, y)})
    vx, vy = _windows(s, C, P, val, max(1, (split - val) // 64), end=split)

    def val_mae(m):                                          # in the series' units
        m.eval()
        with torch.no_grad():
            mae = _scores(m(vx).prediction * std, vy * std)["mae"]
        m.train()
        return mae

    def row(label, pattern, mlp):
        model, fit = H.fit(lambda: H.build(lambda: _model(pattern, mlp, cfg["d_model"], P), seed),
                           _Batches(s, C, P, val, cfg["batch_size"], seed), cfg["steps"],
                           H.lr_of(cfg["lr"], pattern), val_mae, label=f"{NAME}/{name}: {label}",
                           sweep_steps=cfg.get("sweep_steps"), higher_is_better=False, weight_decay=0.01)
        model.eval()
        with torch.no_grad():
            xs = (x - mean) / std
            pred = torch.cat([model(xs[i:i + 256]).prediction for i in range(0, xs.shape[0], 256)])
        scores = _scores(pred * std + mean, y)
        H.log(f"{NAME}/{name}: {label}: MAE {scores['mae']:.4g} after {fit['steps']} steps")
        return {"model": label, "params": H.n_params(model), **fit, **scores}

    rows += [H.guarded(m[0], lambda m=m: row(*m)) for m in MODELS]
    return {"rows": rows, "series_length": T, "test_points": T - split, "n_test_windows": int(x.shape[0]),
            "context": C, "patch": P, "test_stride": spec["test_stride"] * cfg["stride_scale"],
            "unit": spec["unit"], "step": spec["step"]}


def run(cfg: dict, full: bool = False, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    series = {name: _series_run(name, cfg, seed) for name in cfg["series"]}
    rows = [dict(r, series=n) for n, v in series.items() for r in v.get("rows", [])]
    return H.result(NAME, CLAIM, cfg, rows, t0, full, source=SOURCE, series=series,
                    model={"n_layer": N_LAYER, "revin": True, "patches": True})


def markdown(r: dict) -> str:
    out = [f"{r['source']}. Each model: 2 layers of width {r['config']['d_model']} over patches "
           "(one token per patch, the forecast is the next patch), reversible instance normalization, "
           "loss in standardized units; each row's learning rate from a sweep (in the JSON)."]
    for name, v in r.get("series", {}).items():
        if v.get("skipped"):
            out.append(f"**{name}**: skipped ({v['skipped']}).")
            continue
        head = (f"**{name}** ({v['series_length']} {v['step']} points; held-out tail {v['test_points']}; "
                f"look-back {v['context']} steps = {v['context'] // v['patch']} patches of {v['patch']}, "
                f"horizon {v['patch']}; {v['n_test_windows']} forecast origins every {v['test_stride']} "
                f"steps; errors in {v['unit']}):\n\n")
        rows = []
        for x in v["rows"]:
            if x.get("status") == H.NOT_AVAILABLE:
                rows.append([x["model"], None, None, None, None, f"not available: {x['reason']}"])
            else:
                rows.append([x["model"], x["params"] or "–", x.get("steps", "–"), f"{x['mae']:.4g}",
                             f"{x['mse']:.3e}", "baseline" if x.get("baseline") else f"lr {x.get('lr')}"])
        out.append(head + H.table(["model", "params", "steps", "MAE", "MSE", "note"], rows))
    return "\n\n".join(out)
