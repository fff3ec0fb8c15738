"""Attention decoding over a long KV cache: one Attention layer's token, its ways side by side.

    .venv/bin/python -m benchmarks attention_decode
    .venv/bin/python -m benchmarks attention_decode --contexts 2048,16384 --steps 50

Per head layout (query heads / KV heads / head_dim, d_model = heads x head_dim) and cache length t,
one process, the ways interleaved round by round (a load spike hits all alike), median ms per token:
    step_          what generate and serve run: the cache grown in place (append_cache), grouped-query
                   heads from GROUPED_MATMUL_BYTES of cache through two matmuls
    step_ sdpa     the same with scaled_dot_product_attention for every cache (threshold off)
    step           the functional step: the cache concatenated into a new tensor every token
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

LAYOUTS = [(12, 4, 64), (32, 8, 128), (12, 12, 64)]


def measure(heads: int, kv_heads: int, head_dim: int, t: int, steps: int, rounds: int) -> dict:
    import ssmkit.layers.attention as attention

    layer = attention.Attention(heads * head_dim, n_head=heads, n_kv_head=kv_heads).eval()
    g = torch.Generator().manual_seed(0)
    cache = {  # t random keys and values, pos = t (decode time depends on t, not on the values)
        "k": torch.randn(1, kv_heads, t, head_dim, generator=g),
        "v": torch.randn(1, kv_heads, t, head_dim, generator=g),
        "pos": torch.tensor([t]),
    }
    x = torch.randn(1, heads * head_dim, generator=g)
    threshold = attention.GROUPED_MATMUL_BYTES

    def timed(call):
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
        return out

    def in_place(sdpa: bool):
        st = dict(cache)
        attention.GROUPED_MATMUL_BYTES = float("inf") if sdpa else threshold
        try:
            layer.step_(x, st)  # the first append allocates the roomy buffer: untimed
            return timed(lambda: layer.step_(x, st))
        finally:
            attention.GROUPED_MATMUL_BYTES = threshold

    def functional():
        return timed(lambda: layer.step(x, cache))

    ways = {"step_": lambda: in_place(False), "step_ sdpa": lambda: in_place(True), "step": functional}
    times = {w: [] for w in ways}
    with torch.no_grad():
        for _ in range(rounds):
            for w, fn in ways.items():
                times[w] += fn()
    return {w: 1e3 * statistics.median(v) for w, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="2048,8192,16384,32768")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| heads / KV heads / head_dim | cache | step_ ms | step_ sdpa ms | step ms "
          "| sdpa / step_ | step / step_ |")
    print("|---|---|---|---|---|---|---|")
    for heads, kv, hd in LAYOUTS:
        for t in (int(c) for c in args.contexts.split(",")):
            r = measure(heads, kv, hd, t, args.steps, args.rounds)
            print(f"| {heads} / {kv} / {hd} | {t} | {r['step_']:.3f} | {r['step_ sdpa']:.3f} "
                  f"| {r['step']:.3f} | {r['step_ sdpa'] / r['step_']:.2f} | {r['step'] / r['step_']:.2f} |",
                  flush=True)
    print(f"\n{args.threads} threads; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
