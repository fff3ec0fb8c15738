"""`ssmkit convert`: transformers / mamba_ssm checkpoints to ssmkit and back."""

from __future__ import annotations

import os

NAME, ORDER = "convert", 50
HELP = "convert between Hugging Face and ssmkit checkpoints"
DESCRIPTION = (
    "Convert a transformers (or mamba_ssm) Mamba/Mamba-2 checkpoint directory to an ssmkit model "
    "directory (--to ssmkit), or an ssmkit pure Mamba/Mamba-2 model to a transformers one (--to hf). "
    "Needs no transformers installed."
)


def add_arguments(p) -> None:
    p.add_argument("--to", choices=("ssmkit", "hf"), required=True, help="target format")
    p.add_argument("src", help="source directory")
    p.add_argument("dst", help="destination directory")


def run(args) -> int:
    from ssmkit.cli.errors import UsageError
    from ssmkit.cli.loading import load_model
    from ssmkit.interop import from_hf, to_hf

    if not os.path.exists(args.src):
        raise UsageError(f"convert: {args.src}: no such file or directory")
    if args.to == "ssmkit":
        model = from_hf(args.src)
        model.save_pretrained(args.dst)
    else:
        model, _ = load_model(args.src)
        to_hf(model, args.dst)
    print(
        f"converted {args.src} -> {args.dst} ({args.to}): {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, layers {model.config.layers!r}"
    )
    return 0
