"""GPU benchmark: ssmkit's Triton kernels against ssmkit's PyTorch path and mamba_ssm's Triton kernels.

    python -m benchmarks.gpu                     # on a CUDA machine: every row below, a few minutes
    python -m benchmarks.gpu --smoke             # tiny shapes; on CPU it runs Triton's interpreter
    python -m benchmarks.gpu --only ssd,decode   # some sections: copy, scan, ssd, conv, step, train, decode

Rows, all timed in one run (median of --reps calls after a warm-up that compiles the kernels):
  copy    device-to-device copy rate: the bandwidth the kernels' rates are quoted against
  scan    selective_scan fwd and fwd+bwd (batch 8, L 2k/8k/16k, Mamba 130M/370M/1.4B widths, bf16):
          ssmkit triton vs ssmkit without Triton (its chunked PyTorch tier); achieved bandwidth of
          the forward for its minimal bytes (inputs read once, output written once)
  ssd     ssd fwd and fwd+bwd at Mamba-2 widths: ssmkit triton, mamba_ssm's mamba_chunk_scan_combined,
          ssmkit without Triton; tensor-core rate (the chunked algorithm's matmul FLOPs)
  conv    causal_conv1d fwd and fwd+bwd (width 4, SiLU) and bandwidth
  step    one decoding step's state update: ssmkit's fused kernels vs mamba_ssm's selective_state_update
  train   a whole Mamba-2 130M training step (batch 8 x 2048, bf16 weights, AdamW): tokens/s
  decode  Mamba-2 130M generate at batch 1: tokens/s with CUDA graphs, without, without Triton
"ssmkit without Triton" is what a CUDA user gets when Triton is missing (ssmkit.ops._triton.installed
patched to say so). A row that runs out of memory or takes over --cap seconds reports that and the
longer lengths of that row are skipped. mamba_ssm rows need its Python sources (its Triton kernels
are pure Python) and einops: installed, or found through --path (a source directory or a pure-Python
wheel, put on sys.path; default: every entry of .whl/), else they are skipped (see docs/gpu.md).
Results: benchmarks/results/gpu.md and gpu.json (gpu_smoke.* for --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from ssmkit.ops import _triton


# ---- rows -------------------------------------------------------------------------------------------
class Table:
    """The rows of the run, printed as they come; `failed` holds (section, impl, model, pass) of rows that
    ran out of memory or time, whose longer lengths are then skipped."""

    def __init__(self):
        self.rows: list[dict] = []
        self.failed: set[tuple] = set()

    def add(self, section: str, **row) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print("  ".join(shown), flush=True)




SECTIONS = ("copy", "scan", "ssd", "conv", "step", "train", "decode")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU: Triton's interpreter)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cap", type=float, default=20.0, help="seconds one call may take")
    p.add_argument("--out", default=None, help="default benchmarks/results/gpu.md (gpu_smoke.md)")
    p.add_argument("--path", action="append", default=None,
                   help="sys.path entry for the peers (source dir or pure-Python wheel); default: .whl/*")
    args = p.parse_args(argv)
    args.dtype = torch.bfloat16
    if args.smoke:
        args.reps, args.batch, args.tiny_width = 1, 1, 8
        args.scan_shapes = args.ssd_shapes = [("tiny", 24)]
        args.headdim, args.d_state, args.chunk = 8, 8, 16
        args.step_batches, args.train_len, args.decode_tokens = [1], 16, 3
        args.model_name = "tiny"
    else:
        args.batch, args.tiny_width = 8, 0
        lengths = (2048, 8192, 16384)
        args.scan_shapes = args.ssd_shapes = [(name, L) for name in ("130M", "370M", "1.4B") for L in lengths]
        args.headdim, args.d_state, args.chunk = 64, 128, 256
        args.step_batches, args.train_len, args.decode_tokens = [1, 16, 64], 2048, 256
        args.model_name = "mamba2-130m"
    if args.path is None:
        args.path = sorted(str(p) for p in Path(".whl").glob("*")) if Path(".whl").is_dir() else []
    args.only = [s for s in args.only.split(",") if s]
    bad = sorted(set(args.only) - set(SECTIONS))
    if bad:
        p.error(f"unknown sections {bad}; choose from {list(SECTIONS)}")
    return args


def environment(device) -> dict:
    import triton

    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "triton": triton.__version__,
           "interpreter": _triton.interpreting()}
    if device.type != "cuda":
        env["note"] = "no GPU: Triton's interpreter on CPU tensors; timings say nothing about GPU speed"
    return env


def write(table: Table, env: dict, out: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"environment": env, "rows": table.rows}, f, indent=1)
    keys = []
    for r in table.rows:
        keys += [k for k in r if k not in keys]
    lines = [f"# GPU benchmark ({env['device']})", "", " ".join(f"{k}={v}" for k, v in env.items()), "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in table.rows:
        cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)   # noqa: E731
        lines.append("| " + " | ".join(cell(r.get(k)) for k in keys) + " |")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("benchmarks.gpu needs a CUDA device (on CPU: --smoke, which runs Triton's interpreter)")
    if device.type == "cpu" and not _triton.interpreting():
        if "triton" in sys.modules:
            sys.exit("--smoke on CPU needs TRITON_INTERPRET=1 set before Triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"               # read by Triton when it is first imported
    from benchmarks import _gpu_sections as sections  # after TRITON_INTERPRET is settled

    torch.manual_seed(0)
    env = environment(device)
    sys.path[:0] = args.path
    peer, why = (None, "mamba_ssm rows run on CUDA only")
    if device.type == "cuda":
        peer, why = sections.mamba_ssm_kernels()
    env["mamba_ssm"] = "loaded" if peer is not None else why
    print(env, flush=True)
    table, copy_gbs = Table(), float("nan")
    if "copy" in args.only or "scan" in args.only or "conv" in args.only:
        copy_gbs = sections.copy_rate(table, device, args)
    extra = {"scan": (copy_gbs,), "ssd": (peer,), "conv": (copy_gbs,), "step": (peer,)}
    for section in SECTIONS[1:]:
        if section in args.only:
            print(f"--- {section}", flush=True)
            getattr(sections, f"bench_{section}")(table, device, args, *extra.get(section, ()))
    default = "benchmarks/results/gpu_smoke.md" if args.smoke else "benchmarks/results/gpu.md"
    write(table, env, args.out or default)


if __name__ == "__main__":
    main()
