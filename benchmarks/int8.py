"""int8 weights (ssmkit.models.int8) against float32: decode speed at 130M shapes, accuracy on trained models.

    .venv/bin/python -m benchmarks int8                          # both parts, the default models
    .venv/bin/python -m benchmarks int8 --part speed --threads 1,2
    .venv/bin/python -m benchmarks int8 --part accuracy --model runs/stdlib_mamba2 --hf

speed     Mamba-130M- and Mamba-2-130M-shaped models (24 layers, d_model 768, vocab 50280, random
          weights, seed 0) in float32 and int8: ms per token through model.step_ (in place on its
          own State, as generate decodes) after a --prompt-tokens prompt, the two models in
          interleaved rounds (--rounds x --steps tokens each; median and min over all tokens), batch 1,
          each --threads count in turn; --parallel-above N adds int8 with the kernel's threads taken
          above N weights (ssmkit.ops.int8_linear.numba.PARALLEL_ABOVE). "read": the weight bytes a
          token reads.
accuracy  each --model (an ssmkit model directory or a run directory holding model/, or a transformers
          Mamba / Mamba-2 checkpoint, converted by ssmkit.interop.from_hf) on the corpus' validation
          split; with --hf also each ssmkit model written by ssmkit.interop.to_hf, loaded and saved
          again by transformers (when installed: the checkpoint is then transformers' own writing),
          and read back by from_hf:
            forward bpb  ssmkit.training.loop.evaluate over --windows windows: the prompt path of the
                         int8 model (weights rounded to int8, activations in float32);
            decode bpb   --decode-windows windows read one token at a time through model.step: the
                         decoding path (ssmkit.ops.int8_linear's numba kernel).
Random-weight 130M models say little about accuracy (their logits swing by several units under any
rounding of the weights, llama.cpp's q8_0 alike): accuracy is judged on trained models only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import time

import torch
import torch.nn.functional as F

from ssmkit.models.int8 import quantize_int8

DEFAULT_MODELS = ("outputs/ssm/model", "runs/stdlib_mamba2/model", "runs/stdlib_mamba/model")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "int8")
SHAPES = {  # the published 130M checkpoints' shapes (state-spaces/mamba-130m, mamba2-130m)
    "mamba": dict(d_state=16, d_conv=4, expand=2),
    "mamba2": dict(d_state=128, headdim=64, expand=2, ngroups=1),
}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def shaped_model(kind: str):
    from ssmkit import SSMConfig, SSMForCausalLM

    cfg = SSMConfig(d_model=768, n_layer=24, vocab_size=50280, layers=kind, layer_kwargs={kind: SHAPES[kind]})
    torch.manual_seed(0)
    return SSMForCausalLM(cfg).eval()


def weight_bytes(model) -> int:
    """Bytes of the matrices a decoded token reads: every linear map's weight (the LM head's too, when
    tied to the embedding, whose lookup reads one row)."""
    from torch import nn

    from ssmkit.layers.int8 import Int8Linear

    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, Int8Linear)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            total += m.weight.numel() * m.weight.element_size()
    return total


@torch.no_grad()
def decode_ms(variants: dict, prompt: torch.Tensor, steps: int, rounds: int) -> dict:
    """(median, min) ms per token of model.step_ for each variant (name -> (model, the int8 kernel's
    PARALLEL_ABOVE or None)), the variants taking turns round by round (the min: the cost least
    disturbed by other processes on a shared machine)."""
    from ssmkit.ops.int8_linear import numba as kernel

    default, states = kernel.PARALLEL_ABOVE, {}
    for name, (m, _) in variants.items():
        states[name] = m.init_state(1)
        m(prompt, state=states[name])
        for _ in range(2):  # warm-up: compiled kernels loaded, buffers allocated
            m.step_(prompt[:, -1], states[name])
    times = {name: [] for name in variants}
    tok = prompt[:, -1]
    try:
        for _ in range(rounds):
            for name, (m, above) in variants.items():
                kernel.PARALLEL_ABOVE = default if above is None else above
                for _ in range(steps):
                    t0 = time.perf_counter()
                    m.step_(tok, states[name])
                    times[name].append(time.perf_counter() - t0)
    finally:
        kernel.PARALLEL_ABOVE = default
    return {name: (1e3 * statistics.median(ts), 1e3 * min(ts)) for name, ts in times.items()}


def speed(args) -> None:
    print(f"\n## decode, 130M shapes, random weights, batch 1 (load average {loadavg()})\n")
    print("| model | threads | weights | ms/token median (min) | vs float32 median (min) | read MB |")
    print("|---|---:|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        f32 = shaped_model(kind)
        q = quantize_int8(copy.deepcopy(f32))
        prompt = torch.randint(0, 50280, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
        variants = {"float32": (f32, None), "int8": (q, None)}
        for above in args.parallel_above:
            variants[f"int8, threads above {above:,} weights"] = (q, above)
        read = {"float32": weight_bytes(f32), "int8": weight_bytes(q)}
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            ms = decode_ms(variants, prompt, args.steps, args.rounds)
            f, f_min = ms["float32"]
            for name, (t, t_min) in ms.items():
                print(
                    f"| {kind}-130m | {threads} | {name} | {t:.2f} ({t_min:.2f}) "
                    f"| {f / t:.2f}x ({f_min / t_min:.2f}x) | {read[name.split(',')[0]] / 1e6:.0f} |",
                    flush=True,
                )
        del f32, q, variants
    print(f"\nload average after: {loadavg()}")


def load(path: str):
    """(model, tokenizer) for an ssmkit model directory (or a run directory holding model/) or an HF one."""
    from ssmkit.interop import from_hf
    from ssmkit.models.heads import SSMForCausalLM
    from ssmkit.training.tokenizer import load_tokenizer

    d = os.path.join(path, "model") if os.path.isfile(os.path.join(path, "model", "config.json")) else path
    with open(os.path.join(d, "config.json")) as f:
        is_hf = "model_type" in json.load(f)
    model = from_hf(d) if is_hf else SSMForCausalLM.from_pretrained(d)
    return model.eval(), load_tokenizer(d)


def hf_copy(path: str) -> str:
    """The ssmkit model at `path` written as a transformers checkpoint (ssmkit.interop.to_hf), then
    loaded and saved again by transformers when it is installed; returns its directory."""
    from ssmkit.interop import to_hf

    model, _ = load(path)
    src = os.path.join(path, "model") if os.path.isdir(os.path.join(path, "model")) else path
    out = os.path.join(RESULTS, os.path.normpath(path).replace(os.sep, "_") + "-hf")
    shutil.rmtree(out, ignore_errors=True)
    to_hf(model, out)
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print(f"({out}: written by ssmkit's to_hf; transformers is not installed)")
    else:
        AutoModelForCausalLM.from_pretrained(out).save_pretrained(out)
    for name in os.listdir(src):  # the tokenizer files the model was trained with
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(src, name), out)
    return out


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


def accuracy(args) -> None:
    from ssmkit.training.loop import evaluate

    paths = args.model or [m for m in DEFAULT_MODELS if os.path.isdir(m)]
    if not paths:
        print("\nint8 accuracy: skipped, no trained model (pass --model DIR; `make demo` trains one)")
        return
    if args.hf:
        paths = [p for path in paths for p in (path, hf_copy(path))]
    print(f"\n## accuracy, {args.corpus} validation split (load average {loadavg()})\n")
    print("| model | params | forward bpb f32 / int8 (rel) | decode bpb f32 / int8 (rel) |")
    print("|---|---:|---:|---:|")
    for path in paths:
        model, tok = load(path)
        q = quantize_int8(copy.deepcopy(model))
        windows, bpt = validation(tok, args.corpus, args.seq_len, args.windows, args.cache_dir)
        fwd = {n: evaluate(m, windows, 16, bpt)["bpb"] for n, m in (("f32", model), ("int8", q))}
        dec = {
            n: decode_bpb(m, windows[: args.decode_windows], bpt) for n, m in (("f32", model), ("int8", q))
        }
        n_params = sum(t.numel() for t in model.parameters())
        rel = lambda d: (d["int8"] - d["f32"]) / d["f32"]  # noqa: E731
        print(
            f"| {path} | {n_params:,} | {fwd['f32']:.4f} / {fwd['int8']:.4f} ({rel(fwd):+.2%}) "
            f"| {dec['f32']:.4f} / {dec['int8']:.4f} ({rel(dec):+.2%}) |",
            flush=True,
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "speed", "accuracy"), default="all")
    p.add_argument("--kinds", default="mamba,mamba2", help="speed: the 130M shapes, comma-separated")
    p.add_argument("--threads", default="2", help="speed: thread counts, comma-separated (e.g. 1,2)")
    p.add_argument("--parallel-above", type=int, action="append", default=[],
                   help="speed: also int8 with the kernel's PARALLEL_ABOVE set to this (repeatable)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="speed: tokens per model per round")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--model", action="append", help="accuracy: model directory (repeatable)")
    p.add_argument("--hf", action="store_true", help="accuracy: also each model through to_hf/from_hf")
    p.add_argument("--corpus", default="stdlib")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--decode-windows", type=int, default=8)
    p.add_argument("--cache-dir", default=".ssmkit_cache")
    args = p.parse_args(argv)
    if args.part in ("all", "speed"):
        speed(args)
    if args.part in ("all", "accuracy"):
        torch.set_num_threads(int(args.threads.split(",")[-1]))
        accuracy(args)


if __name__ == "__main__":
    main()
