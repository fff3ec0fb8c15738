"""transformers' SSM and hybrid families on the CPU: transformers' own path vs ssmkit on the same
weights (read with ssmkit.interop.from_hf), prefill and decode tokens/s and peak memory.

    .venv/bin/python -m benchmarks hf_families                          # every family, l=2048
    .venv/bin/python -m benchmarks hf_families --families bamba --length 512 --decode 16
    .venv/bin/python -m benchmarks hf_families --families bamba zamba2 --decode 0 --rounds 3

Each family is one entry of FAMILIES: a transformers config at a realistic small shape (about
100-150M parameters), built with random weights (seed 0; no download). Per family and path, two
cells, each in its own subprocess (benchmarks/_cells.py; 2 threads, float32, batch 1, no grad):
    prefill  one forward over `--length` prompt tokens, logits of the last position only
             (transformers: logits_to_keep=1; ssmkit: num_last_tokens=1), tokens/s
    decode   after a `--length`-token prompt and one decode step (outside the timing), `--decode` tokens
             fed one at a time with the cache / State carried (transformers: cache=, use_cache=True;
             ssmkit: model.step_ on its own State, as generate decodes), tokens/s
    matmul floor  ssmkit's matrix products of the prefill, and of the decode steps, replayed alone
             (every nn.Linear call with its real input rows): transformers' time over it bounds
             what any float32 engine doing these products could gain
    attention floor  ssmkit's attention kernels of the prefill (every F.scaled_dot_product_attention
             call, its q, k, v shapes and layouts and its mask) replayed alone: transformers' time over
             matmuls + attention bounds the gain of an engine doing both as PyTorch does
With --decode 0 only prefill runs. --rounds R repeats the cells R times, interleaved (transformers,
ssmkit, the floors, both decodes, then again), and keeps each cell's fastest round: the one other
processes disturbed least.
Peak MB is the growth of the cell's resident high-water mark during the timed calls (glibc's
default allocator settings, as a user's process has: a lower bound). Before timing, the parent
checks once per family that both paths give the same logits on a short prompt, so a fast wrong
path cannot pass. Other processes share the CPU: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks._cells import run_cell

_HERE = "benchmarks.hf_families"
VOCAB = 32000


def _falcon_mamba():
    from transformers import FalconMambaConfig

    return FalconMambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, vocab_size=50280)


def _bamba():
    from transformers import BambaConfig

    return BambaConfig(
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=2048,
        num_attention_heads=12,
        num_key_value_heads=4,
        attn_layer_indices=[5, 11],
        mamba_n_heads=24,
        mamba_d_state=128,
        mamba_n_groups=1,
        mamba_chunk_size=256,
        vocab_size=VOCAB,
    )


def _granitemoehybrid():
    from transformers import GraniteMoeHybridConfig

    types = ["attention" if i in (5, 11) else "mamba" for i in range(12)]
    return GraniteMoeHybridConfig(
        hidden_size=768,
        num_hidden_layers=12,
        layer_types=types,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=256,
        num_local_experts=8,
        num_experts_per_tok=2,
        shared_intermediate_size=1024,
        mamba_n_heads=24,
        mamba_d_state=128,
        mamba_n_groups=1,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=0.0078,
        logits_scaling=3.0,
    )


def _nemotron_h():
    from transformers import NemotronHConfig

    pattern = "M-M-M-M*-M-M-M-M*-M-M-"  # Nemotron-H's mix: mostly Mamba-2 and MLP, two attention
    return NemotronHConfig(
        hidden_size=768,
        hybrid_override_pattern=pattern,
        intermediate_size=3072,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        mamba_num_heads=24,
        mamba_head_dim=64,
        ssm_state_size=128,
        n_groups=8,
        chunk_size=128,
        vocab_size=VOCAB,
    )


def _jamba():
    from transformers import JambaConfig

    return JambaConfig(  # Jamba's layout: attention 1 layer in 6 (here 2), an MoE every other layer
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=768,
        num_attention_heads=12,
        num_key_value_heads=4,
        attn_layer_period=6,
        attn_layer_offset=5,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=4,
        num_experts_per_tok=2,
        mamba_d_state=16,
        vocab_size=VOCAB,
    )


def _falcon_h1():
    from transformers import FalconH1Config

    return FalconH1Config(  # every block: Mamba-2 and attention in parallel, then a SwiGLU MLP
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=1536,
        num_attention_heads=12,
        num_key_value_heads=4,
        mamba_d_ssm=1536,
        mamba_n_heads=24,
        mamba_d_state=128,
        mamba_n_groups=1,
        mamba_chunk_size=256,
        mamba_rms_norm=True,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        embedding_multiplier=5.6,
        lm_head_multiplier=0.04,
        mlp_multipliers=[0.88, 0.59],
        key_multiplier=0.39,
        attention_out_multiplier=0.94,
        ssm_multipliers=[0.35, 0.25, 0.5, 0.5, 0.35],
        ssm_out_multiplier=0.24,
    )


def _zamba2():
    from transformers import Zamba2Config

    types = ["hybrid" if i in (5, 11, 17) else "linear_attention" for i in range(18)]
    return Zamba2Config(  # Zamba2-1.2B's mix: Mamba-2 layers, one shared block with adapters every 6th
        hidden_size=768,
        num_hidden_layers=18,
        layers_block_type=types,
        mamba_d_state=64,
        n_mamba_heads=24,
        mamba_ngroups=1,
        chunk_size=256,
        num_attention_heads=12,
        intermediate_size=3072,
        num_mem_blocks=1,
        use_shared_attention_adapter=True,
        adapter_rank=128,
        use_mem_rope=True,
        vocab_size=VOCAB,
    )


def _lfm2():
    from transformers import Lfm2Config

    types = ["full_attention" if i in (2, 5, 8, 11) else "conv" for i in range(12)]
    return Lfm2Config(  # gated short convolutions and attention (LFM2-350M's mix), SwiGLU MLPs
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=3456,
        num_attention_heads=12,
        num_key_value_heads=4,
        layer_types=types,
        vocab_size=VOCAB,
    )


FAMILIES = {  # model_type -> its transformers config at ~100-150M parameters
    "falcon_mamba": _falcon_mamba,
    "bamba": _bamba,
    "granitemoehybrid": _granitemoehybrid,
    "nemotron_h": _nemotron_h,
    "jamba": _jamba,
    "falcon_h1": _falcon_h1,
    "zamba2": _zamba2,
    "lfm2": _lfm2,
}


def build(family: str, path: str):
    """The family's transformers model (random, seed 0), or ssmkit's from the same weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
    if path == "hf":
        return hf
    from ssmkit.interop import from_hf

    return from_hf(hf)


def prefill_cell(family: str, path: str, L: int):
    torch.set_num_threads(2)
    model = build(family, path)
    ids = torch.randint(0, 1000, (1, L), generator=torch.Generator().manual_seed(1))
    kw = {"logits_to_keep": 1} if path == "hf" else {"num_last_tokens": 1}

    def run():
        with torch.no_grad():
            model(ids, **kw)

    with torch.no_grad():
        model(ids[:, :16], **kw)  # warm-up
    return run


def decode_cell(family: str, path: str, L: int, n: int):
    torch.set_num_threads(2)
    model = build(family, path)
    ids = torch.randint(0, 1000, (1, L + 1 + n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the prompt, then one decode step as the warm-up (first-call costs untimed)
        if path == "hf":
            cache = model(ids[:, :L], use_cache=True, logits_to_keep=1).cache
            model(ids[:, L : L + 1], cache=cache, use_cache=True)
        else:
            state = model.init_state(1)
            model(ids[:, :L], state=state, num_last_tokens=1)
            model.step_(ids[:, L], state)  # the timed path's own kernels (step_ may take others than step)

    def run():
        with torch.no_grad():
            for t in range(L + 1, L + 1 + n):
                if path == "hf":
                    model(ids[:, t : t + 1], cache=cache, use_cache=True)
                else:
                    model.step_(ids[:, t], state)  # in place, as generate decodes (the State is ours)

    return run


def _linear_calls(model, call) -> list:
    """(input rows, weight, bias) of every nn.Linear call that `call()` makes (an MoE: routed rows)."""
    calls = []

    def record(mod, inputs, _out):
        calls.append((inputs[0].reshape(-1, mod.in_features).shape[0], mod.weight, mod.bias))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        call()
    for h in hooks:
        h.remove()
    return calls


def matmul_floor_cell(family: str, L: int, n: int = 0):
    """ssmkit's matrix products alone: every nn.Linear call of one real prefill of L tokens (n = 0),
    or of n decode steps after it, replayed on random inputs of the same shapes. transformers' time
    over this is the most any engine doing these products in float32 could gain over transformers."""
    torch.set_num_threads(2)
    model = build(family, "ssmkit")
    ids = torch.randint(0, 1000, (1, L + n), generator=torch.Generator().manual_seed(1))
    state = model.init_state(1)
    prefill = lambda: model(ids[:, :L], state=state, num_last_tokens=1)  # noqa: E731
    calls = _linear_calls(model, prefill)
    if n:
        calls = _linear_calls(model, lambda: [model.step_(ids[:, t], state) for t in range(L, L + n)])
    xs = {}
    for rows, w, _ in calls:
        xs.setdefault((rows, w.shape[1]), torch.randn(rows, w.shape[1]))

    def run():
        with torch.no_grad():
            for rows, w, b in calls:
                torch.nn.functional.linear(xs[rows, w.shape[1]], w, b)

    return run


def attention_floor_cell(family: str, L: int):
    """ssmkit's attention kernels alone: every F.scaled_dot_product_attention call of one real prefill
    of L tokens, replayed on random q, k, v of the same shapes and strides (and the same mask)."""
    torch.set_num_threads(2)
    model = build(family, "ssmkit")
    ids = torch.randint(0, 1000, (1, L), generator=torch.Generator().manual_seed(1))
    F = torch.nn.functional
    sdpa, calls = F.scaled_dot_product_attention, []

    def record(q, k, v, *args, **kw):
        calls.append(([(t.shape, t.stride()) for t in (q, k, v)], args, kw))
        return sdpa(q, k, v, *args, **kw)

    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            model(ids, num_last_tokens=1)
    finally:
        F.scaled_dot_product_attention = sdpa
    replay = [([torch.empty_strided(sh, st).normal_() for sh, st in qkv], a, kw) for qkv, a, kw in calls]

    def run():
        with torch.no_grad():
            for qkv, a, kw in replay:
                sdpa(*qkv, *a, **kw)

    return run


def check(family: str, L: int = 40) -> tuple[float, int]:
    """(relative difference of the two paths' logits on a short prompt, parameter count)."""
    from ssmkit.interop import from_hf

    ids = torch.randint(0, 1000, (1, L), generator=torch.Generator().manual_seed(2))
    hf = build(family, "hf")
    ours = from_hf(hf)
    with torch.no_grad():
        ref, got = hf(ids).logits.float(), ours(ids).logits
    return ((got - ref).norm() / ref.norm()).item(), sum(p.numel() for p in ours.parameters())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--length", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--decode", type=int, default=32, help="decode steps timed (default 32, 0: none)")
    p.add_argument("--rounds", type=int, default=1, help="cells repeated, interleaved, fastest kept")
    p.add_argument("--calls", type=int, default=2, help="timed calls per cell, the median reported")
    p.add_argument("--cap", type=float, default=900.0, help="seconds per cell before it is skipped")
    p.add_argument("--out", default="benchmarks/results/hf_families.md")
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    load0 = os.getloadavg()
    lines = [
        f"# hf_families: transformers' CPU path vs ssmkit, b=1, float32, 2 threads, prompt {args.length}, "
        f"{args.decode} decode steps, {max(1, args.rounds)} rounds "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        "| family | params | logits rel. err | path | prefill tok/s | prefill peak MB | decode tok/s | "
        "decode peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for fam in args.families:
        err, size = check(fam)
        cell = lambda name, fam=fam, **kw: run_cell(  # noqa: E731
            f"{_HERE}:{name}", {"family": fam, **kw}, args.cap, calls=args.calls, exact_peak=False
        )
        best = {}  # interleaved rounds, each cell's fastest kept
        for _ in range(max(1, args.rounds)):
            got = {
                "hf": cell("prefill_cell", path="hf", L=args.length),
                "ssmkit": cell("prefill_cell", path="ssmkit", L=args.length),
                "matmuls": cell("matmul_floor_cell", L=args.length, n=0),
                "attention": cell("attention_floor_cell", L=args.length),
            }
            if args.decode:
                for path in ("hf", "ssmkit"):
                    got[f"{path} decode"] = cell("decode_cell", path=path, L=args.length, n=args.decode)
            for k, r in got.items():
                if k not in best or ("t" in r and r["t"] < best[k].get("t", float("inf"))):
                    best[k] = r
        prefill = best
        dec = {}
        for path in ("hf", "ssmkit"):
            pre = prefill[path]
            dec[path] = best.get(f"{path} decode", {})
            cells = []
            for r, tokens in ((pre, args.length), (dec[path], args.decode)):
                if not tokens:
                    cells += ["-", "-"]
                else:
                    cells += (
                        [r["skipped"], ""]
                        if "skipped" in r
                        else [f"{tokens / r['t']:.3g}", f"{r['peak_mb']:.0f}"]
                    )
            name = "transformers" if path == "hf" else "ssmkit"
            lines.append(f"| {fam} | {size / 1e6:.0f}M | {err:.1e} | {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        hp, op, fp, fa = (prefill[k] for k in ("hf", "ssmkit", "matmuls", "attention"))
        if not all("t" in r for r in (hp, op, fp, fa)):
            continue
        fpa = fp["t"] + fa["t"]
        text = (
            f"{fam}: prefill {hp['t'] / op['t']:.1f}x ({1e3 * hp['t']:.0f} vs {1e3 * op['t']:.0f} ms; "
            f"matmuls alone {1e3 * fp['t']:.0f} ms: {hp['t'] / fp['t']:.1f}x, {100 * fp['t'] / op['t']:.0f}% "
            f"of ssmkit's time; attention alone {1e3 * fa['t']:.0f} ms; matmuls + attention: "
            f"{hp['t'] / fpa:.1f}x, {100 * fpa / op['t']:.0f}%)"
        )
        if args.decode:
            fd = cell("matmul_floor_cell", L=args.length, n=args.decode)
            hd, od = dec["hf"], dec["ssmkit"]
            if all("t" in r for r in (hd, od, fd)):
                text += (
                    f", decode {hd['t'] / od['t']:.1f}x (matmuls alone: {hd['t'] / fd['t']:.1f}x, "
                    f"{100 * fd['t'] / od['t']:.0f}%)"
                )
        ratios.append(text)
    load1 = os.getloadavg()
    lines += [
        "",
        "ssmkit / transformers tokens/s (in brackets: the times, and transformers' time over ssmkit's "
        "matrix products alone, then over them and its attention kernels alone, with their shares of "
        "ssmkit's time):",
        "",
        *(f"- {r}" for r in ratios or ["n/a"]),
        "",
        f"load average (1 min) at start {load0[0]:.1f}, at end {load1[0]:.1f} "
        "(other processes share the CPU)",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
