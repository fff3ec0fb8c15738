"""The `ssmkit` command (also `python -m ssmkit`).

    ssmkit demo --out outputs                         # the main job: SSM vs Transformer on the stdlib corpus
    ssmkit train --config configs/stdlib_mamba2.yaml --set lr=1e-3 --set model.d_model=192
    ssmkit generate runs/ssmkit --prompt "def " --max-new-tokens 200
    ssmkit eval runs/ssmkit
    ssmkit info runs/ssmkit                           # or: ssmkit info --config run.yaml
    ssmkit bench [args for python -m benchmarks]
    ssmkit convert --to ssmkit HF_DIR OUT_DIR         # or --to hf SSMKIT_DIR OUT_DIR
    ssmkit serve runs/ssmkit --port 8000 --db sessions.db --api-key KEY   # OpenAI-compatible server

A user's mistake (unknown flag, missing file, bad config key) prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

USER_ERRORS = (FileNotFoundError, NotADirectoryError, ImportError, ValueError)


class UsageError(Exception):
    """A mistake in the command line or its files: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _model_dir(path: str) -> str:
    """A run directory (holding model/) or a model directory (holding config.json)."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such directory")
    for candidate in (os.path.join(path, "model"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise UsageError(f"{path}: no model here (expected config.json in it or in {path}/model)")


def _load_model(path: str):
    from ssmkit.models.heads import SSMForCausalLM
    from ssmkit.training.tokenizer import load_tokenizer

    d = _model_dir(path)
    return SSMForCausalLM.from_pretrained(d), load_tokenizer(d)


# ---- subcommands ----------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from ssmkit.training.config import TrainConfig
    from ssmkit.training.run import run

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.no_resume:
        overrides.append("resume=false")
    cfg = TrainConfig.from_yaml(args.config, overrides)
    summary = run(cfg)
    res = summary["result"]
    if not res.evals:
        return 0
    last = res.evals[-1]
    bpb = f", {last['bpb']:.3f} bits/byte" if "bpb" in last else ""
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"trained {summary['n_params']:,} parameters to step {res.step} ({res.stopped}): "
            f"validation loss {last['loss']:.4f}{bpb}; model in {os.path.join(cfg.out_dir, 'model')}"
        )
    return 0


def cmd_generate(args) -> int:
    import torch

    model, tok = _load_model(args.checkpoint)
    model.eval()
    torch.manual_seed(args.seed)
    ids = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise UsageError("generate: --prompt must not be empty")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    pending: list[int] = []
    kwargs = dict(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    with torch.no_grad():
        for tok_t in model.generate(ids, max_new_tokens=args.max_new_tokens, stream=True, **kwargs):
            pending.append(int(tok_t[0]))
            text = tok.decode(pending)
            if "\ufffd" not in text or len(pending) >= 4:  # wait for a whole UTF-8 character
                sys.stdout.write(text)
                sys.stdout.flush()
                pending = []
    if pending:
        sys.stdout.write(tok.decode(pending))
    sys.stdout.write("\n")
    return 0


def cmd_eval(args) -> int:
    from ssmkit.training.corpora import get_corpus
    from ssmkit.training.data import TokenArray, eval_windows, write_tokens
    from ssmkit.training.loop import evaluate

    model, tok = _load_model(args.checkpoint)
    corpus = get_corpus(args.corpus, args.cache_dir)
    path = os.path.join(
        args.cache_dir, f"{corpus.name}-{corpus.fingerprint}-{tok.kind}{tok.vocab_size}", "val.bin"
    )
    write_tokens(corpus.val_files, tok, path, fingerprint=corpus.fingerprint)
    val = TokenArray.open(path)
    r = evaluate(model, eval_windows(val, args.seq_len, args.windows), args.batch_size, val.bytes_per_token)
    print(
        f"{corpus.name} validation ({args.windows} windows of {args.seq_len}): loss {r['loss']:.4f} nats, "
        f"{r['bpb']:.4f} bits/byte, perplexity {r['ppl']:.2f}, accuracy {r['acc']:.4f}"
    )
    return 0


def _print_layers() -> None:
    from ssmkit.layers import registry

    print("layer names for SSMConfig.layers (ssmkit.layers.registry):")
    for name in registry.names():
        spec = registry.get(name)
        print(f"  {name:<10} {spec.cls.__name__:<10} {spec.summary}")


def cmd_info(args) -> int:
    import torch

    from ssmkit.ops._dispatch import available_backends
    from ssmkit.training.run import count_parameters

    if args.layers:
        _print_layers()
        return 0
    if args.checkpoint:
        model, _ = _load_model(args.checkpoint)
        source = _model_dir(args.checkpoint)
    else:
        from ssmkit.training.config import TrainConfig
        from ssmkit.training.run import build_model

        cfg = TrainConfig.from_yaml(args.config, args.set or [])
        model = build_model(cfg.model, cfg.model.get("vocab_size", 256))
        source = args.config or "default TrainConfig"
    cfg = model.config
    print(f"model ({source}): {count_parameters(model):,} parameters")
    print(
        f"  d_model={cfg.d_model} n_layer={cfg.n_layer} vocab_size={cfg.vocab_size} layers={cfg.layer_types}"
    )
    state = model.init_state(1)
    print(
        f"  recurrent state per sequence: {state.nbytes:,} bytes at start (attention layers add a KV cache)"
    )
    x = torch.zeros(1)
    print("backends on this machine (CPU tensors):")
    for op in ("selective_scan", "ssd", "causal_conv1d", "fft_conv", "parallel_scan"):
        backends = available_backends(op, x)
        line = ", ".join(f"{b}: {'yes' if why is None else 'no'}" for b, why in backends.items())
        print(f"  {op}: {line}")
    return 0


def cmd_bench(args) -> int:
    root = os.getcwd()
    if not os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")):
        raise UsageError(
            "bench: no benchmark suite here (run from the ssmkit repository, which has benchmarks/)"
        )
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.bench_args])


def cmd_convert(args) -> int:
    from ssmkit.interop import from_hf, to_hf

    if not os.path.exists(args.src):
        raise UsageError(f"convert: {args.src}: no such file or directory")
    if args.to == "ssmkit":
        model = from_hf(args.src)
        model.save_pretrained(args.dst)
    else:
        model, _ = _load_model(args.src)
        to_hf(model, args.dst)
    print(f"converted {args.src} -> {args.dst} ({args.to}): {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, layers {model.config.layers!r}")
    return 0


def cmd_serve(args) -> int:
    from ssmkit.serve.app import serve
    from ssmkit.serve.config import ServeConfig

    keys = list(args.api_key or []) + [k for k in os.environ.get("SSMKIT_API_KEYS", "").split(",") if k]
    cfg = ServeConfig(model_dir=_model_dir(args.checkpoint), host=args.host, port=args.port, db=args.db,
                      api_keys=keys)
    serve(cfg.with_overrides(args.set or []))
    return 0


def cmd_demo(args) -> int:
    from ssmkit.training.demo import demo

    demo(out=args.out, budget_s=args.budget, seed=args.seed, ssm=args.ssm, batch_size=args.batch_size)
    return 0


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssmkit", description="State space sequence models: train, generate, evaluate, convert.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a language model from a YAML config", description=cmd_train_doc())
    t.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    t.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. lr=1e-3 or model.d_model=192 (repeatable)",
    )
    t.add_argument("--out", help="output directory (same as --set out_dir=...)")
    t.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a checkpoint")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser(
        "generate",
        help="generate text from a trained model, streaming",
        description="Generate from a run directory (or its model/ directory), streaming tokens.",
    )
    g.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    g.add_argument("--prompt", "-p", default="def ", help="text to continue (default: %(default)r)")
    g.add_argument("--max-new-tokens", "-n", type=int, default=200, help="tokens to generate (default: 200)")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = all (default)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    g.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser(
        "eval",
        help="validation loss / bits per byte of a trained model",
        description="Evaluate a trained model on a corpus' validation split.",
    )
    e.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    e.add_argument(
        "--corpus", default="stdlib", help="stdlib, kjv, python-docs, dna, or files (default: stdlib)"
    )
    e.add_argument("--seq-len", type=int, default=256, help="window length (default: 256)")
    e.add_argument("--windows", type=int, default=128, help="validation windows (default: 128)")
    e.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: 16)")
    e.add_argument("--cache-dir", default=".ssmkit_cache", help="token array cache (default: .ssmkit_cache)")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks)",
        description="Run the speed/memory benchmarks; extra arguments go to python -m benchmarks.",
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser(
        "convert",
        help="convert between Hugging Face and ssmkit checkpoints",
        description="Convert a transformers (or mamba_ssm) Mamba/Mamba-2 checkpoint directory to an "
        "ssmkit model directory (--to ssmkit), or an ssmkit pure Mamba/Mamba-2 model to a transformers "
        "one (--to hf). Needs no transformers installed.",
    )
    c.add_argument("--to", choices=("ssmkit", "hf"), required=True, help="target format")
    c.add_argument("src", help="source directory")
    c.add_argument("dst", help="destination directory")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser(
        "info",
        help="parameters, state size and active backends",
        description="Describe a trained model (or a config's model) and the available backends.",
    )
    i.add_argument("checkpoint", nargs="?", help="run or model directory (else --config / defaults)")
    i.add_argument("--config", "-c", help="YAML config whose model to describe")
    i.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    i.add_argument("--layers", action="store_true", help="list the layer names a pattern can use, and exit")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server whose conversations are saved states",
        description="Serve a model over HTTP: /v1/completions, /v1/chat/completions (streaming), "
        "sessions that are saved States (stored in SQLite, surviving restarts), and a chat page at /. "
        "See docs/serve.md.",
    )
    v.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback)")
    v.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    v.add_argument(
        "--db", default="ssmkit-sessions.db", help="SQLite file of sessions (default: %(default)s)"
    )
    v.add_argument("--api-key", action="append", metavar="KEY",
                   help="require `Authorization: Bearer KEY` (repeatable; or SSMKIT_API_KEYS=k1,k2)")
    v.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="a ServeConfig limit, e.g. max_batch=32 or prefix_cache_mb=0 (repeatable)")
    v.set_defaults(func=cmd_serve)

    d = sub.add_parser(
        "demo",
        help="the main job: SSM vs Transformer on the built-in corpus",
        description="Train a small Mamba-2 LM and a same-size Transformer on the Python standard "
        "library sources (byte level) for the same time budget; write results, plot, samples.",
    )
    d.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    d.add_argument("--budget", type=float, default=240.0, help="training seconds per model (default: 240)")
    d.add_argument("--batch-size", type=int, default=16, help="windows of 256 bytes per step (default: 16)")
    d.add_argument(
        "--ssm",
        choices=("auto", "mamba2", "mamba"),
        default="auto",
        help="the SSM layer (default auto: mamba2 if available, else mamba)",
    )
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.set_defaults(func=cmd_demo)
    return p


def cmd_train_doc() -> str:
    from ssmkit.training.config import TrainConfig

    keys = ", ".join(sorted(TrainConfig.fields()))
    return (
        "Train a causal LM. Settings come from the YAML config (top-level keys; model: holds SSMConfig "
        f"arguments), then --set overrides. Keys: {keys}. Under torchrun the same command runs "
        "data-parallel (DDP; distributed: fsdp for sharded)."
    )


def main(argv: list[str] | None = None) -> int:
    from ssmkit.training.config import ConfigError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except (UsageError, ConfigError) as e:
        msg = str(e).splitlines()[0]
        print(msg if msg.startswith("ssmkit") else f"ssmkit: error: {msg}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ssmkit: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("ssmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
