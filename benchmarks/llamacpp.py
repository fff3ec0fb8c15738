"""ssmkit against llama.cpp and transformers on the same random-weight Mamba-130M and Mamba-2-130M.

    .venv/bin/python -m benchmarks llamacpp                         # needs llama-cpp-python (bench extra)
    .venv/bin/python -m benchmarks llamacpp --models mamba2 --rounds 1 --lengths 512,2048

1. Checkpoints: transformers' MambaForCausalLM / Mamba2ForCausalLM at the published 130M shapes
   (d_model 768, 24 layers; Mamba d_state 16, Mamba-2 d_state 128, headdim 64, one group), random
   weights (seed 0), float32, written with save_pretrained.
2. GGUF: converted by the converter that llama-cpp-python's source distribution vendors
   (vendor/llama.cpp/convert_hf_to_gguf.py with its gguf-py and ggml-vocab-gpt-neox.gguf), to f32 and
   q8_0; the sdist of the installed version is fetched with `pip download` when --llama-src is not given.
3. Every engine runs in its own worker process (benchmarks/engines.py), all started before timing.
   Agreement first: last-position logits of one prompt against transformers' (max abs difference,
   and the largest logit for scale), and greedy tokens.
4. Rounds, each visiting every engine in turn (a load spike on the shared machine hits all alike):
   decode after a short prompt (its prefill timed too), prefill of a middle length, decode after a
   long prompt (its prefill timed too); ssmkit also decodes through `generate`. Medians over rounds.
5. The weight-reading floor, in the same rounds: a float32 matrix-vector product over a matrix of
   the model's weight bytes (torch, same threads): no decode can read its weights faster.
Memory: each worker's peak resident memory while loading, while decoding, and over the whole run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "llamacpp"
SHAPES = {
    "mamba": dict(
        vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4
    ),
    "mamba2": dict(
        vocab_size=50288,
        hidden_size=768,
        num_hidden_layers=24,
        state_size=128,
        expand=2,
        head_dim=64,
        num_heads=24,
        n_groups=1,
        chunk_size=256,
    ),
}
PEERS = ("llama.cpp", "llama.cpp q8_0", "ssmkit", "ssmkit int8", "transformers")


def write_checkpoint(kind: str, directory: Path) -> None:
    """A random-weight transformers checkpoint of the 130M shape (seed 0), unless already written."""
    if (directory / "config.json").is_file():
        return
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    config_cls, model_cls = {
        "mamba": (MambaConfig, MambaForCausalLM),
        "mamba2": (Mamba2Config, Mamba2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    cfg = config_cls(**SHAPES[kind], tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model_cls(cfg).save_pretrained(directory)


def llama_source(given: str | None) -> Path:
    """The unpacked llama-cpp-python sdist (matching the installed version) holding the converter."""
    if given:
        return Path(given)
    from importlib.metadata import version

    ver = version("llama-cpp-python")
    src = RESULTS / f"llama_cpp_python-{ver}"
    if not (src / "vendor/llama.cpp/convert_hf_to_gguf.py").is_file():
        RESULTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={ver}",
                "-d",
                str(RESULTS),
            ],
            check=True,
        )
        subprocess.run(
            ["tar", "xzf", str(RESULTS / f"llama_cpp_python-{ver}.tar.gz"), "-C", str(RESULTS)], check=True
        )
    return src


def convert(ckpt: Path, out: Path, outtype: str, src: Path) -> None:
    if out.is_file():
        return
    converter = src / "vendor/llama.cpp/convert_hf_to_gguf.py"
    subprocess.run(
        [sys.executable, str(converter), str(ckpt), "--outtype", outtype, "--outfile", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )


class Worker:
    """One engine in its own process; `ask` sends a command and returns the answer."""

    def __init__(self, name: str, ckpt: Path, gguf: Path, threads: int):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.engines", name, str(ckpt), str(gguf), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.loaded = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(
                f"engine {self.name!r} exited ({'signal ' + str(-code) if code < 0 else code})"
            )
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def floor_ms(weight_bytes: int, threads: int, reps: int = 5) -> float:
    """Time of a float32 matvec over a matrix of weight_bytes (the weight-reading floor of one token)."""
    import torch

    torch.set_num_threads(threads)
    W = torch.randn(weight_bytes // 4 // 4096, 4096)
    x = torch.randn(4096)
    W @ x
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        W @ x
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def drop_failing(workers: dict, prompt: list[int]) -> dict[str, str]:
    """Engines that crash on a short prompt are left out of the run, with the reason."""
    failed = {}
    for name, w in list(workers.items()):
        try:
            w.ask(op="prefill", ids=prompt)
        except RuntimeError as e:
            failed[name] = str(e)
            del workers[name]
    return failed


def agreement(workers: dict, prompt: list[int], steps: int) -> list[dict]:
    ref = ref_tokens = None
    if "transformers" in workers:
        ref = np.asarray(workers["transformers"].ask(op="logits", ids=prompt)["logits"])
        ref_tokens = workers["transformers"].ask(op="greedy", ids=prompt, steps=steps)["tokens"]
    rows = []
    for name, w in workers.items():
        logits = np.asarray(w.ask(op="logits", ids=prompt)["logits"])
        tokens = w.ask(op="greedy", ids=prompt, steps=steps)["tokens"]
        row = dict(engine=name, max_abs_logit=float(np.abs(logits).max()))
        if ref is not None:
            n = min(len(ref), len(logits))
            row.update(
                max_abs_diff=float(np.abs(logits[:n] - ref[:n]).max()),
                same_greedy=sum(a == b for a, b in zip(tokens, ref_tokens)),
            )
        rows.append(row)
    return rows


def bench_model(kind: str, args, src: Path | None) -> dict:
    ckpt = RESULTS / f"{kind}-130m"
    write_checkpoint(kind, ckpt)
    ggufs = {"llama.cpp": ckpt / "model-f32.gguf", "llama.cpp q8_0": ckpt / "model-q8_0.gguf"}
    engines = [e for e in args.engines.split(",") if e]
    for name, path in ggufs.items():
        if name in engines:
            convert(ckpt, path, "f32" if name == "llama.cpp" else "q8_0", src)
    weight_bytes = os.path.getsize(ckpt / "model.safetensors")  # float32, the tied head stored once
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in args.lengths.split(",")]
    short, long_ = lengths[0], lengths[-1]
    middle = lengths[1:-1]
    tokens = {n: rng.integers(0, 50000, n).tolist() for n in lengths}
    workers = {name: Worker(name, ckpt, ggufs.get(name, ""), args.threads) for name in engines}
    failed = drop_failing(workers, tokens[short][:8])
    res = dict(
        model=kind,
        weight_bytes=weight_bytes,
        load={n: w.loaded for n, w in workers.items()},
        failed=failed,
        agreement=agreement(workers, tokens[short][:64], 16),
    )
    t_prefill = {n: {L: [] for L in lengths} for n in workers}
    t_decode = {n: {c: [] for c in (short, long_)} for n in workers}
    t_generate, floors, peak_decode = [], [], {n: 0.0 for n in workers}
    for r in range(args.rounds):
        floors.append(floor_ms(weight_bytes, args.threads))
        for ctx in (short, long_):
            for name, w in workers.items():
                if name == "transformers" and ctx > args.hf_max_length:
                    continue
                out = w.ask(op="decode", ids=tokens[ctx], steps=args.steps)
                t_prefill[name][ctx].append(out["prefill_s"])
                t_decode[name][ctx].append(statistics.median(out["times"][2:]))
                peak_decode[name] = max(peak_decode[name], out["peak_mb"])
                if ctx == short and name == "ssmkit":
                    g = w.ask(op="decode", ids=tokens[ctx], steps=args.steps, generate=True)
                    t_generate.append(statistics.median(g["times"][2:]))
            if ctx == short:
                for L in middle:
                    for name, w in workers.items():
                        if not (name == "transformers" and L > args.hf_max_length):
                            t_prefill[name][L].append(w.ask(op="prefill", ids=tokens[L])["s"])
        print(f"  round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    res["floor_ms"] = med(floors)
    res["table"] = {
        name: dict(
            prefill_tok_s={L: L / med(t_prefill[name][L]) for L in lengths},
            decode_ms={c: 1e3 * med(t_decode[name][c]) for c in (short, long_)},
            peak_load_mb=workers[name].loaded["peak_mb"],
            peak_decode_mb=peak_decode[name],
            peak_run_mb=workers[name].ask(op="mem")["peak_mb"],
        )
        for name in workers
    }
    if t_generate:
        res["generate_ms"] = 1e3 * med(t_generate)
    for w in workers.values():
        w.close()
    return res


def print_report(res: dict, args) -> None:
    lengths = [int(x) for x in args.lengths.split(",")]
    short, long_ = lengths[0], lengths[-1]
    print(
        f"\n{res['model']}-130m, float32 weights {res['weight_bytes'] / 1e6:.0f} MB, {args.threads} threads, "
        f"{args.rounds} rounds; weight-reading floor (matvec over the weight bytes) {res['floor_ms']:.1f} ms"
    )
    for name, why in res["failed"].items():
        print(f"{name}: left out, {why}")
    print("| engine | max abs logit diff vs transformers (max logit) | greedy tokens equal |")
    print("|---|---:|---:|")
    for a in res["agreement"]:
        print(
            f"| {a['engine']} | {a.get('max_abs_diff', float('nan')):.2e} ({a['max_abs_logit']:.1f}) "
            f"| {a.get('same_greedy', '-')}/16 |"
        )
    head = " | ".join(f"prefill {L} tok/s" for L in lengths)
    print(
        f"| engine | {head} | decode ms/tok after {short} | after {long_} | x floor "
        f"| peak MB load / decode / run |"
    )
    print("|---|" + "---:|" * (len(lengths) + 4))
    for name, row in res["table"].items():
        pre = " | ".join(f"{row['prefill_tok_s'][L]:.0f}" for L in lengths)
        d = row["decode_ms"]
        print(
            f"| {name} | {pre} | {d[short]:.1f} | {d[long_]:.1f} | {d[short] / res['floor_ms']:.2f} "
            f"| {row['peak_load_mb']:.0f} / {row['peak_decode_mb']:.0f} / {row['peak_run_mb']:.0f} |"
        )
    if "generate_ms" in res and "ssmkit" in res["table"]:
        step = res["table"]["ssmkit"]["decode_ms"][short]
        print(
            f"ssmkit generate: {res['generate_ms']:.1f} ms/token vs {step:.1f} through model.step_ "
            f"({res['generate_ms'] / step:.2f}x)"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mamba,mamba2")
    p.add_argument("--engines", default=",".join(PEERS))
    p.add_argument(
        "--lengths", default="512,2048,8192", help="prefill lengths; decode after the first and last"
    )
    p.add_argument("--steps", type=int, default=32, help="decode steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hf-max-length", type=int, default=8192, help="longest prompt given to transformers")
    p.add_argument(
        "--llama-src", default=None, help="unpacked llama-cpp-python sdist (default: pip download)"
    )
    p.add_argument("--out", default=str(RESULTS / "llamacpp.json"))
    args = p.parse_args(argv)
    if importlib.util.find_spec("llama_cpp") is None:
        print("llamacpp: skipped, llama-cpp-python is not installed (pip install -e '.[bench]')")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    src = llama_source(args.llama_src)
    load0 = open("/proc/loadavg").read().strip()
    print(f"load average at start: {load0}", flush=True)
    results = []
    for kind in args.models.split(","):
        results.append(bench_model(kind, args, src))
        print_report(results[-1], args)
    load1 = open("/proc/loadavg").read().strip()
    print(f"\nload average: start {load0}; end {load1}")
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "loadavg": [load0, load1], "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
