"""parallel_scan forward+backward time: the numba tier and the chunked PyTorch scan against the
sequential loop (the reference), side by side in one run, with the ratio to the loop.

    .venv/bin/python -m benchmarks.parallel_scan                          # DEFAULT_SHAPES below
    .venv/bin/python -m benchmarks.parallel_scan --length 1024 --dtype complex64 --repeats 3

a, b have shape (batch, length, d, n): the shape of S5 / selective-scan states. Each timing is the
median of `--repeats` runs of forward + backward with dL/dh = w (w fixed: h.backward(w)), after one
warm-up run (which also compiles the numba kernels); the paths take turns within each repeat, so a
noisy neighbour on a shared machine slows all of them alike. `--threads` sets torch and numba threads.

At the issue's shape every path is bound by memory traffic and by first-touch page faults of its
512 MB buffers (h, grad a, grad b). The numba tier takes its outputs from
ssmkit.ops._numba.buffers.out_tensor: advised onto huge pages, and kept when freed for the next call
of the same shape, as a training loop makes them. "numba, cold" empties that cache before each call,
so it pays the page faults of fresh memory (twice as many on 4 KiB pages, where THP refuses the
advice). PyTorch's
THP_MEM_ALLOC_ENABLE=1 advises every tensor, the loop's included, and the header says whether it was
set: run both to see each effect.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ssmkit.ops import empty_cache
from ssmkit.ops._dispatch import available_backends
from ssmkit.ops.parallel_scan import chunked, reference


def _numba(a, b):
    from ssmkit.ops.parallel_scan import numba

    return numba.parallel_scan(a, b)


def _numba_cold(a, b):
    empty_cache()
    return _numba(a, b)


PATHS = {
    "loop (reference)": reference.parallel_scan,
    "chunked": chunked.parallel_scan,
    "numba": _numba,
    "numba, cold": _numba_cold,
}


def time_once(fn, a, b, w) -> float:
    a_, b_ = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    t0 = time.perf_counter()
    h = fn(a_, b_)
    h.backward(w)
    return time.perf_counter() - t0


# (batch, length, d, n) run when no shape is given: the shape, where every path is bound by
# memory traffic, and a narrow one, where the loop is bound by its per-step op launches
DEFAULT_SHAPES = [(1, 4096, 512, 64), (1, 4096, 64, 16)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int)
    p.add_argument("--length", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--dtype", default="float32", choices=["float32", "complex64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    given = (args.batch, args.length, args.d, args.n)
    if all(v is None for v in given):
        shapes = DEFAULT_SHAPES
    else:
        shapes = [tuple(v if v is not None else dv for v, dv in zip(given, DEFAULT_SHAPES[0]))]
    for shape in shapes:
        run_shape(shape, getattr(torch, args.dtype), args)


def run_shape(shape, dtype, args) -> None:
    torch.manual_seed(0)
    a = torch.rand(shape) * 0.5 + 0.45
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.randn(shape))
    b = torch.randn(shape, dtype=dtype)
    w = torch.randn(shape, dtype=dtype)
    print(f"parallel_scan fwd+bwd, a, b {shape} {args.dtype}, threads={args.threads}, "
          f"median of {args.repeats}, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}")
    paths = dict(PATHS)
    why = available_backends("parallel_scan", a, b)["numba"]
    if why is not None:
        print(f"{'numba':18s} skipped: {why}")
        paths = {name: fn for name, fn in paths.items() if not name.startswith("numba")}
    times = {name: [] for name in paths}
    for i in range(args.repeats + 1):
        for name, fn in paths.items():
            t = time_once(fn, a, b, w)
            if i > 0:                                                   # run 0 warms up (and compiles)
                times[name].append(t)
    base = statistics.median(times["loop (reference)"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:18s} {t * 1e3:10.1f} ms   {base / t:6.2f}x vs loop")
    empty_cache()


if __name__ == "__main__":
    main()
