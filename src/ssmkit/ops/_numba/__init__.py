"""What the fused CPU kernels (the `numba.py` tier of each op) share: numba itself, its threads,
vectorizable numerics (`numerics`), reusable output buffers (`buffers`), tensor <-> array views and
tiles (`arrays`). Importing this package imports numba; without numba the op's numba tier is
unavailable (ssmkit.ops._dispatch says so) and nothing here is imported.

Why numba for the CPU kernels (and not a C++/OpenMP extension or torch.compile):
- numba ships wheels for Linux, macOS and Windows (x86-64 and arm64): no compiler on the user's side
  and no build step in ssmkit's own packaging, whereas a C++/OpenMP extension must either be built by
  the user (compiler + OpenMP runtime, painful on macOS/Windows) or shipped as a wheel per platform.
- `@njit(cache=True)` writes the compiled machine code to __pycache__, so only the first run in an
  environment pays the LLVM compile time; later processes load it in a fraction of a second.
- `numba.prange` parallelizes over batch x channels with its own thread pool; LLVM vectorizes the
  inner loops over the state size (AVX2/AVX-512/NEON as the machine has them).
- torch.compile (inductor) has no fused sequential scan: it unrolls or loops in Python-visible ops,
  materializes the (b, l, d, n) states, and its compile takes tens of seconds per shape.
"""

from __future__ import annotations

import functools

import numba as nb
import torch

prange = nb.prange


def njit(threads: bool = False, **options):
    """numba.njit with its machine code cached on disk (cache=True); a parallel kernel, or one that calls
    parallel kernels (threads=True), runs on `num_threads()` threads (see `_TorchThreads`)."""
    compile_ = nb.njit(cache=True, **options)
    return (lambda f: _TorchThreads(compile_(f))) if options.get("parallel") or threads else compile_


def num_threads() -> int:
    """The threads a parallel kernel runs on: numba's count, at most torch's (torch.set_num_threads)."""
    theirs = torch.get_num_threads()  # first: numba's first query starts its pool and resets the count
    mine = nb.get_num_threads()
    if torch.get_num_threads() != theirs:  # that first query: put torch's count back
        torch.set_num_threads(theirs)
    return min(mine, theirs)


class _TorchThreads:
    """A parallel kernel that runs on min(numba's threads, torch's threads).

    One knob for a process's CPU threads: `torch.set_num_threads(1)` (a training run beside others,
    a test worker) then holds for the fused kernels too. Left at numba's default (every core) they
    contend with the torch ops around them: on a loaded 2-core machine a small Mamba's training step
    took 0.78 s with numba on 2 threads and 0.24 s on 1 (torch on 1 in both). numba's own setting is
    restored after the call.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        functools.update_wrapper(self, kernel.py_func)

    def __call__(self, *args):
        theirs = torch.get_num_threads()  # first: see num_threads
        mine = nb.get_num_threads()
        n = min(mine, theirs)
        if n == mine:
            return self.kernel(*args)
        nb.set_num_threads(n)
        try:
            return self.kernel(*args)
        finally:
            nb.set_num_threads(mine)
            # numba's OpenMP layer sets the OpenMP thread count, which torch shares: put torch's back
            if torch.get_num_threads() != theirs:
                torch.set_num_threads(theirs)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def set_threads(n: int | None) -> None:
    """Set numba's thread count (None: leave numba's default, the number of cores)."""
    if n is not None:
        nb.set_num_threads(n)
