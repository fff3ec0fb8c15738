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

import numba as nb

prange = nb.prange


def njit(**options):
    """numba.njit with its machine code cached on disk (cache=True)."""
    return nb.njit(cache=True, **options)


def num_threads() -> int:
    """numba's current thread count."""
    return nb.get_num_threads()


def set_threads(n: int | None) -> None:
    """Set numba's thread count (None: leave numba's default, the number of cores)."""
    if n is not None:
        nb.set_num_threads(n)
