"""`ssmkit quantize`: an int8 copy of a model for CPU inference (ssmkit.models.int8)."""

from __future__ import annotations

import os
import shutil

NAME, ORDER = "quantize", 55
HELP = "write an int8 copy of a model (CPU inference)"
DESCRIPTION = (
    "Write SRC's model with int8 weights (in_proj/out_proj of Mamba and Mamba-2 layers, Mamba's "
    "x_proj, MLPs, embedding and LM head) to DST; `generate`, `eval` and from_pretrained load it directly."
)


def add_arguments(p) -> None:
    p.add_argument("src", help="run directory (holding model/), model directory or transformers checkpoint")
    p.add_argument("dst", help="destination model directory")


def run(args) -> int:
    from ssmkit.cli.loading import load_model
    from ssmkit.training.tokenizer import TOKENIZER_CONFIG, TOKENIZER_JSON

    model, src = load_model(args.src, int8=True)
    model.save_pretrained(args.dst)
    for name in (TOKENIZER_CONFIG, TOKENIZER_JSON):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(args.dst, name))
    print(f"quantized {src} -> {args.dst} (int8): weights {_mb(src):.1f} MB -> {_mb(args.dst):.1f} MB")
    return 0


def _mb(directory: str) -> float:
    """Megabytes of the weight files in a model directory."""
    names = [f for f in os.listdir(directory) if f.endswith((".safetensors", ".bin"))]
    return sum(os.path.getsize(os.path.join(directory, f)) for f in names) / 1e6
