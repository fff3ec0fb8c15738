"""This tree against an older checkout, per layer type, through the public API only.

    git worktree add --detach /tmp/before 9700cdc
    .venv/bin/python -m benchmarks.before_after --before /tmp/before            # every layer type
    .venv/bin/python -m benchmarks.before_after --before /tmp/before --layers mamba,attention

A 2-layer, d_model 128, vocab 256 model of each layer type: forward (no grad) and forward+backward
at batch 2 x length 256, and one decoding step at batch 1. Each tree runs in its own process
(`PYTHONPATH=<tree>/src`, this venv), the two alternating round by round, on one torch thread and
one numba thread, timed in CPU time (`time.process_time`: on a shared machine other processes' load
disturbs it far less than wall time). Prints the minimum over rounds and the after/before ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LAYERS = "mamba,mamba2,s4d,s4,s5,h3,hyena,attention"
HERE = Path(__file__).resolve().parents[1]


def _child(layers: list[str], reps: int) -> dict:
    import torch

    from ssmkit import SSMConfig, SSMForCausalLM

    torch.set_num_threads(1)
    out = {}
    for name in layers:
        torch.manual_seed(0)
        m = SSMForCausalLM(SSMConfig(d_model=128, n_layer=2, vocab_size=256, layers=name, n_head=4))
        ids = torch.randint(0, 256, (2, 256))
        st, tok = m.init_state(1), torch.randint(0, 256, (1,))

        def fwd(m=m, ids=ids):
            with torch.no_grad():
                m(ids)

        def train(m=m, ids=ids):
            m(ids).logits.float().pow(2).mean().backward()

        def step(m=m, tok=tok, st=st):
            with torch.no_grad():
                m.step(tok, st)

        out[name] = {}
        for call, fn, n in (("fwd", fwd, reps), ("train", train, reps), ("step", step, 10 * reps)):
            fn(), fn()
            times = []
            for _ in range(n):
                t = time.process_time()
                fn()
                times.append(time.process_time() - t)
            out[name][call] = min(times)
    return out


def _run(tree: Path, layers: str, reps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{HERE}", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.before_after", "--child", "--layers", layers,
           "--reps", str(reps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="an older checkout (its src/ is imported)")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.layers.split(","), args.reps)))
        return
    if args.before is None:
        ap.error("--before: give the path of an older checkout")
    best: dict[tuple[str, str, str], float] = {}
    for _ in range(args.rounds):
        for side, tree in (("before", args.before), ("after", HERE)):
            for layer, calls in _run(tree, args.layers, args.reps).items():
                for call, t in calls.items():
                    key = (layer, call, side)
                    best[key] = min(best.get(key, float("inf")), t)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| layer | call | before ms | after ms | after/before |\n|---|---|---|---|---|")
    for layer in args.layers.split(","):
        for call in ("fwd", "train", "step"):
            b, a = best[(layer, call, "before")], best[(layer, call, "after")]
            print(f"| {layer} | {call} | {b * 1e3:.2f} | {a * 1e3:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
