"""Training speed of small models: tokens/s of a whole training step (forward, backward, AdamW step) for
Mamba, Mamba-2, S4D and a same-size Transformer at length 256, against each model's FLOP floor on
this CPU; optionally the same models on an earlier commit's ssmkit, interleaved in one run.

    .venv/bin/python -m benchmarks train_speed                     # this tree, both sizes
    .venv/bin/python -m benchmarks train_speed --before 5bbea7e    # also ssmkit at that commit
    .venv/bin/python -m benchmarks train_speed --sizes repro --steps 4 --rounds 1
    .venv/bin/python -m benchmarks train_speed --breakdown         # where a step's time goes, this tree

Sizes: "repro" is the reproduction's models (2 layers, d_model 64, batch 32), "demo" the demo's (4
layers, d_model 128, batch 16); both at length 256, vocabulary 256. The Transformer is attention plus
a gated MLP whose width brings its parameter count closest to the Mamba model's.

Every cell (a model on a tree) runs in a fresh process: a few warm-up steps (numba compiles or loads
its cache), then `--steps` timed steps, each timed alone; the cell reports the median step's wall and
CPU (process) time. "Before" runs ssmkit's `src/` as of `--before` (extracted with `git archive` into
a temporary directory, first on PYTHONPATH), "after" this tree's; the two alternate cell by cell and
round by round, so load from other processes hits both alike. The load average is recorded per cell.

FLOP floor: the step's FLOPs over the machine's matmul rate. FLOPs: the matrix products torch runs,
counted by torch.utils.flop_counter on one forward + backward, plus the parts it does not see, counted
by formula (attention's scores, QK^T and PV, over the causal half, times 3 for the backward; the
selective scan at 6 FLOPs per state element and step, the SSD chunk products, S4D's FFT convolution,
each times 3 for forward + backward). The matmul rate is the best of a few torch.mm shapes measured in a
fresh process in the same run (2 M N K / time). floor_ratio = measured step time / floor time (1 would
be a step at the matmul peak with no other work).

--breakdown: instead, one profiled cell per model (torch.profiler over `--steps` steps after the
warm-up) and the share of the step's self CPU time (the main thread's, so a parallel op counts once)
in each kind of op: matrix products, attention, the fused numba kernels (autograd Functions: scans,
convolution, norms), FFTs, the loss (log_softmax, nll_loss), the optimizer, and the rest (elementwise
ops, copies, fills, reductions, Python and dispatch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    "repro": dict(d_model=64, n_layer=2, batch=32, seq_len=256),
    "demo": dict(d_model=128, n_layer=4, batch=16, seq_len=256),
}
VOCAB = 256
MODELS = {  # name: (layer pattern, layer_kwargs)
    "Mamba": ("mamba", {"mamba": {"d_state": 16, "d_conv": 4, "expand": 2}}),
    "Mamba-2": ("mamba2", {"mamba2": {"d_state": 64, "headdim": 32, "chunk_size": 64}}),
    "S4D": ("s4d", {"s4d": {"d_state": 64}}),
    "Transformer": ("attention", {}),
}
MATMUL_SHAPES = [(8192, 64, 256), (8192, 128, 512), (4096, 256, 1024), (1024, 1024, 1024)]


# ---- the models (built identically by every tree) -----------------------------------------------
def config_kwargs(model: str, size: dict) -> dict:
    pattern, kw = MODELS[model]
    out = dict(d_model=size["d_model"], n_layer=size["n_layer"], vocab_size=VOCAB, layers=pattern,
               layer_kwargs=kw)
    if pattern == "attention":
        out.update(n_head=4, mlp="gated", d_intermediate=transformer_width(size))
    return out


def transformer_width(size: dict) -> int:
    """The gated MLP width (multiple of 16) that brings the Transformer closest to the Mamba model."""
    from ssmkit import SSMConfig, SSMForCausalLM

    def count(**kw):
        return sum(p.numel() for p in SSMForCausalLM(SSMConfig(**kw)).parameters())

    target = count(**config_kwargs("Mamba", size))
    base = dict(d_model=size["d_model"], n_layer=size["n_layer"], vocab_size=VOCAB, layers="attention",
                n_head=4, mlp="gated")
    best = min(range(16, 8 * size["d_model"] + 1, 16), key=lambda w: abs(count(**base, d_intermediate=w)
                                                                           - target))
    return best


def core_flops(model: str, size: dict) -> float:
    """Forward + backward FLOPs of what torch's flop counter does not see, per step (see the docstring)."""
    d, n_layer, b, L = size["d_model"], size["n_layer"], size["batch"], size["seq_len"]
    tokens = b * L
    kw = MODELS[model][1].get(MODELS[model][0], {})
    if model == "Mamba":
        d_inner, n = kw["expand"] * d, kw["d_state"]
        per_token = 6 * d_inner * n
    elif model == "Mamba-2":
        d_inner, n, P, Q = 2 * d, kw["d_state"], kw["headdim"], kw["chunk_size"]
        H = d_inner // P
        per_token = 2 * Q * n + 2 * Q * P * H + 4 * n * P * H    # C B^T, (L o CB) X, states in and out
    elif model == "S4D":
        n_fft = 2 * L
        per_token = d * (2 * 2.5 * n_fft * math.log2(n_fft) + 6 * n_fft) / L   # rfft, irfft, product
    else:
        per_token = 4 * d * (L + 1) / 2                            # QK^T and PV over the causal half
    return 3 * per_token * tokens * n_layer


# ---- one cell, in a fresh process ----------------------------------------------------------------
def _trainer(model: str, size_name: str, threads: int | None, batches: int):
    """(net, ids (batches, batch, seq_len), step(ids_i)): one cell's model, AdamW and fixed batches."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from ssmkit import SSMConfig, SSMForCausalLM
    from ssmkit.training.optim import build_optimizer

    size = SIZES[size_name]
    torch.manual_seed(0)
    net = SSMForCausalLM(SSMConfig(**config_kwargs(model, size)))
    opt = build_optimizer(net, 1e-3, 0.1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (batches, size["batch"], size["seq_len"]), generator=g)

    def step(x):
        loss = net(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, ids, step


def _cell(model: str, size_name: str, steps: int, warmup: int, threads: int | None,
          count_flops: bool = False) -> dict:
    import torch

    net, ids, step_on = _trainer(model, size_name, threads, warmup + steps)

    def step(i):
        step_on(ids[i])

    for i in range(warmup):
        step(i)
    wall, cpu = [], []
    for i in range(warmup, warmup + steps):
        t, c = time.perf_counter(), time.process_time()
        step(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "steps": steps,
           "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0],
           "params": sum(p.numel() for p in net.parameters())}
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            net(ids[0], labels=ids[0]).loss.backward()
        out["counted_flops"] = counter.get_total_flops()
    return out


KINDS = (  # (kind, test on an op's name), first match wins
    ("attention", lambda k: "scaled_dot_product" in k),
    ("matmul", lambda k: k in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")),
    ("numba kernels", lambda k: not k.startswith(("aten::", "autograd::")) and (k.endswith("Fn")
                                                                             or k.endswith("FnBackward"))),
    ("fft", lambda k: k.startswith("aten::_fft")),
    ("loss", lambda k: "log_softmax" in k or "nll_loss" in k),
    ("optimizer", lambda k: "adamw" in k.lower() or k.startswith("Optimizer.")),
)


def _breakdown(model: str, size_name: str, steps: int, threads: int | None) -> dict:
    """Self CPU time of a few profiled steps by kind of op (KINDS, else "other")."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    _, ids, step_on = _trainer(model, size_name, threads, 1)

    def step():
        step_on(ids[0])

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        kind = next((name for name, test in KINDS if test(e.key)), "other")
        totals[kind] = totals.get(kind, 0.0) + e.self_cpu_time_total / 1e6 / steps
    return {"kinds": totals, "step_s": sum(totals.values()), "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg()[0]}


def breakdown_markdown(rows: list[dict]) -> str:
    kinds = [k for k, _ in KINDS] + ["other"]
    lines = ["| size | model | profiled ms/step | " + " | ".join(f"{k} %" for k in kinds) + " |",
             "|" + "---|" * (3 + len(kinds))]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['model']} | {r['error']} |")
            continue
        shares = [100 * r["kinds"].get(k, 0.0) / r["step_s"] for k in kinds]
        lines.append(f"| {r['size']} | {r['model']} | {1e3 * r['step_s']:.0f} | "
                     + " | ".join(f"{x:.0f}" for x in shares) + " |")
    return "\n".join(lines)


def _matmul_rate(threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    rates = {}
    for M, K, N in MATMUL_SHAPES:
        a, b = torch.randn(M, K), torch.randn(K, N)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        rates[f"{M}x{K}x{N}"] = 2 * M * N * K / best / 1e9
    return {"gflops": rates, "best_gflops": max(rates.values()), "loadavg": os.getloadavg()[0]}


def _run_child(args: list[str], src: Path | None, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src or ROOT / "src"), str(ROOT)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--child", json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _extract(commit: str) -> tuple[Path, str]:
    """ssmkit's src/ at `commit` in a temporary directory; (its src path, the full commit hash)."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                          check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix=f"ssmkit-{full[:8]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", full, "src"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "src", full


# ---- the run -------------------------------------------------------------------------------------
def run(sizes: list[str], models: list[str], steps: int, rounds: int, before: str | None,
        threads: int | None, timeout: float) -> dict:
    trees: dict[str, Path | None] = {"after": None}
    before_commit, tmp = None, None
    if before:
        src, before_commit = _extract(before)
        tmp = src.parent
        trees = {"before": src, "after": None}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    rate = _run_child(["matmul", threads], None, timeout)
    print(f"matmul: {rate}", flush=True)
    cells: dict = {}
    try:
        for r in range(rounds):
            for size in sizes:
                for model in models:
                    for tree, src in trees.items():
                        res = _run_child(["cell", model, size, steps, 2, threads], src, timeout)
                        cells.setdefault((size, model, tree), []).append(res)
                        print(f"round {r}: {size:5s} {model:11s} {tree:6s} {_fmt(res, size)}", flush=True)
        flops = {}
        for size in sizes:
            for model in models:
                res = _run_child(["cell", model, size, 1, 1, threads, True], None, timeout)
                flops[(size, model)] = res.get("counted_flops", 0) + core_flops(model, SIZES[size])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for size in sizes:
        tokens = SIZES[size]["batch"] * SIZES[size]["seq_len"]
        for model in models:
            row = {"size": size, "model": model, "flops_per_step": flops[(size, model)],
                   "floor_s": flops[(size, model)] / (rate["best_gflops"] * 1e9)}
            for tree in trees:
                ok = [c for c in cells[(size, model, tree)] if "error" not in c]
                if not ok:
                    row[tree] = {"error": cells[(size, model, tree)][0]["error"]}
                    continue
                wall = min(c["wall_s"] for c in ok)                # the least disturbed round
                cpu = min(c["cpu_s"] for c in ok)
                row[tree] = {"wall_s": wall, "cpu_s": cpu, "tokens_per_s": tokens / wall,
                             "floor_ratio": wall / row["floor_s"], "params": ok[0]["params"],
                             "threads": ok[0]["threads"], "loadavg": [round(c["loadavg"], 1) for c in ok]}
            rows.append(row)
    return {"rows": rows, "matmul": rate, "before": before_commit, "after": head, "steps": steps,
            "rounds": rounds, "sizes": {s: SIZES[s] for s in sizes},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(res: dict, size: str) -> str:
    if "error" in res:
        return f"error: {res['error']}"
    tokens = SIZES[size]["batch"] * SIZES[size]["seq_len"]
    return (f"{res['wall_s'] * 1e3:7.1f} ms/step wall ({tokens / res['wall_s']:7.0f} tok/s), "
            f"{res['cpu_s'] * 1e3:7.1f} ms CPU, load {res['loadavg']:.1f}")


def markdown(r: dict) -> str:
    trees = [t for t in ("before", "after") if any(t in row for row in r["rows"])]
    head = ["size", "model", "params"]
    for t in trees:
        head += [f"{t} tok/s", f"{t} ms/step (CPU ms)", f"{t} x floor"]
    if len(trees) == 2:
        head.append("speed-up")
    head += ["floor ms", "x Transformer (after)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tf = {row["size"]: row.get("after", {}).get("tokens_per_s") for row in r["rows"]
          if row["model"] == "Transformer"}
    for row in r["rows"]:
        after = row.get("after", {})
        cells = [row["size"], row["model"], str(after.get("params", "–"))]
        for t in trees:
            x = row.get(t, {})
            if "error" in x or not x:
                cells += [x.get("error", "–"), "–", "–"]
                continue
            cells += [f"{x['tokens_per_s']:.0f}", f"{1e3 * x['wall_s']:.0f} ({1e3 * x['cpu_s']:.0f})",
                      f"{x['floor_ratio']:.1f}"]
        if len(trees) == 2:
            b, a = row.get("before", {}), row.get("after", {})
            cells.append(f"{b['wall_s'] / a['wall_s']:.2f}x" if "wall_s" in a and "wall_s" in b else "–")
        ref = tf.get(row["size"])
        cells += [f"{1e3 * row['floor_s']:.1f}",
                  f"{after['tokens_per_s'] / ref:.2f}" if ref and "tokens_per_s" in after else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    rate = r["matmul"]
    return ("\n".join(lines) + f"\n\nmatmul peak {rate['best_gflops']:.1f} GFLOP/s ("
            + ", ".join(f"{k}: {v:.1f}" for k, v in rate["gflops"].items()) + f"); before = "
            f"{r['before'] or '–'}, after = {r['after']}; {r['steps']} timed steps per cell, {r['rounds']} "
            f"round(s), the fastest round shown.")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="a commit whose ssmkit runs beside this tree's, interleaved")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {list(SIZES)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    p.add_argument("--steps", type=int, default=6, help="timed steps per cell")
    p.add_argument("--rounds", type=int, default=2, help="cells per model and tree, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per cell")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    p.add_argument("--breakdown", action="store_true",
                   help="where a step's time goes, by kind of op (this tree only; see the docstring)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = json.loads(args.child)
        fn = {"cell": _cell, "breakdown": _breakdown, "matmul": _matmul_rate}[kind]
        print(json.dumps(fn(*rest)))
        return
    if args.breakdown:
        rows = []
        for size in args.sizes.split(","):
            for model in args.models.split(","):
                res = _run_child(["breakdown", model, size, args.steps, args.threads], None, args.timeout)
                rows.append({"size": size, "model": model, **res})
        print(breakdown_markdown(rows))
        print(f"load average (1, 5, 15 min): {[round(x, 1) for x in os.getloadavg()]}")
        return
    load = os.getloadavg()
    r = run(args.sizes.split(","), args.models.split(","), args.steps, args.rounds, args.before,
            args.threads, args.timeout)
    r["loadavg_before"], r["loadavg_after"] = [round(x, 1) for x in load], [round(x, 1) for x in
                                                                             os.getloadavg()]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(r, f, indent=1)
    print(markdown(r))
    print(f"load average (1, 5, 15 min): before {r['loadavg_before']}, after {r['loadavg_after']}; "
          f"results: {args.out}")


if __name__ == "__main__":
    main()
