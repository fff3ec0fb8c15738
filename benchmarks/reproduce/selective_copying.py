"""Selective copying (Mamba paper, Gu & Dao 2023, sec. 4.1.1 and Table 1).

Claim: a selective (input-dependent) SSM solves selective copying; time-invariant SSMs (S4, Hyena's long
convolutions) do not, with or without gating. Setting of the paper: 2 layers, d_model 64, vocabulary 16,
16 tokens to memorize among noise, sequence length 4096. Ours: the same model sizes, the noise region
scaled down (`seq_len`), a fixed number of training steps for every row, the learning rate of each
from a small sweep.
"""

from __future__ import annotations

import time

from benchmarks.reproduce import harness as H
from benchmarks.reproduce.gated_s4d import GatedS4D, swap_mixers
from ssmkit.training.tasks import selective_copying

NAME = "selective_copying"
CLAIM = "selective SSM (S6/Mamba) solves selective copying; time-invariant layers (S4D, H3, Hyena) do not"
SOURCE = "Mamba paper (Gu & Dao 2023), Table 1 (length 4096, 400k steps)"

CONFIGS = {
    "tiny": dict(seq_len=24, n_memorize=4, batch_size=4, steps=2, n_test=8, lr=2e-3),
    # small: the paper's task shrunk: a noise region of 64 (the paper's 4096) and 8 tokens to copy (16),
    # where Mamba leaves its plateau (its loss at chance while it finds what to select) early and every
    # time: measured 2026-12-04, lr 1e-2, batch 32, 99% by step 1250 (2 threads, seed 0) and 1750 (1
    # thread, seed 1). Longer regions (`sizing`, recorded with the result) leave Mamba on the plateau for
    # most of a budget we can run: at 128 / 8 one run left it at step ~1000 and reached 100% (this
    # configuration's run of 2026-12-04 10:38, commit e09f788), reruns of the same seed at later commits
    # (different rounding) did not reach 55% in 4000 steps. The time-invariant rows learn from the first
    # steps and keep rising. Learning rates fixed (the same steps for every row), from the sweep of 500
    # steps at this region (the run of 2026-12-03 23:34, recorded in lr_sweep); a sweep of 150 steps
    # compares rows at chance (it gave Mamba 3e-3, which reached 69% after 3000 steps where 1e-2 reached
    # 97% after 1200). S4D in the Mamba block (outside the criterion; 75.5% at 64 / 8 after 1600 steps)
    # and S5 run in --full.
    "small": dict(seq_len=64, n_memorize=8, batch_size=32, steps=3000, n_test=256,
                  lr={"S4D, no gate": 1e-2, "H3": 1e-2, "Hyena": 3e-3, "Mamba": 1e-2},
                  lr_sweep={"steps": 500, "where": "region 64, 8 tokens, run of 2026-12-03 23:34",
                            "scores": {"S4D, no gate": {"3e-3": 0.348, "1e-2": 0.469},
                                       "H3": {"3e-3": 0.484, "1e-2": 0.551},
                                       "Hyena": {"3e-3": 0.346, "1e-2": 0.072},
                                       "Mamba": {"3e-3": 0.324, "1e-2": 0.469}}},
                  rows=["S4D, no gate", "H3", "Hyena", "Mamba"],
                  # longer regions tried (2026-12-04; accuracy per token, lr 1e-2, weight decay 0.1 unless
                  # said): Mamba's plateau outlasts the budget there
                  sizing=[
                      {"region": 128, "tokens": 8, "batch": 32, "steps": 4000,
                       "acc": {"Mamba": 0.074, "H3": 0.923},
                       "note": "Mamba: this entry's seed at commit 642c0d9, 2 threads, at chance throughout; "
                               "1 thread 24.2%, and 54.0% with weight decay 0; at commit e09f788 (2 threads) "
                               "it left the plateau at step ~1000 and reached 100%; H3: that run's"},
                      {"region": 128, "tokens": 16, "batch": 32, "steps": 4000,
                       "acc": {"Mamba": 0.217, "H3": 0.719},
                       "note": "1 thread, 128 test sequences; Mamba at lr 2e-2 and 4e-2: at chance at step "
                               "2250"},
                      {"region": 256, "tokens": 8, "batch": 16, "steps": 4000,
                       "acc": {"Mamba": 0.202, "H3": 0.138},
                       "note": "1 thread, 128 test sequences; Mamba's at step 3500; both left chance near "
                               "step 1500-2000"},
                  ]),
    "full": dict(seq_len=1024, n_memorize=16, batch_size=64, steps=20000, n_test=1024, lr=[1e-3, 3e-3],
                 sweep_steps=4000),
}
D_MODEL, N_LAYER, VOCAB = 64, 2, 16

# (label, architecture, layer, paper accuracy % (None: not in the paper's table), how we build it)
ROWS = [
    ("S4D, no gate", "no gate", "S4D", 18.3, {"layers": "s4d", "kw": {"s4d": {"output": "linear"}}}),
    ("S4D in the Mamba block", "Mamba", "S4D", 56.4, {"layers": "s4d", "gated_s4d": True}),
    ("H3", "H3", "S4D (H3's diagonal SSM)", 57.0, {"layers": "h3"}),
    ("Hyena", "H3", "Hyena", 30.1, {"layers": "hyena", "hyena_l_max": True}),
    ("S5", "S5", "S5 (MIMO diagonal)", None, {"layers": "s5"}),
    ("Mamba", "Mamba", "S6", 99.8, {"layers": "mamba"}),
]


def _make(spec: dict, L: int):
    from ssmkit import SSMConfig, SSMForCausalLM

    kw = dict(spec.get("kw", {}))
    if spec.get("hyena_l_max"):
        kw = {"hyena": {"l_max": L}}
    cfg = SSMConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, layers=spec["layers"],
                    layer_kwargs=kw)
    model = SSMForCausalLM(cfg)
    if spec.get("gated_s4d"):
        swap_mixers(model, lambda: GatedS4D(D_MODEL, d_state=16))
    return model


def run(cfg: dict, full: bool = False, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    task = dict(seq_len=cfg["seq_len"], n_memorize=cfg["n_memorize"], vocab_size=VOCAB)
    L = cfg["seq_len"] + cfg["n_memorize"] + 1
    test_x, test_y = selective_copying(cfg["n_test"], seed=10**9 + seed, **task)

    def row(label, arch, layer, paper, spec):
        batches = H.lm_batches(selective_copying, cfg["batch_size"], seed, **task)
        model, fit = H.fit(lambda: H.build(lambda: _make(spec, L), seed), batches, cfg["steps"],
                           H.lr_of(cfg["lr"], label),
                           lambda m: H.lm_accuracy(m, test_x[:64], test_y[:64])["acc"],
                           label=f"{NAME}: {label}",
                           sweep_steps=cfg.get("sweep_steps"))
        acc = H.lm_accuracy(model, test_x, test_y)
        H.log(f"{NAME}: {label}: acc {acc['acc']:.3f} after {fit['steps']} steps ({fit['train_s']} s)")
        return {"model": label, "arch": arch, "layer": layer, "params": H.n_params(model), **fit,
                "acc": acc["acc"], "seq_acc": acc["seq_acc"], "paper": paper}

    chosen = [r for r in ROWS if r[0] in cfg.get("rows", [r[0] for r in ROWS])]
    # the selective row first: a run whose Mamba misses the criterion shows it before the others train
    done = {r[0]: H.guarded(r[0], lambda r=r: row(*r), arch=r[1], layer=r[2], paper=r[3])
            for r in sorted(chosen, key=lambda r: r[0] != "Mamba")}
    rows = [done[r[0]] for r in chosen]
    return H.result(NAME, CLAIM, cfg, rows, t0, full, source=SOURCE, chance=1 / (VOCAB - 2),
                    model={"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB})


def markdown(r: dict) -> str:
    c = r["config"]
    lrs = ("each row's learning rate fixed, from the sweep below" if isinstance(c["lr"], dict) else
           f"each row's learning rate: the best of {c['lr']} after {c.get('sweep_steps')} steps (the JSON "
           f"keeps the sweep)")
    head = (f"Noise region {c['seq_len']} tokens (paper: 4096), {c['n_memorize']} tokens to copy "
            f"(paper: 16), vocabulary {VOCAB}, 2 layers, d_model 64; {lrs}; chance = "
            f"{100 * r['chance']:.1f}%. Paper: {r['source']}.\n\n")
    rows = []
    for x in r["rows"]:
        paper = "n/a" if x["paper"] is None else f"{x['paper']}%"
        if x.get("status") == H.NOT_AVAILABLE:
            rows.append([x["model"], x["arch"], x["layer"], None, None, None, paper,
                         f"not available ({x['reason']})"])
        else:
            rows.append([x["model"], x["arch"], x["layer"], x["params"], x["steps"], H.pct(x["acc"]),
                         paper, f"all {c['n_memorize']} right: {H.pct(x['seq_acc'])}; lr {x.get('lr')}"])
    return head + H.table(["model", "architecture", "layer", "params", "steps", "accuracy (ours)",
                           "accuracy (paper)", "note"], rows)


def notes(r: dict) -> str:
    """Each row's learning-rate sweep (run with the entry, or the one its fixed rates came from, kept in
    the configuration), and whether it compared accuracies still at chance."""
    fixed = r["config"].get("lr_sweep")
    sweeps = {x["model"]: x["lr_sweep"] for x in r["rows"] if x.get("lr_sweep")}
    if fixed:
        sweeps = {m: {"scores": s, "best": r["config"]["lr"][m], "steps": fixed["steps"]}
                  for m, s in fixed["scores"].items()}
    parts, blind = [], []
    for model, sweep in sweeps.items():
        scores = ", ".join(f"{lr}: {H.pct(v)}" for lr, v in sweep["scores"].items())
        parts.append(f"{model} ({scores} -> {sweep['best']})")
        if max(sweep["scores"].values()) < 2 * r["chance"]:
            blind.append(model)
    if not parts:
        return ""
    steps = next(iter(sweeps.values()))["steps"]
    where = f" ({fixed['where']})" if fixed and fixed.get("where") else ""
    text = f"Learning-rate sweep, accuracy after {steps} steps{where}: " + "; ".join(parts) + "."
    for run in r["config"].get("sizing", []):
        accs = ", ".join(f"{m} {H.pct(a)}" for m, a in run["acc"].items())
        text += (f"\n\nSetting tried while sizing (not in the table): region {run['region']}, "
                 f"{run['tokens']} tokens, batch {run['batch']}, {run['steps']} steps: {accs} "
                 f"({run['note']}).")
    if blind:
        text += (f" For {', '.join(blind)} every rate was still below twice chance "
                 f"({H.pct(2 * r['chance'])}) when the sweep chose: a longer sweep would choose on a signal.")
    return text
