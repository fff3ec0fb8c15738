"""`ssmkit eval`: validation loss and bits per byte of a trained model on a corpus."""

from __future__ import annotations

import os

NAME, ORDER = "eval", 30
HELP = "validation loss / bits per byte of a trained model"
DESCRIPTION = "Evaluate a trained model on a corpus' validation split."


def add_arguments(p) -> None:
    from ssmkit.training.config import DEFAULT_CACHE_DIR
    from ssmkit.training.corpora import CORPORA

    p.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    p.add_argument(
        "--corpus",
        default="stdlib",
        help=f"{', '.join(CORPORA)}, or files / a directory / a glob (default: stdlib)",
    )
    p.add_argument("--seq-len", type=int, default=256, help="window length (default: 256)")
    p.add_argument("--windows", type=int, default=128, help="validation windows (default: 128)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: 16)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="token array cache (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="int8 weights (CPU; see ssmkit quantize)")


def run(args) -> int:
    from ssmkit.cli.loading import load_model_and_tokenizer
    from ssmkit.training.corpora import get_corpus
    from ssmkit.training.data import TokenArray, eval_windows, token_dir, write_tokens
    from ssmkit.training.evaluation import evaluate

    model, tok, _ = load_model_and_tokenizer(args.checkpoint, args.int8)
    corpus = get_corpus(args.corpus, args.cache_dir)
    path = os.path.join(token_dir(args.cache_dir, corpus, tok), "val.bin")
    write_tokens(corpus.val_files, tok, path, fingerprint=corpus.fingerprint)
    val = TokenArray.open(path)
    r = evaluate(model, eval_windows(val, args.seq_len, args.windows), args.batch_size, val.bytes_per_token)
    print(
        f"{corpus.name} validation ({args.windows} windows of {args.seq_len}): loss {r['loss']:.4f} nats, "
        f"{r['bpb']:.4f} bits/byte, perplexity {r['ppl']:.2f}, accuracy {r['acc']:.4f}"
    )
    return 0
