"""The sections of benchmarks/gpu.py: inputs at each shape and the implementations timed on them."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
import types
from functools import partial

import torch

from ssmkit import SSMConfig, SSMForCausalLM
from ssmkit.ops import _triton, causal_conv1d, selective_scan, ssd
from ssmkit.ops._triton import decode

WIDTHS = {"130M": 768, "370M": 1024, "1.4B": 2048}    # d_model of the Mamba / Mamba-2 sizes; d_inner = 2x


# ---- timing ---------------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, reps: int, cap: float) -> float:
    """Median seconds of fn() over reps calls after one warm-up call (fewer calls when slow). The warm-up
    pays the compiles (Triton's, numba's on a cold cache: ~23 s for the selective scan's forward and
    backward) and is not held to the cap; the first timed call is."""
    fn()
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


def measure(table, section, label, fn, device, args, **row) -> float | None:
    """Time fn into a row of `table`; a row that runs out of memory or time gets a note instead, and the
    same row at longer lengths is skipped."""
    key = (section, label, row.get("model"), row.get("pass_"))
    if key in table.failed:
        table.add(section, impl=label, **row, ms=None, note="skipped: failed at a shorter length")
        return None
    try:
        sec = timeit(fn, device, args.reps, args.cap)
    except (torch.cuda.OutOfMemoryError, TimeoutError) as e:
        table.failed.add(key)
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        table.add(section, impl=label, **row, ms=None, note=why)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None
    table.add(section, impl=label, **row, ms=sec * 1e3)
    return sec


def mamba_ssm_kernels():
    """(ssd_combined, selective_state_update) modules of mamba_ssm, or (None, why). Its Triton modules are
    loaded without running the package's __init__, which imports its CUDA extensions and Mamba-3 extras."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return None, "mamba_ssm is not installed (docs/gpu.md: bring its sources in .whl/)"
    if "mamba_ssm" not in sys.modules:
        package = types.ModuleType("mamba_ssm")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = package
    try:
        combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        update = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
    except Exception as e:                                            # noqa: BLE001  whatever stops the import
        return None, f"mamba_ssm's Triton kernels do not import: {e!r}"
    return (combined, update), None


def _width(name, args) -> int:
    return 2 * WIDTHS.get(name, args.tiny_width)


def _leaf(*shape, dtype, device):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()


def copy_rate(table, device, args) -> float:
    """Device-to-device copy: bytes read + written per second, the ceiling the kernels are quoted against."""
    n = (1 << 28) if not args.smoke else (1 << 20)                  # 512 MiB of bfloat16
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    sec = timeit(partial(dst.copy_, src), device, args.reps, args.cap)
    table.add("copy", impl="torch copy_", bytes=2 * src.nbytes, ms=sec * 1e3, GBps=2 * src.nbytes / sec / 1e9)
    return 2 * src.nbytes / sec / 1e9


def _time_both(table, section, impl, call, inputs, device, args, **row):
    """Forward (no autograd) and forward + backward of `call`; returns the forward's seconds."""
    sec = measure(table, section, impl, no_grad(call), device, args, **row, pass_="fwd")
    measure(table, section, impl, fwd_bwd(call, inputs), device, args, **row, pass_="fwd+bwd")
    return sec


def bench_scan(table, device, args, copy_gbs):
    for name, L in args.scan_shapes:
        d, n, b = _width(name, args), 16 if not args.smoke else 4, args.batch
        leaf = partial(_leaf, dtype=args.dtype, device=device)
        core = (leaf(b, d, L), leaf(b, d, L), (-torch.rand(d, n, device=device) - 0.5).requires_grad_(),
                leaf(b, 1, n, L), leaf(b, 1, n, L))
        kw = dict(D=leaf(d, dtype=torch.float32), z=leaf(b, d, L), delta_bias=leaf(d, dtype=torch.float32),
                  delta_softplus=True)
        inputs = [*core, kw["D"], kw["z"], kw["delta_bias"]]
        nbytes = (4 * b * d * L + 2 * b * n * L) * core[0].element_size()     # u, delta, z, out; B, C
        for impl, ctx in (("ssmkit triton", with_triton), ("ssmkit w/o triton", without_triton)):
            with ctx():
                call = partial(selective_scan, *core, **kw)
                sec = _time_both(table, "scan", impl, call, inputs, device, args, model=name, L=L)
            if sec:
                _bandwidth(table, "scan", impl, name, L, nbytes / sec / 1e9, copy_gbs)


def _bandwidth(table, section, impl, name, L, gbs, copy_gbs):
    row = next(r for r in reversed(table.rows) if r["section"] == section and r["impl"] == impl
               and r.get("model") == name and r.get("L") == L and r.get("pass_") == "fwd")
    row.update(GBps=gbs, pct_copy=100 * gbs / copy_gbs)


def ssd_flops(b, L, h, p, n, T) -> float:
    """Matmul FLOPs of the chunked forward: C.B, the masked T x T scan, chunk states, entering states."""
    return 2 * b * math.ceil(L / T) * (T * T * n + h * (T * T * p + 2 * T * p * n))


def bench_ssd(table, device, args, peer):
    for name, L in args.ssd_shapes:
        h, p, n, T, b = _width(name, args) // args.headdim, args.headdim, args.d_state, args.chunk, args.batch
        leaf = partial(_leaf, dtype=args.dtype, device=device)
        core = (leaf(b, L, h, p), leaf(b, L, h), (-torch.rand(h, device=device) - 0.5).requires_grad_(),
                leaf(b, L, 1, n), leaf(b, L, 1, n))
        kw = dict(D=leaf(h, dtype=torch.float32), dt_bias=leaf(h, dtype=torch.float32), dt_softplus=True)
        inputs = [*core, kw["D"], kw["dt_bias"]]
        ours = partial(ssd, *core, chunk_size=T, **kw)
        impls = [("ssmkit triton", ours, with_triton), ("ssmkit w/o triton", ours, without_triton)]
        if peer is not None:
            impls.insert(1, ("mamba_ssm", partial(peer[0].mamba_chunk_scan_combined, *core, T, **kw),
                             contextlib.nullcontext))
        for impl, call, ctx in impls:
            with ctx():
                sec = _time_both(table, "ssd", impl, call, inputs, device, args, model=name, L=L)
            if sec:
                table.rows[-2].update(TFLOPs=ssd_flops(b, L, h, p, n, T) / sec / 1e12)


def bench_conv(table, device, args, copy_gbs):
    for name, L in args.scan_shapes:
        d, b = _width(name, args), args.batch
        leaf = partial(_leaf, dtype=args.dtype, device=device)
        x, w, bias = leaf(b, d, L), leaf(d, 4), leaf(d)
        for impl, backend in (("ssmkit triton", "triton"), ("ssmkit reference", "reference")):
            call = partial(causal_conv1d, x, w, bias=bias, activation="silu", backend=backend)
            sec = _time_both(table, "conv", impl, call, [x, w, bias], device, args, model=name, L=L)
            if sec:
                _bandwidth(table, "conv", impl, name, L, 2 * x.nbytes / sec / 1e9, copy_gbs)


def bench_step(table, device, args, peer):
    """One token's state update at Mamba-130M (d_inner 1536, n 16) and Mamba-2 130M shapes."""
    d, n = _width("130M", args) if not args.smoke else 2 * args.tiny_width, 16
    H, P, N, k = d // args.headdim, args.headdim, args.d_state, 4
    r = partial(torch.randn, device=device, dtype=args.dtype)
    f32 = partial(torch.randn, device=device)
    for b in args.step_batches:
        h, u, delta, z, B, C = f32(b, d, n), r(b, d), r(b, d), r(b, d), r(b, n), r(b, n)
        A, D, bias = -torch.rand(d, n, device=device), f32(d), f32(d)
        ours = partial(decode.selective_state_update, h, u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                       delta_softplus=True)
        row = dict(layer="mamba", batch=b)
        measure(table, "step", "ssmkit selective_state_update", no_grad(ours), device, args, **row)
        if peer is not None:
            theirs = partial(peer[1].selective_state_update, h, u, delta, A, B, C, D=D, z=z, dt_bias=bias,
                             dt_softplus=True)
            measure(table, "step", "mamba_ssm selective_state_update", no_grad(theirs), device, args, **row)
        xbc, conv, ssm = r(b, d + 2 * N), r(b, d + 2 * N, k - 1), f32(b, H, P, N)
        w, cbias, dt, dtb, D2 = r(d + 2 * N, k), r(d + 2 * N), r(b, H), f32(H), f32(H)
        A2 = -torch.rand(H, device=device)
        ours = partial(decode.mamba2_step, xbc, dt, conv, ssm, w, cbias, dtb, A2, D2, None, ngroups=1)
        row = dict(layer="mamba2", batch=b)
        measure(table, "step", "ssmkit mamba2_step (conv + ssm)", no_grad(ours), device, args, **row)
        if peer is not None:                      # mamba_ssm's heads form; its conv update is another package
            theirs = partial(peer[1].selective_state_update, ssm, xbc[:, :d].reshape(b, H, P),
                             dt[:, :, None].expand(b, H, P), A2[:, None, None].expand(H, P, N),
                             xbc[:, d:d + N].reshape(b, 1, N), xbc[:, d + N:].reshape(b, 1, N),
                             D=D2[:, None].expand(H, P), dt_bias=dtb[:, None].expand(H, P), dt_softplus=True)
            label = "mamba_ssm selective_state_update (ssm only)"
            measure(table, "step", label, no_grad(theirs), device, args, **row)


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
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for impl, ctx in (("ssmkit triton", with_triton), ("ssmkit w/o triton", without_triton)):
        with ctx():
            sec = measure(table, "train", impl, step, device, args, model=args.model_name, batch=b, L=L)
        if sec:
            table.rows[-1].update(tokens_per_s=b * L / sec)


def bench_decode(table, device, args):
    model = mamba2_model(args, device).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 16), device=device)
    n = args.decode_tokens
    cases = [("ssmkit triton, eager", False, with_triton), ("ssmkit w/o triton", False, without_triton)]
    if device.type == "cuda":
        cases.insert(0, ("ssmkit triton + CUDA graphs", True, with_triton))
    for impl, graphs, ctx in cases:
        with ctx():
            run = partial(model.generate, ids, max_new_tokens=n, cuda_graphs=graphs)
            row = dict(model=args.model_name, batch=1, new_tokens=n)
            sec = measure(table, "decode", impl, run, device, args, **row)
        if sec:
            table.rows[-1].update(tokens_per_s=n / sec)
