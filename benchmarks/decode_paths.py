"""The decoding paths of one model side by side: a 130M Mamba / Mamba-2 token (batch 1, 2 threads) through

    stack      every block in one kernel call (Backbone.step_ -> Mixer.stack_step_), what generate runs
    blocks     one kernel call per block (Mixer.block_step_): a hybrid's Mamba blocks
    per-part   the mixers' state-update kernels with PyTorch's projections, norms and residual adds
               (ssmkit.ops._numba.decode): the path before the block kernels
    linears    the model's nn.Linear matrix-vector products alone (LM head included): what reading
               the float32 weights through PyTorch costs, the bound the others approach

for float32 and int8 weights (ssmkit.models.int8), interleaved in rounds so that load from other
processes hits every path alike; min and median ms per token over the rounds' medians.

    .venv/bin/python -m benchmarks decode_paths
    .venv/bin/python -m benchmarks decode_paths --models mamba2 --rounds 5

The paths are chosen by switching the kernels off for a cell (this benchmark's own patching of
Backbone._stack_step_ and VarlenMixer._block_step): the models and their weights are the same objects.
Random weights (seed 0) at the published 130M shapes (benchmarks.llamacpp.SHAPES), no download.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.layers.varlen import VarlenMixer
from ssmkit.models.backbone import Backbone
from ssmkit.models.int8 import quantize_int8

LAYER_KW = {"mamba": {"d_state": 16}, "mamba2": {"d_state": 128, "headdim": 64}}


def build(kind: str) -> SSMForCausalLM:
    torch.manual_seed(0)
    kw = {kind: LAYER_KW[kind]}
    cfg = SSMConfig(d_model=768, n_layer=24, vocab_size=50280, layers=kind, layer_kwargs=kw)
    return SSMForCausalLM(cfg).eval()


@contextmanager
def path(name: str):
    """Run the body on path `name` (see the module docstring)."""
    stack, block = Backbone._stack_step_, VarlenMixer._block_step
    try:
        if name in ("blocks", "per-part"):
            Backbone._stack_step_ = lambda self, residual, states: None
        if name == "per-part":
            VarlenMixer._block_step = lambda self, *args, **kwargs: None
        yield
    finally:
        Backbone._stack_step_, VarlenMixer._block_step = stack, block


def timed(fn, steps: int) -> float:
    """Median seconds of `steps` calls."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cells(model: SSMForCausalLM, label: str) -> dict:
    state, tok = model.init_state(1), torch.tensor([5])
    linears = [(m, torch.randn(1, m.in_features)) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def step(name):
        def run():
            with path(name):
                model.step_(tok, state)
        return run

    def matvecs():
        for m, x in linears:
            m(x)

    out = {f"{label} {p}": step(p) for p in ("stack", "blocks", "per-part")}
    if linears and label == "float32":
        out["float32 linears"] = matvecs
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mamba,mamba2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="tokens per cell and round")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.threads} threads, batch 1")
    for kind in args.models.split(","):
        all_cells = {**cells(build(kind), "float32"), **cells(quantize_int8(build(kind)), "int8")}
        res = {name: [] for name in all_cells}
        with torch.no_grad():
            for fn in all_cells.values():  # warm-up: numba loads or compiles its kernels
                fn(), fn()
            for _ in range(args.rounds):
                for name, fn in all_cells.items():
                    res[name].append(timed(fn, args.steps) * 1e3)
        print(f"\n{kind}-130m (random weights), ms per token over {args.rounds} rounds of {args.steps}:")
        print("| path | min | median |\n|---|---:|---:|")
        for name, v in res.items():
            print(f"| {name} | {min(v):.1f} | {statistics.median(v):.1f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
