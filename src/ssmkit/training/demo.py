"""The main job: a small SSM LM and a same-size Transformer on the built-in stdlib corpus, the same
wall-clock budget each.

    python -m ssmkit demo --out outputs

Byte-level, context 256. Each model trains for `budget_s` seconds of wall clock with its learning-rate
schedule run over the clock (schedule="time"), so both end annealed and the faster one takes more
steps: the equal-time comparison, the one the plot's time axis shows. The equal-steps comparison reads
both at one step both evaluated, the last step of the run with fewer steps: the runs go slowest first
(by timed probes) and each later run also evaluates at the step count of the earlier ones. Printed
step estimates come from the probes and say so; the table reports what the runs did.
Reported: validation bits per byte of both and the unigram baseline (the train split's byte
frequencies scored on the validation split: what a model that ignores context can reach).
Written under --out: results.md, results.json, learning_curves.png, samples.txt, one directory per model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch

from ssmkit.training.config import DEFAULT_CACHE_DIR, DEMO_BUDGET_S, TrainConfig
from ssmkit.training.data import LMBatches, eval_windows, unigram_bits_per_token
from ssmkit.training.demo_report import write_report
from ssmkit.training.loop import TrainResult, train
from ssmkit.training.run import MODEL_DIR, LMData, build_model, count_parameters, prepare_data

D_MODEL, N_LAYER, SEQ_LEN = 128, 4, 256
SSM_MODELS = {  # the Mamba family, in order of preference
    "mamba2": {
        "d_model": D_MODEL,
        "n_layer": N_LAYER,
        "layers": "mamba2",
        "layer_kwargs": {"mamba2": {"d_state": 64, "headdim": 32, "chunk_size": 64}},
    },
    "mamba": {
        "d_model": D_MODEL,
        "n_layer": N_LAYER,
        "layers": "mamba",
        "layer_kwargs": {"mamba": {"d_state": 16, "d_conv": 4, "expand": 2}},
    },
}
TRANSFORMER_MODEL = {
    "d_model": D_MODEL,
    "n_layer": N_LAYER,
    "layers": "attention",
    "n_head": 4,
    "mlp": "gated",
}
PROMPT = "def "


def pick_ssm(name: str = "auto") -> dict:
    """The SSM of the demo: `name` from SSM_MODELS ("auto": the first, Mamba-2)."""
    if name == "auto":
        return dict(next(iter(SSM_MODELS.values())))
    if name not in SSM_MODELS:
        raise ValueError(f"demo: --ssm must be one of {['auto', *SSM_MODELS]}, got {name!r}")
    return dict(SSM_MODELS[name])


def match_transformer(ssm_params: int, base: dict, vocab_size: int) -> dict:
    """Pick the GatedMLP width that brings the Transformer's parameter count closest to the SSM's."""
    best, best_gap = None, None
    for d_int in range(32, 8 * D_MODEL + 1, 32):
        args = {**base, "d_intermediate": d_int}
        n = count_parameters(build_model(args, vocab_size))
        gap = abs(n - ssm_params)
        if best_gap is None or gap < best_gap:
            best, best_gap = args, gap
        if n > ssm_params:
            break
    return best


def seconds_per_step(model, batches, probe_steps: int = 3) -> float:
    """Fastest of `probe_steps` forward+backward passes, after one warm-up (numba compiles, caches)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the probe leaves the weights alone
    times = []
    for i in range(probe_steps + 1):
        t = time.perf_counter()
        batch = batches.get(10_000_000 + i)
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return min(times[1:]) * 1.05  # + evaluation and logging; min: the machine's speed, not its load


def _sample(model, tokenizer, n_tokens: int, seed: int) -> str:
    torch.manual_seed(seed)
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    model.eval()
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=n_tokens, do_sample=True, temperature=0.7, top_k=0, top_p=0.95
        )
    return tokenizer.decode(out[0].tolist())


def _prepare(base: TrainConfig) -> tuple[LMData, torch.Tensor, float]:
    """The stdlib corpus as bytes, the validation windows and the unigram baseline (bits per byte)."""
    print(f"demo: preparing the stdlib corpus (byte level) under {base.cache_dir}", flush=True)
    data = prepare_data(base)
    unigram = unigram_bits_per_token(data.train, data.val, 256)
    print(
        f"demo: corpus {data.corpus.info.get('n_files')} files (Python {data.corpus.info.get('python')}, "
        f"fingerprint {data.corpus.fingerprint}); train {len(data.train):,} bytes, validation "
        f"{len(data.val):,} bytes; unigram baseline {unigram:.3f} bits/byte",
        flush=True,
    )
    return data, eval_windows(data.val, base.seq_len, base.eval_windows), unigram


def plan(runs: dict[str, dict], batches, budget_s: float, seed: int) -> tuple[list[str], dict, dict]:
    """(run order, seconds per step, eval_every) from timed probes: slowest model first; about eight
    evaluations each, every slower model's interval a divisor of the faster ones' (shared steps)."""
    per_step = {name: seconds_per_step(build_model(args, 256, seed), batches) for name, args in runs.items()}
    order = sorted(runs, key=lambda name: -per_step[name])
    slowest = per_step[order[0]]
    base_every = max(1, int(budget_s / slowest) // 8)
    eval_every = {name: base_every * max(1, round(slowest / per_step[name])) for name in runs}
    return order, per_step, eval_every


def _result_row(args: dict, model, res: TrainResult) -> dict:
    final = res.evals[-1]
    return {
        "layers": args["layers"],
        "config": args,
        "parameters": count_parameters(model),
        "steps": res.step,
        "stopped": res.stopped,
        "tokens": res.tokens,
        "train_seconds": round(res.elapsed, 1),
        "tokens_per_s": round(res.tokens / max(res.elapsed, 1e-9)),
        "val_bpb": round(final["bpb"], 4),
        "val_loss_nats": round(final["loss"], 4),
        "val_acc": round(final["acc"], 4),
    }


def _curve(res: TrainResult) -> dict:
    return {
        "val_time": [e["time"] for e in res.evals],
        "val_bpb": [e["bpb"] for e in res.evals],
        "train_step": [s for s, _ in res.train_losses],
        "train_bpb": [loss / math.log(2) for _, loss in res.train_losses],
    }


def equal_steps(results: dict[str, TrainResult]) -> dict:
    """Every model at one step all of them evaluated: the last step of the shortest run when the
    others evaluated there (they do when it ran first), else the last step evaluated by all."""
    last = min(r.step for r in results.values())
    shared = set.intersection(*({e["step"] for e in r.evals} for r in results.values()))
    at = max((s for s in shared if s <= last), default=None)
    if at is None:
        return {"step": None, "models": {}, "note": ""}
    models = {}
    for name, r in results.items():
        ev = next(e for e in r.evals if e["step"] == at)
        models[name] = {
            "step": at,
            "time": round(ev["time"], 1),
            "bpb": round(ev["bpb"], 4),
            "acc": round(ev["acc"], 4),
        }
    where = (
        "the last step of the slower run"
        if at == last
        else f"the last step both evaluated (the slower run ended at {last})"
    )
    note = (
        f"Both models after {at} steps ({where}): the same batches, so the same data. The faster model "
        "is then part-way through its time schedule (its learning rate not yet decayed), which "
        "understates it at this step."
    )
    return {"step": at, "models": models, "note": note}


@dataclass
class _Run:
    """One model's part of the demo: its training result, the row of the table, its curve, a sample."""

    result: TrainResult
    row: dict
    curve: dict
    sample: str


def _train_one(
    name: str,
    cfg: TrainConfig,
    data: LMData,
    batches,
    windows,
    probe_s: float,
    eval_at: set[int],
    sample_tokens: int,
) -> _Run:
    """Train one model for cfg.max_time seconds, save it under cfg.out_dir/model, sample from it."""
    args = cfg.model
    model = build_model(args, 256, cfg.seed)
    label = f"{name} ({args['layers']})"
    print(
        f"demo: {label}: {count_parameters(model):,} parameters; {cfg.max_time:.0f} s of training (the "
        f"probe's {probe_s:.2f} s/step would give about {cfg.max_time / probe_s:.0f} steps)",
        flush=True,
    )
    res = train(
        model,
        batches,
        cfg,
        val_windows=windows,
        bytes_per_token=1.0,
        out_dir=cfg.out_dir,
        desc=name,
        eval_at=eval_at,
    )
    model.save_pretrained(os.path.join(cfg.out_dir, MODEL_DIR))
    data.tokenizer.save(os.path.join(cfg.out_dir, MODEL_DIR))
    sample = _sample(model, data.tokenizer, sample_tokens, cfg.seed)
    print(
        f"demo: {label}: {res.step} steps in {res.elapsed:.0f} s ({res.elapsed / res.step:.2f} s/step); "
        f"validation {res.evals[-1]['bpb']:.3f} bits/byte; sample:\n{sample}\n",
        flush=True,
    )
    return _Run(res, _result_row(args, model, res), _curve(res), sample)


def _summary(data: LMData, unigram: float, base: TrainConfig, per_step: dict, runs: dict[str, _Run]) -> dict:
    corpus = data.corpus
    return {
        "corpus": {
            "name": "stdlib",
            "fingerprint": corpus.fingerprint,
            "python": corpus.info.get("python"),
            "n_files": corpus.info.get("n_files"),
            "train_bytes": len(data.train),
            "val_bytes": len(data.val),
        },
        "unigram_bpb": round(unigram, 4),
        "budget_s_per_model": base.max_time,
        "probe_seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
        "seq_len": base.seq_len,
        "batch_size": base.batch_size,
        "models": {name: r.row for name, r in runs.items()},
        "equal_steps": equal_steps({name: r.result for name, r in runs.items()}),
    }


def demo(
    out: str = "outputs",
    budget_s: float = DEMO_BUDGET_S,
    seed: int = 0,
    ssm: str = "auto",
    ssm_model: dict | None = None,
    transformer_model: dict | None = None,
    sample_tokens: int = 300,
    batch_size: int = 16,
    seq_len: int = SEQ_LEN,
    n_eval_windows: int = 96,
    cache_dir: str = DEFAULT_CACHE_DIR,
) -> dict:
    """Train both models for `budget_s` seconds each; write the results under `out`; return the summary."""
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    base = TrainConfig(  # schedule "time": each run's learning rate decays over its budget of seconds
        seq_len=seq_len,
        batch_size=batch_size,
        lr=3e-3,
        warmup_steps=30,
        weight_decay=0.1,
        eval_windows=n_eval_windows,
        log_every=25,
        save_every=0,
        seed=seed,
        device="cpu",
        cache_dir=cache_dir,
        resume=False,
        schedule="time",
        max_time=budget_s,
        max_steps=1_000_000,
    )
    data, windows, unigram = _prepare(base)
    ssm_args = dict(ssm_model or pick_ssm(ssm))
    ssm_params = count_parameters(build_model(ssm_args, 256))
    models = {
        "ssm": ssm_args,
        "transformer": dict(transformer_model or match_transformer(ssm_params, TRANSFORMER_MODEL, 256)),
    }
    batches = LMBatches(data.train, seq_len, batch_size, seed)  # the same batches for both
    order, per_step, eval_every = plan(models, batches, budget_s, seed)
    runs: dict[str, _Run] = {}
    for name in order:
        run_dir = os.path.join(out, name)
        cfg = dataclasses.replace(base, model=models[name], eval_every=eval_every[name], out_dir=run_dir)
        ended = {r.result.step for r in runs.values()}  # where the earlier (slower) runs ended
        runs[name] = _train_one(name, cfg, data, batches, windows, per_step[name], ended, sample_tokens)
    runs = {name: runs[name] for name in models}
    summary = {
        **_summary(data, unigram, base, per_step, runs),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    curves = {f"{name} ({models[name]['layers']})": r.curve for name, r in runs.items()}
    print(write_report(out, summary, curves, {name: r.sample for name, r in runs.items()}, PROMPT))
    print(
        f"demo: everything is in {os.path.abspath(out)}/ (results.md, results.json, learning_curves.png, "
        f"samples.txt, ssm/, transformer/)"
    )
    return summary
