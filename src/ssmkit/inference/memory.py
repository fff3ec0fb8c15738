"""Giving freed memory back to the system in an inference process (glibc's malloc).

glibc serves a large allocation with its own mmap and unmaps it when freed, but after such a free it
raises that size threshold (up to 32 MiB: M_MMAP_THRESHOLD's dynamic adjustment), so later allocations
of the same size come from its heaps, where freed memory stays with the process. A prefill allocates
and frees activations of tens of MB per layer and chunk, so its resident memory ratchets up: measured,
an 8192-token prefill of a random-weight Mamba-130M in generate's 2048-token chunks (517 MB of weights,
2 threads) ended at 1648 MB resident, and at 869 MB (peak 953 MB) with the threshold fixed at 4 MiB.

`ssmkit generate` and `ssmkit serve` fix it at start-up; a Python program that serves a model can call
`return_freed_memory()` itself (or set MALLOC_MMAP_THRESHOLD_ before Python starts). Training leaves
glibc's default alone: with a fixed threshold every large allocation is fresh memory again, paying a
page fault per 4 KiB page at first touch (the CPU kernels' own large outputs are reused regardless:
ssmkit.ops._numba.buffers).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
THRESHOLD_BYTES = 4 << 20


def return_freed_memory(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold_bytes`: allocations of that size and more are unmapped,
    their memory given back, when freed. Returns whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): nothing to set
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
