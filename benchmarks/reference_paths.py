"""Selective scan reference paths: the sequential loop (oracle) vs the chunked log-space path.

    .venv/bin/python -m benchmarks.reference_paths            # b=1, d=1536, n=16, l=2048, float32
    .venv/bin/python -m benchmarks.reference_paths --length 512 --repeats 3 --threads 2

First the parity of ssmkit's Mamba / Mamba2 layers with transformers' MambaMixer / Mamba2Mixer
(weights copied with strict=True; relative error of the forward and of step-by-step decoding), then
forward + backward (gradients of every input and of the initial state) of each path, side by side
in one run, each in its own fresh process so that its peak memory (the rise of the resident
high-water mark after the inputs are built: benchmarks._cells.PeakRSS) is its own. Times are the
best of `--repeats`.
The children run with MALLOC_MMAP_THRESHOLD_=65536: glibc's adaptive threshold otherwise keeps freed
per-chunk buffers on a fragmented heap, and the resident peak then reflects the allocator, not the path.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from benchmarks._cells import PeakRSS


def _run(path: str, b: int, d: int, n: int, l: int, repeats: int, threads: int, queue) -> None:
    import torch

    from ssmkit.ops.selective_scan import chunked, reference

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fn = reference.selective_scan if path == "loop" else chunked.selective_scan
    inputs = [
        torch.randn(b, d, l),
        torch.randn(b, d, l) * 0.5,
        -torch.rand(d, n) - 0.1,
        torch.randn(b, 1, n, l),
        torch.randn(b, 1, n, l),
        torch.randn(d),
        torch.randn(b, d, l),
        torch.randn(d),
        torch.randn(b, d, n),
    ]
    inputs = [t.requires_grad_(True) for t in inputs]
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            for t in inputs:
                t.grad = None
            start = time.perf_counter()
            u, delta, A, B, C, D, z, bias, h0 = inputs
            out, h = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, initial_state=h0,
                        return_final_state=True)
            (out.sum() + h.sum()).backward()
            times.append(time.perf_counter() - start)
    queue.put((path, min(times), mem.mb))


def parity(backend: str) -> None:
    """Relative error vs transformers (random init, b=2, l=64, d_model=64), forward and stepping."""
    import torch
    from transformers import Mamba2Config, MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    from ssmkit.layers import Mamba, Mamba2

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    torch.manual_seed(0)
    mamba = MambaMixer(
        MambaConfig(hidden_size=64, state_size=16, expand=2, conv_kernel=4, time_step_rank=4), 0
    )
    cfg2 = Mamba2Config(
        hidden_size=64, state_size=16, expand=2, head_dim=16, num_heads=8, n_groups=2, chunk_size=16
    )
    mamba2 = Mamba2Mixer(cfg2, 0)
    with torch.no_grad():  # move A and D away from their constant inits
        mamba2.A_log.copy_(torch.log(torch.rand(8) * 15 + 1))
        mamba2.D.copy_(torch.randn(8))
    pairs = (
        ("Mamba", mamba, Mamba(64, d_state=16, dt_rank=4, backend=backend)),
        ("Mamba2", mamba2, Mamba2(64, d_state=16, headdim=16, ngroups=2, chunk_size=16, backend=backend)),
    )
    for name, theirs, ours in pairs:
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, 64, 64)
        with torch.no_grad():
            expected, y = theirs(x), ours(x)
            state, ys = ours.init_state(2), []
            for t in range(x.shape[1]):
                y_t, state = ours.step(x[:, t], state)
                ys.append(y_t)
        step = torch.stack(ys, 1)
        errs = f"forward {rel(y, expected):.2e}  step {rel(step, expected):.2e}"
        print(f"parity {name:<7} backend={backend:<10} {errs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    for backend in ("reference", "auto"):
        parity(backend)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # read by glibc when a child starts
    ctx = mp.get_context("spawn")
    results = {}
    for path in ("loop", "chunked"):
        q = ctx.Queue()
        proc = ctx.Process(
            target=_run, args=(path, a.batch, a.d, a.d_state, a.length, a.repeats, a.threads, q)
        )
        proc.start()
        name, seconds, mib = q.get()
        proc.join()
        results[name] = (seconds, mib)
    print(
        f"selective scan fwd+bwd, b={a.batch} d={a.d} n={a.d_state} l={a.length} float32, "
        f"{a.threads} thread(s), best of {a.repeats}"
    )
    print(f"{'path':<10}{'seconds':>10}{'peak MiB':>12}")
    for name, (s, mib) in results.items():
        print(f"{name:<10}{s:>10.3f}{mib:>12.0f}")
    print(f"chunked / loop time: {results['chunked'][0] / results['loop'][0]:.2f}")


if __name__ == "__main__":
    main()
