"""The main job: a small SSM LM and a same-size Transformer on the built-in stdlib corpus, same budget.

    python -m ssmkit demo --out outputs

Byte-level, context 256. Both models read the same batches for the same number of steps (the
same data budget), chosen from timed probes of each so the two runs take about 2 x budget_s
together; each run is capped at 1.5 x budget_s, so a machine slowed by other load still finishes
in bounded time (the table then records the step at which a run was stopped).
Reported: validation bits per byte of both and the unigram baseline (the train split's byte
frequencies scored on the validation split: what a model that ignores context can reach).
Written under --out: results.md, results.json, learning_curves.png, samples.txt, one directory per model.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from ssmkit.training.config import TrainConfig
from ssmkit.training.data import LMBatches, eval_windows, unigram_bits_per_token
from ssmkit.training.loop import train
from ssmkit.training.run import MODEL_DIR, build_model, count_parameters, prepare_data

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


def _plot(curves: dict, unigram_bpb: float, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        axes[0].plot([t / 60 for t in c["val_time"]], c["val_bpb"], marker="o", label=name)
        axes[1].plot(c["train_step"], c["train_bpb"], alpha=0.8, label=name)
    for ax in axes:
        ax.axhline(unigram_bpb, color="gray", linestyle="--", label="unigram baseline")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_xlabel("training time (min)")
    axes[0].set_title("validation")
    axes[1].set_xlabel("step")
    axes[1].set_title("training (per batch)")
    fig.suptitle("byte-level LM on the Python standard library sources")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def demo(
    out: str = "outputs",
    budget_s: float = 240.0,
    seed: int = 0,
    ssm: str = "auto",
    ssm_model: dict | None = None,
    transformer_model: dict | None = None,
    sample_tokens: int = 300,
    batch_size: int = 16,
    seq_len: int = SEQ_LEN,
    n_eval_windows: int = 96,
) -> dict:
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    base = TrainConfig(
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
        cache_dir=os.path.join(out, "cache"),
        resume=False,
    )
    ssm_args = dict(ssm_model or pick_ssm(ssm))
    print(f"demo: preparing the stdlib corpus (byte level) under {base.cache_dir}", flush=True)
    data = prepare_data(base)
    n_train, n_val = len(data.train), len(data.val)
    unigram = unigram_bits_per_token(data.train, data.val, 256)
    print(
        f"demo: corpus {data.corpus.info.get('n_files')} files (Python {data.corpus.info.get('python')}, "
        f"fingerprint {data.corpus.fingerprint}); train {n_train:,} bytes, validation {n_val:,} bytes; "
        f"unigram baseline {unigram:.3f} bits/byte",
        flush=True,
    )
    windows = eval_windows(data.val, seq_len, base.eval_windows)

    ssm_params = count_parameters(build_model(ssm_args, 256))
    tf_args = dict(transformer_model or match_transformer(ssm_params, TRANSFORMER_MODEL, 256))
    runs = {"ssm": ssm_args, "transformer": tf_args}
    # The same batches and the same number of steps for both (the same data budget), sized from timed
    # probes so the two runs take about 2 * budget_s together; a time cap (1.5 * budget_s each) keeps
    # the job bounded on a machine slowed by other load (the table then says where a run stopped).
    batches = LMBatches(data.train, seq_len, batch_size, seed)
    per_step = {name: seconds_per_step(build_model(args, 256, seed), batches) for name, args in runs.items()}
    steps = max(20, int(2 * budget_s / sum(per_step.values())))
    results, curves, samples = {}, {}, {}
    for name, args in runs.items():
        model = build_model(args, 256, seed)
        run_dir = os.path.join(out, name)
        cfg = TrainConfig(
            **{
                **base.to_dict(),
                "model": args,
                "max_steps": steps,
                "max_time": 1.5 * budget_s,
                "eval_every": max(1, steps // 8),
                "out_dir": run_dir,
                "save_every": 0,
            }
        )
        label = f"{name} ({args['layers']})"
        print(
            f"demo: {label}: {count_parameters(model):,} parameters, {steps} steps of {batch_size}x{seq_len} "
            f"bytes (~{per_step[name] * steps:.0f} s at {per_step[name]:.2f} s/step)",
            flush=True,
        )
        res = train(model, batches, cfg, val_windows=windows, bytes_per_token=1.0, out_dir=run_dir, desc=name)
        model.save_pretrained(os.path.join(run_dir, MODEL_DIR))
        data.tokenizer.save(os.path.join(run_dir, MODEL_DIR))
        final = res.evals[-1]
        results[name] = {
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
        curves[label] = {
            "val_time": [e["time"] for e in res.evals],
            "val_bpb": [e["bpb"] for e in res.evals],
            "train_step": [s for s, _ in res.train_losses],
            "train_bpb": [loss / math.log(2) for _, loss in res.train_losses],
        }
        samples[name] = _sample(model, data.tokenizer, sample_tokens, seed)
        print(
            f"demo: {label}: validation {final['bpb']:.3f} bits/byte (unigram {unigram:.3f}); sample:\n"
            f"{samples[name]}\n",
            flush=True,
        )

    plot_msg = _plot(curves, unigram, os.path.join(out, "learning_curves.png"))
    if plot_msg:
        print(f"demo: {plot_msg}")
    summary = {
        "corpus": {
            "name": "stdlib",
            "fingerprint": data.corpus.fingerprint,
            "python": data.corpus.info.get("python"),
            "n_files": data.corpus.info.get("n_files"),
            "train_bytes": n_train,
            "val_bytes": n_val,
        },
        "unigram_bpb": round(unigram, 4),
        "budget_s_per_model": budget_s,
        "planned_steps": steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "models": results,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "samples.txt"), "w") as f:
        for name, text in samples.items():
            f.write(f"===== {name} ({results[name]['layers']}), prompt {PROMPT!r} =====\n{text}\n\n")
    table = _markdown(summary)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    print(
        f"demo: everything is in {os.path.abspath(out)}/ (results.md, results.json, learning_curves.png, "
        f"samples.txt, ssm/, transformer/)"
    )
    return summary


def _markdown(s: dict) -> str:
    lines = [
        f"# ssmkit demo: byte-level LM on the Python {s['corpus']['python']} standard library",
        "",
        f"Train {s['corpus']['train_bytes']:,} bytes, validation {s['corpus']['val_bytes']:,} bytes "
        "(split by file, "
        f"fingerprint {s['corpus']['fingerprint']}); context {s['seq_len']}, batch {s['batch_size']}, "
        f"the same {s['planned_steps']} steps (batches) planned for each model, "
        f"~{s['budget_s_per_model']:.0f} s each on average. Whole run: {s['wall_seconds']:.0f} s.",
        "",
        "| model | layers | parameters | steps | train s | tokens/s | val bits/byte | val acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in s["models"].items():
        lines.append(
            f"| {name} | {r['layers']} | {r['parameters']:,} | {r['steps']}"
            f"{' (time cap)' if r['stopped'] == 'max_time' else ''} | {r['train_seconds']:.0f} | "
            f"{r['tokens_per_s']:,} | {r['val_bpb']:.3f} | {r['val_acc']:.3f} |"
        )
    lines.append(f"| unigram baseline | byte frequencies | 256 | - | - | - | {s['unigram_bpb']:.3f} | - |")
    return "\n".join(lines) + "\n"
