"""Decode cost vs context length: a pure SSM stack against a same-size attention-only stack.

    .venv/bin/python -m benchmarks.decode                       # mamba2 vs attention, 1k..64k
    .venv/bin/python -m benchmarks.decode --ssm mamba --steps 30 --out decode.json

For each context length T the model first holds a State of T tokens, then `--steps` single tokens
are decoded with `model.step` (in rounds that visit every context in turn, so that a load spike on a
shared machine hits all contexts alike) and the median and min time per token are reported, with
the State's size in bytes before decoding.

How the context is reached:
  * SSM stack: a real chunked prefill of T random tokens (`--prefill-chunk` tokens per call).
  * attention stack: the KV cache is set directly to T random keys/values with pos = T. Decode
    time depends on the cache length, not its values, and a real 64k prefill of full attention
    is quadratic; `--attn-max-context` caps the attention contexts (say so when quoting numbers).
Timings use `--threads` CPU threads for torch and numba alike (default 1: steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from ssmkit import SSMConfig, SSMForCausalLM


def build(layers: str, d_model: int, n_layer: int, n_head: int, layer_kwargs: dict) -> SSMForCausalLM:
    cfg = SSMConfig(
        d_model=d_model,
        n_layer=n_layer,
        vocab_size=256,
        layers=layers,
        n_head=n_head,
        layer_kwargs=layer_kwargs,
    )
    return SSMForCausalLM(cfg).eval()


@torch.no_grad()
def state_at(model: SSMForCausalLM, context: int, chunk: int, synthetic_kv: bool):
    st = model.init_state(1)
    if synthetic_kv:
        for d in st.layers:
            b, h, _, hd = d["k"].shape
            d["k"], d["v"] = torch.randn(b, h, context, hd), torch.randn(b, h, context, hd)
            d["pos"] = torch.full((b,), context, dtype=torch.long)
        return st
    for a in range(0, context, chunk):
        n = min(chunk, context - a)
        model(torch.randint(0, 256, (1, n)), state=st, num_last_tokens=1)
    return st


@torch.no_grad()
def time_decode(model, states: dict, steps: int, rounds: int = 10, warmup: int = 3) -> dict[int, list[float]]:
    """Per-token decode times for each context's State, interleaved in `rounds` so that the load of a
    shared machine falls on every context alike (not on whichever happened to run during a spike)."""
    tok = torch.randint(0, 256, (1,))
    times = {T: [] for T in states}
    for st in states.values():
        for _ in range(warmup):
            model.step(tok, st)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for T, st in states.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                tok = model.step(tok, st).argmax(-1)
                times[T].append(time.perf_counter() - t0)
    return times


def set_threads(n: int) -> None:
    """Same thread count for torch and for numba (the CPU kernels), so both stacks get alike."""
    torch.set_num_threads(n)
    if importlib.util.find_spec("numba") is not None:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ssm", default="mamba2", help="layer name of the pure SSM stack (mamba2, mamba, ...)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--contexts", default="1024,4096,16384,65536")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--prefill-chunk", type=int, default=4096)
    p.add_argument("--attn-max-context", type=int, default=65536)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    contexts = [int(c) for c in args.contexts.split(",")]
    ssm_kw = {"mamba2": {"headdim": 64, "d_state": 64}}.get(args.ssm, {})
    stacks = {
        args.ssm: build(args.ssm, args.d_model, args.n_layer, args.n_head, {args.ssm: ssm_kw}),
        "attention": build("attention", args.d_model, args.n_layer, args.n_head, {}),
    }
    rows = []
    for name, model in stacks.items():
        n_params = sum(p.numel() for p in model.parameters())
        attn = name == "attention"
        states, info = {}, {}
        for T in contexts:
            if attn and T > args.attn_max_context:
                rows.append(
                    dict(stack=name, context=T, skipped=f"above --attn-max-context {args.attn_max_context}")
                )
                continue
            t0 = time.perf_counter()
            states[T] = state_at(model, T, args.prefill_chunk, synthetic_kv=attn)
            info[T] = dict(prefill_s=round(time.perf_counter() - t0, 2), state_bytes=states[T].nbytes)
        times = time_decode(model, states, args.steps)
        for T, ts in times.items():
            row = dict(
                stack=name,
                params=n_params,
                context=T,
                ms_per_token=1e3 * statistics.median(ts),
                ms_min=1e3 * min(ts),
                ms_p90=1e3 * sorted(ts)[int(0.9 * len(ts))],
                **info[T],
                prefill="synthetic KV cache" if attn else "chunked prefill",
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
        del states

    print(
        f"\nDecode per token, d_model={args.d_model}, n_layer={args.n_layer}, batch 1, "
        f"{args.threads} thread(s), median of {args.steps} steps"
    )
    print("| stack | context | ms/token (median) | ms/token (min) | state bytes |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['stack']} | {r['context']} | skipped ({r['skipped']}) | | |")
        else:
            print(
                f"| {r['stack']} | {r['context']} | {r['ms_per_token']:.3f} | {r['ms_min']:.3f} "
                f"| {r['state_bytes']:,} |"
            )
    summary = {}
    for name in stacks:
        got = {r["context"]: r for r in rows if r["stack"] == name and "skipped" not in r}
        lo, hi = min(got, default=None), max(got, default=None)
        if lo is not None and hi != lo:
            summary[name] = dict(
                ratio=got[hi]["ms_per_token"] / got[lo]["ms_per_token"],
                lo=lo,
                hi=hi,
                bytes_hi=got[hi]["state_bytes"],
            )
            print(
                f"{name}: per-token time at {hi} / at {lo} = {summary[name]['ratio']:.2f}; "
                f"state at {hi}: {got[hi]['state_bytes']:,} bytes"
            )
    if (
        args.ssm in summary
        and "attention" in summary
        and summary[args.ssm]["hi"] == summary["attention"]["hi"]
    ):
        s, a = summary[args.ssm]["bytes_hi"], summary["attention"]["bytes_hi"]
        print(
            f"state size at {summary[args.ssm]['hi']}: {args.ssm} {s:,} B vs attention KV cache {a:,} B "
            f"({a / s:.0f}x)"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
