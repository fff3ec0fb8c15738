"""`ssmkit train`: a language model from a YAML config and --set overrides (resumes, stops cleanly)."""

from __future__ import annotations

import os
import sys

NAME, ORDER = "train", 10
HELP = "train a language model from a YAML config"


def add_arguments(p) -> None:
    from ssmkit.training.config import TrainConfig

    keys = ", ".join(sorted(TrainConfig.fields()))
    p.description = (
        "Train a causal LM. Settings come from the YAML config (top-level keys; model: holds SSMConfig "
        f"arguments), then --set overrides. Keys: {keys}. A run in an --out that holds a checkpoint "
        "resumes from it; Ctrl-C (or SIGTERM) stops after the current step with a checkpoint. Under "
        "torchrun the same command runs data-parallel (DDP; distributed: fsdp for sharded)."
    )
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. lr=1e-3 or model.d_model=192 (repeatable)",
    )
    p.add_argument("--out", help="output directory (same as --set out_dir=...)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a checkpoint")


def run(args) -> int:
    import dataclasses

    from ssmkit.training.config import TrainConfig
    from ssmkit.training.interrupt import TrainingInterrupted
    from ssmkit.training.loop import TrainingDiverged
    from ssmkit.training.run import run as run_training

    cfg = TrainConfig.from_yaml(args.config, list(args.set or []))
    if args.out:
        cfg = dataclasses.replace(cfg, out_dir=args.out)
    if args.no_resume:
        cfg = dataclasses.replace(cfg, resume=False)
    try:
        summary = run_training(cfg)
    except TrainingInterrupted as e:
        print(f"ssmkit train: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"ssmkit train: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(_summary_line(summary, cfg))
    return 0


def _summary_line(summary: dict, cfg) -> str:
    res = summary["result"]
    if res.stopped == "finished":
        return (
            f"{cfg.out_dir}: this run is finished (step {res.step} of max_steps {cfg.max_steps}, checkpoint "
            f"{res.checkpoint}); nothing to train. Raise max_steps to train further, or start afresh with "
            "--no-resume or another --out"
        )
    line = f"trained {summary['n_params']:,} parameters to step {res.step} ({res.stopped})"
    if res.evals:
        last = res.evals[-1]
        bpb = f", {last['bpb']:.3f} bits/byte" if "bpb" in last else ""
        line += f": validation loss {last['loss']:.4f}{bpb}"
    return f"{line}; model in {os.path.join(cfg.out_dir, 'model')}"
