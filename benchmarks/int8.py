"""int8 weights (ssmkit.models.int8) against float32 on trained models: accuracy and decode speed.

    .venv/bin/python -m benchmarks int8 --model outputs/mamba2/model --model runs/hf_mamba
    .venv/bin/python -m benchmarks int8                      # the demo's and the shipped configs' runs

Each --model is an ssmkit model directory (or a run directory holding model/) or a transformers
Mamba / Mamba-2 checkpoint (converted by ssmkit.interop.from_hf). On the corpus' validation split:
  forward bpb   ssmkit.training.loop.evaluate over --windows windows: the prompt path of the int8
                model (weights rounded to int8, activations in float32);
  decode bpb    --decode-windows windows read one token at a time through model.step: the decoding
                path (ssmkit.ops.int8_linear's numba kernel; activations stay float32);
  decode ms     per token through model.step_ (in place on its own State, as generate decodes) after
                a --prompt-token prompt, float32 and int8 in interleaved rounds (median), batch 1,
                --threads threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ssmkit.models.int8 import quantize_int8

DEFAULT_MODELS = (
    "outputs/mamba2/model",
    "outputs/mamba/model",
    "runs/stdlib_mamba2/model",
    "runs/stdlib_mamba/model",
)


def load(path: str):
    """(model, bytes per token of its tokenizer on the corpus, tokenizer) for an ssmkit or HF directory."""
    from ssmkit.interop import from_hf
    from ssmkit.models.heads import SSMForCausalLM
    from ssmkit.training.tokenizer import load_tokenizer

    d = os.path.join(path, "model") if os.path.isfile(os.path.join(path, "model", "config.json")) else path
    with open(os.path.join(d, "config.json")) as f:
        is_hf = "model_type" in json.load(f)
    model = from_hf(d) if is_hf else SSMForCausalLM.from_pretrained(d)
    return model.eval(), load_tokenizer(d)


def validation(tok, corpus: str, seq_len: int, windows: int, cache_dir: str):
    from ssmkit.training.corpora import get_corpus
    from ssmkit.training.data import TokenArray, eval_windows, write_tokens

    c = get_corpus(corpus, cache_dir)
    path = os.path.join(cache_dir, f"{c.name}-{c.fingerprint}-{tok.kind}{tok.vocab_size}", "val.bin")
    write_tokens(c.val_files, tok, path, fingerprint=c.fingerprint)
    val = TokenArray.open(path)
    return eval_windows(val, seq_len, windows), val.bytes_per_token


@torch.no_grad()
def decode_bpb(model, windows: torch.Tensor, bytes_per_token: float) -> float:
    """Bits per byte with every next-token distribution from model.step (one token at a time)."""
    st = model.init_state(windows.shape[0])
    nats = 0.0
    for t in range(windows.shape[1] - 1):
        logits = model.step(windows[:, t], st).float()
        nats += F.cross_entropy(logits, windows[:, t + 1], reduction="sum").item()
    return nats / (windows.shape[0] * (windows.shape[1] - 1)) / math.log(2) / bytes_per_token


@torch.no_grad()
def decode_ms(models: dict, prompt: torch.Tensor, steps: int, rounds: int) -> dict[str, float]:
    states = {}
    for name, m in models.items():
        states[name] = m.init_state(1)
        m(prompt, state=states[name])
    times = {name: [] for name in models}
    tok = prompt[:, -1]
    for _ in range(rounds):
        for name, m in models.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                m.step_(tok, states[name])
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts[2:]) for name, ts in times.items()}


def main(argv=None):
    from ssmkit.training.loop import evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model directory (repeatable)")
    p.add_argument("--corpus", default="stdlib")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--decode-windows", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=".ssmkit_cache")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.model or [m for m in DEFAULT_MODELS if os.path.isdir(m)]
    if not paths:
        print("int8: skipped, no trained model (pass --model DIR; `make demo` trains one)")
        return
    print(f"load average: {open('/proc/loadavg').read().strip()}")
    print(
        "| model | params | forward bpb f32 / int8 (rel) | decode bpb f32 / int8 (rel) "
        "| decode ms f32 / int8 |"
    )
    print("|---|---:|---:|---:|---:|")
    for path in paths:
        model, tok = load(path)
        q = quantize_int8(copy.deepcopy(model))
        windows, bpt = validation(tok, args.corpus, args.seq_len, args.windows, args.cache_dir)
        fwd = {n: evaluate(m, windows, 16, bpt)["bpb"] for n, m in (("f32", model), ("int8", q))}
        dec = {
            n: decode_bpb(m, windows[: args.decode_windows], bpt) for n, m in (("f32", model), ("int8", q))
        }
        ms = decode_ms({"f32": model, "int8": q}, windows[:1, : args.prompt_tokens], args.steps, args.rounds)
        n_params = sum(t.numel() for t in model.parameters())
        rel = lambda d: (d["int8"] - d["f32"]) / d["f32"]  # noqa: E731
        print(
            f"| {path} | {n_params:,} | {fwd['f32']:.4f} / {fwd['int8']:.4f} ({rel(fwd):+.2%}) "
            f"| {dec['f32']:.4f} / {dec['int8']:.4f} ({rel(dec):+.2%}) "
            f"| {ms['f32']:.2f} / {ms['int8']:.2f} |",
            flush=True,
        )
    print(f"load average: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
