"""`ssmkit demo`: the main job, a small Mamba-2 LM against a same-size Transformer, same wall clock."""

from __future__ import annotations

NAME, ORDER = "demo", 80
HELP = "the main job: SSM vs Transformer on the built-in corpus"
DESCRIPTION = (
    "Train a small Mamba-2 LM and a Transformer of the same size on the Python standard library "
    "sources (byte level), each for the same wall-clock budget; report validation bits per byte at "
    "equal time and at equal steps; write results, plot, samples."
)


def add_arguments(p) -> None:
    from ssmkit.training.config import DEMO_BUDGET_S

    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument(
        "--budget",
        type=float,
        default=DEMO_BUDGET_S,
        help="wall-clock seconds of training per model (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="windows of 256 bytes per step (default: 16)")
    p.add_argument(
        "--ssm",
        choices=("auto", "mamba2", "mamba"),
        default="auto",
        help="the SSM layer (default auto: mamba2 if available, else mamba)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")


def run(args) -> int:
    from ssmkit.training.demo import demo

    demo(out=args.out, budget_s=args.budget, seed=args.seed, ssm=args.ssm, batch_size=args.batch_size)
    return 0
