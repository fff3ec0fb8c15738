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
longer lengths of that row are skipped. mamba_ssm rows need its pure-Python wheel (built with
MAMBA_SKIP_CUDA_BUILD=TRUE) and einops installed; without them they are skipped. Results:
benchmarks/results/gpu.md and gpu.json (gpu_smoke.* for --smoke).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import types

import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.ops import _triton, causal_conv1d, selective_scan, ssd

WIDTHS = {"130M": 768, "370M": 1024, "1.4B": 2048}    # d_model; d_inner = 2 d_model


# ---- timing ---------------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, reps: int, cap: float) -> float:
    """Median seconds of fn() over reps calls after one warm-up call (fewer calls when slow)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    if first > cap:
        raise TimeoutError(f"one call took {first:.1f} s > cap {cap} s")
    times = []
    for _ in range(reps if first * reps < cap else 1):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def with_triton():
    """Every op on its triton tier (SSMKIT_BACKEND=triton): on CPU tensors too, under the interpreter."""
    saved = os.environ.get("SSMKIT_BACKEND")
    os.environ["SSMKIT_BACKEND"] = "triton"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SSMKIT_BACKEND"]
        else:
            os.environ["SSMKIT_BACKEND"] = saved


@contextlib.contextmanager
def without_triton():
    """Dispatch as if Triton were not installed: what "auto" runs on a CUDA machine without it."""
    saved = _triton.installed
    _triton.installed = lambda: False
    try:
        yield
    finally:
        _triton.installed = saved


def fwd_bwd(call, inputs):
    def run():
        out = call()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out.float().sum(), [t for t in inputs if t.requires_grad])
    return run


def no_grad(call):
    def run():
        with torch.no_grad():
            call()
    return run


# ---- mamba_ssm, the peer ----------------------------------------------------------------------------
def mamba_ssm_kernels():
    """(ssd_combined, selective_state_update) modules of mamba_ssm, or (None, why). Its Triton modules are
    loaded without running the package's __init__, which imports its CUDA and Mamba-3 extras."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return None, "mamba_ssm is not installed"
    if "mamba_ssm" not in sys.modules:
        package = types.ModuleType("mamba_ssm")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = package
    try:
        combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        update = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
    except Exception as e:                                              # noqa: BLE001  any import failure
        return None, f"mamba_ssm's Triton kernels do not import: {e!r}"
    return (combined, update), None


# ---- rows -------------------------------------------------------------------------------------------
class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, **row) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def measure(table, section, label, fn, device, args, **extra) -> float | None:
    try:
        sec = timeit(fn, device, args.reps, args.cap)
    except (torch.cuda.OutOfMemoryError, TimeoutError, RuntimeError) as e:
        table.add(section, impl=label, **extra, ms=None, note=type(e).__name__ + ": " + str(e).split("\n")[0][:120])
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None
    table.add(section, impl=label, **extra, ms=sec * 1e3)
    return sec


def copy_rate(table, device, args) -> float:
    n = (1 << 28) if not args.smoke else (1 << 20)
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    sec = timeit(lambda: dst.copy_(src), device, args.reps, args.cap)
    gbs = 2 * src.nbytes / sec / 1e9
    table.add("copy", impl="torch copy_", bytes=2 * src.nbytes, ms=sec * 1e3, GBps=gbs)
    return gbs


def scan_inputs(b, d, n, L, dtype, device):
    g = lambda *s, dt=dtype: torch.randn(*s, device=device, dtype=dt).requires_grad_()   # noqa: E731
    u, delta, z = g(b, d, L), g(b, d, L), g(b, d, L)
    A = (-torch.rand(d, n, device=device) - 0.5).requires_grad_()
    B, C = g(b, 1, n, L), g(b, 1, n, L)
    D, bias = g(d, dt=torch.float32), g(d, dt=torch.float32)
    return (u, delta, A, B, C), dict(D=D, z=z, delta_bias=bias, delta_softplus=True)


def bench_scan(table, device, args, copy_gbs):
    for name, L in args.scan_shapes:
        d, n, b = 2 * WIDTHS.get(name, args.tiny_width), 16 if not args.smoke else 4, args.batch
        core, kw = scan_inputs(b, d, n, L, args.dtype, device)
        inputs = [*core, *[v for v in kw.values() if isinstance(v, torch.Tensor)]]
        nbytes = (4 * b * d * L + 2 * b * n * L) * core[0].element_size()
        for impl, ctx in (("ssmkit triton", with_triton), ("ssmkit w/o triton", without_triton)):
            call = lambda: selective_scan(*core, **kw)  # noqa: E731
            with ctx():
                sec = measure(table, "scan", impl, no_grad(call), device, args, model=name, L=L, pass_="fwd")
                if sec:
                    table.rows[-1].update(GBps=nbytes / sec / 1e9, pct_copy=100 * nbytes / sec / 1e9 / copy_gbs)
                measure(table, "scan", impl, fwd_bwd(call, inputs), device, args, model=name, L=L, pass_="fwd+bwd")


def ssd_inputs(b, L, h, p, n, dtype, device):
    g = lambda *s, dt=dtype: torch.randn(*s, device=device, dtype=dt).requires_grad_()   # noqa: E731
    x, dt, B, C = g(b, L, h, p), g(b, L, h), g(b, L, 1, n), g(b, L, 1, n)
    A = (-torch.rand(h, device=device) - 0.5).requires_grad_()
    D, bias = g(h, dt=torch.float32), g(h, dt=torch.float32)
    return (x, dt, A, B, C), dict(D=D, dt_bias=bias, dt_softplus=True)


def ssd_flops(b, L, h, p, n, T) -> float:
    """Matmul FLOPs of the chunked forward: C.B, the masked T x T scan, chunk states, entering states."""
    c = math.ceil(L / T)
    return 2 * b * c * (T * T * n + h * (T * T * p + 2 * T * p * n))


def bench_ssd(table, device, args, peer):
    for name, L in args.ssd_shapes:
        h, p, n, T, b = (2 * WIDTHS.get(name, args.tiny_width) // args.headdim, args.headdim, args.d_state,
                         args.chunk, args.batch)
        core, kw = ssd_inputs(b, L, h, p, n, args.dtype, device)
        inputs = [*core, kw["D"], kw["dt_bias"]]
        flops = ssd_flops(b, L, h, p, n, T)
        impls = [("ssmkit triton", lambda: ssd(*core, chunk_size=T, **kw), with_triton),
                 ("ssmkit w/o triton", lambda: ssd(*core, chunk_size=T, **kw), without_triton)]
        if peer is not None:
            impls.insert(1, ("mamba_ssm", lambda: peer[0].mamba_chunk_scan_combined(*core, T, **kw),
                             contextlib.nullcontext))
        for impl, call, ctx in impls:
            with ctx():
                sec = measure(table, "ssd", impl, no_grad(call), device, args, model=name, L=L, pass_="fwd")
                if sec:
                    table.rows[-1].update(TFLOPs=flops / sec / 1e12)
                measure(table, "ssd", impl, fwd_bwd(call, inputs), device, args, model=name, L=L, pass_="fwd+bwd")


def bench_conv(table, device, args, copy_gbs):
    for name, L in args.scan_shapes:
        d, b = 2 * WIDTHS.get(name, args.tiny_width), args.batch
        x = torch.randn(b, d, L, device=device, dtype=args.dtype, requires_grad=True)
        w = torch.randn(d, 4, device=device, dtype=args.dtype, requires_grad=True)
        bias = torch.randn(d, device=device, dtype=args.dtype, requires_grad=True)
        nbytes = 2 * x.nbytes
        for impl, backend in (("ssmkit triton", "triton"), ("ssmkit reference", "reference")):
            call = lambda: causal_conv1d(x, w, bias=bias, activation="silu", backend=backend)  # noqa: E731
            sec = measure(table, "conv", impl, no_grad(call), device, args, model=name, L=L, pass_="fwd")
            if sec:
                table.rows[-1].update(GBps=nbytes / sec / 1e9, pct_copy=100 * nbytes / sec / 1e9 / copy_gbs)
            measure(table, "conv", impl, fwd_bwd(call, [x, w, bias]), device, args, model=name, L=L, pass_="fwd+bwd")


def bench_step(table, device, args, peer):
    from ssmkit.ops._triton import decode

    d, n = 2 * WIDTHS.get("130M", args.tiny_width) if not args.smoke else 2 * args.tiny_width, 16
    H, P, N = d // args.headdim, args.headdim, args.d_state
    for b in args.step_batches:
        f = lambda *s, dt=args.dtype: torch.randn(*s, device=device, dtype=dt)   # noqa: E731
        h, u, delta, z, B, C = f(b, d, n, dt=torch.float32), f(b, d), f(b, d), f(b, d), f(b, n), f(b, n)
        A, D, bias = -torch.rand(d, n, device=device), f(d, dt=torch.float32), f(d, dt=torch.float32)
        measure(table, "step", "ssmkit selective_state_update", no_grad(lambda: decode.selective_state_update(
            h, u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)), device, args, layer="mamba", batch=b)
        if peer is not None:
            measure(table, "step", "mamba_ssm selective_state_update", no_grad(lambda: peer[1].selective_state_update(
                h, u, delta, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True)), device, args, layer="mamba", batch=b)
        conv_dim, k = d + 2 * N, 4
        xbc, conv, ssm = f(b, conv_dim), f(b, conv_dim, k - 1), f(b, H, P, N, dt=torch.float32)
        w, cb, dt, dtb, A2, D2 = f(conv_dim, k), f(conv_dim), f(b, H), f(H, dt=torch.float32), \
            -torch.rand(H, device=device), f(H, dt=torch.float32)
        measure(table, "step", "ssmkit mamba2_step (conv + ssm)", no_grad(lambda: decode.mamba2_step(
            xbc, dt, conv, ssm, w, cb, dtb, A2, D2, None, ngroups=1)), device, args, layer="mamba2", batch=b)
        if peer is not None:
            x3, dt3 = xbc[:, :d].reshape(b, H, P), dt[:, :, None].expand(b, H, P)
            A3 = A2[:, None, None].expand(H, P, N)
            B3, C3 = xbc[:, d:d + N].reshape(b, 1, N), xbc[:, d + N:].reshape(b, 1, N)
            measure(table, "step", "mamba_ssm selective_state_update (ssm only)", no_grad(
                lambda: peer[1].selective_state_update(ssm, x3, dt3, A3, B3, C3, D=D2[:, None].expand(H, P),
                                                       dt_bias=dtb[:, None].expand(H, P), dt_softplus=True)),
                device, args, layer="mamba2", batch=b)


def mamba2_model(args, device) -> SSMForCausalLM:
    if args.smoke:
        cfg = SSMConfig(d_model=args.tiny_width, n_layer=1, vocab_size=64, layers="mamba2",
                        layer_kwargs={"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8}})
    else:                                                   # Mamba-2 130M (state-spaces/mamba2-130m)
        cfg = SSMConfig(d_model=768, n_layer=24, vocab_size=50277, layers="mamba2",
                        layer_kwargs={"mamba2": {"d_state": 128, "headdim": 64, "chunk_size": 256}})
    return SSMForCausalLM(cfg).to(device=device, dtype=args.dtype)


def bench_train(table, device, args):
    model = mamba2_model(args, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, L = args.batch, args.train_len
    ids = torch.randint(0, model.config.vocab_size, (b, L + 1), device=device)

    def step():
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for impl, ctx in (("ssmkit triton", with_triton), ("ssmkit w/o triton", without_triton)):
        with ctx():
            sec = measure(table, "train", impl, step, device, args, model="mamba2-130m" if not args.smoke else "tiny",
                          batch=b, L=L)
            if sec:
                table.rows[-1].update(tokens_per_s=b * L / sec)


def bench_decode(table, device, args):
    model = mamba2_model(args, device).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 16), device=device)
    n = args.decode_tokens
    cases = [("ssmkit triton, eager", dict(cuda_graphs=False), with_triton),
             ("ssmkit w/o triton", dict(cuda_graphs=False), without_triton)]
    if device.type == "cuda":
        cases.insert(0, ("ssmkit triton + CUDA graphs", dict(cuda_graphs=True), with_triton))
    for impl, kw, ctx in cases:
        with ctx():
            sec = measure(table, "decode", impl, lambda: model.generate(ids, max_new_tokens=n, **kw), device, args,
                          model="mamba2-130m" if not args.smoke else "tiny", batch=1, new_tokens=n)
            if sec:
                table.rows[-1].update(tokens_per_s=n / sec)


SECTIONS = ("copy", "scan", "ssd", "conv", "step", "train", "decode")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU: Triton's interpreter)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cap", type=float, default=20.0, help="seconds one call may take")
    p.add_argument("--out", default=None, help="default benchmarks/results/gpu.md (gpu_smoke.md)")
    args = p.parse_args(argv)
    args.dtype = torch.bfloat16
    if args.smoke:
        args.reps, args.batch, args.tiny_width = 1, 1, 8
        args.scan_shapes = args.ssd_shapes = [("tiny", 24)]
        args.headdim, args.d_state, args.chunk = 8, 8, 16
        args.step_batches, args.train_len, args.decode_tokens = [1], 16, 3
    else:
        args.batch, args.tiny_width = 8, 0
        lengths = (2048, 8192, 16384)
        args.scan_shapes = args.ssd_shapes = [(name, L) for name in WIDTHS for L in lengths]
        args.headdim, args.d_state, args.chunk = 64, 128, 256
        args.step_batches, args.train_len, args.decode_tokens = [1, 16, 64], 2048, 256
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
    torch.manual_seed(0)
    env = environment(device)
    peer, why = mamba_ssm_kernels() if device.type == "cuda" else (None, "mamba_ssm rows run on CUDA only")
    env["mamba_ssm"] = "loaded" if peer is not None else why
    print(env, flush=True)
    table, copy_gbs = Table(), float("nan")
    if "copy" in args.only or "scan" in args.only or "conv" in args.only:
        copy_gbs = copy_rate(table, device, args)
    for section, run in (("scan", lambda: bench_scan(table, device, args, copy_gbs)),
                         ("ssd", lambda: bench_ssd(table, device, args, peer)),
                         ("conv", lambda: bench_conv(table, device, args, copy_gbs)),
                         ("step", lambda: bench_step(table, device, args, peer)),
                         ("train", lambda: bench_train(table, device, args)),
                         ("decode", lambda: bench_decode(table, device, args))):
        if section in args.only:
            print(f"--- {section}", flush=True)
            run()
    default = "benchmarks/results/gpu_smoke.md" if args.smoke else "benchmarks/results/gpu.md"
    write(table, env, args.out or default)


if __name__ == "__main__":
    main()
