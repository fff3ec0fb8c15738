"""A whole Mamba-130M-shaped model's forward on the CPU: Hugging Face's path against the same model
and weights with ssmkit's fused selective scan and causal conv patched in, tokens/s and the ratio.

    .venv/bin/python -m benchmarks model_cpu                  # b=1, l=2048, 24 layers, d_model=768
    .venv/bin/python -m benchmarks model_cpu --length 512 --cap 300

The model is transformers' MambaForCausalLM from a config (random init, seed 0; no download),
d_model=768, 24 layers, d_state=16, expand=2 (d_inner=1536), vocab 50280, float32, eval, no grad.
"Patched" swaps transformers' module-level `mamba_selective_scan` and `causal_conv1d_fn` (its CPU
fallbacks) for ssmkit's cpu kernels; everything else (projections, norms, head) is HF's own code.
Each variant runs in its own subprocess (see benchmarks/_cells.py), the same number of calls each
(--calls, default 3; the median is reported: a single call on a shared machine varies by 20%). The
logits of both are compared once in the parent, so a wrong patch cannot pass for a fast one. The cells
run under glibc's default allocator settings, as a user's process does (exact_peak=False in
benchmarks/_cells.py): peak MB is then the growth of the resident high-water mark, a lower bound.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._cells import run_cell

_HERE = "benchmarks.model_cpu"


def build(seed: int = 0):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    cfg = MambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4,
                      vocab_size=50280, use_mambapy=False)
    return MambaForCausalLM(cfg).eval()


def patch_ssmkit() -> None:
    """Route transformers' Mamba CPU fallbacks to ssmkit's fused kernels (process-wide)."""
    from transformers.models.mamba import modeling_mamba as hf

    from ssmkit.ops.causal_conv1d import numba as conv
    from ssmkit.ops.selective_scan import numba as scan

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, **_):
        # HF passes B, C as (b, n, l): one group
        return scan.selective_scan(u, delta, A, B[:, None], C[:, None], D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=delta_softplus, return_final_state=return_last_state)

    def causal_conv1d_fn(x, weight, bias=None, activation=None, **_):
        return conv.causal_conv1d(x, weight, bias=bias, activation=activation)

    hf.mamba_selective_scan = selective_scan
    hf.causal_conv1d_fn = causal_conv1d_fn


def model_cell(variant: str, b: int, L: int):
    if variant == "ssmkit":
        patch_ssmkit()
    model = build()
    ids = torch.randint(0, 50280, (b, L), generator=torch.Generator().manual_seed(1))

    def run():
        with torch.no_grad():
            model(ids[:, :L])

    with torch.no_grad():
        model(ids[:, :16])  # warm-up: numba loads its cached kernels
    return run


def check_logits(L: int = 64) -> float:
    """Relative difference of the logits, HF path vs patched, on a short input (in this process)."""
    ids = torch.randint(0, 50280, (1, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = build()(ids).logits
        patch_ssmkit()
        ours = build()(ids).logits
    return ((ours - ref).norm() / ref.norm()).item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--cap", type=float, default=300.0)
    p.add_argument("--calls", type=int, default=3, help="forward calls per variant (median reported)")
    p.add_argument("--out", default="benchmarks/results/model_cpu.md")
    args = p.parse_args(argv)

    kw = {"b": args.batch, "L": args.length}
    res = {v: run_cell(f"{_HERE}:model_cell", {"variant": v, **kw}, args.cap, calls=args.calls,
                       exact_peak=False)
           for v in ("ssmkit", "hf")}
    tokens = args.batch * args.length
    lines = [f"# model_cpu: Mamba-130M-shaped forward, b={args.batch}, l={args.length} "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "| path | time | tokens/s | peak MB |", "|---|---|---|---|"]
    for v, r in res.items():
        if "skipped" in r:
            lines.append(f"| {v} | {r['skipped']} |  |  |")
        else:
            lines.append(f"| {v} | {r['t']:.2f} s | {tokens / r['t']:.0f} | {r['peak_mb']:.0f} |")
    if all("skipped" not in r for r in res.values()):
        lines.append(f"\nssmkit patched in: {res['hf']['t'] / res['ssmkit']['t']:.1f}x HF's tokens/s")
    lines.append(f"logits rel. difference (l=64): {check_logits():.1e}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
