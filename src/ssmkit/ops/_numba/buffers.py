"""Large outputs of the CPU kernels: on huge pages, and reused once freed.

`out_tensor` is torch.empty for a kernel's output (NaN-filled when SSMKIT_POISON=1, so an element a
kernel forgot to write shows in tests); `poison` is the same memory as a numpy array. Buffers of
CACHE_MIN_BYTES and more come from a cache of freed ones (at most SSMKIT_CPU_CACHE_MB idle, default
2048, 0 turns it off); `empty_cache()` releases the idle ones. No numba here.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref

import numpy as np
import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None
CACHE_MIN_BYTES = 16 << 20
CACHE_ENV = "SSMKIT_CPU_CACHE_MB"
CACHE_DEFAULT_MB = 2048


def out_tensor(shape, dtype=torch.float32) -> torch.Tensor:
    """torch.empty for a kernel's large output: on huge pages, and reused once freed.

    Fresh memory costs a page fault per 4 KiB page at its first touch, which for a memory-bound scan
    costs as much as the scan (benchmarks/parallel_scan.py, "cold"). So buffers of 4 MiB or more are
    advised onto transparent huge pages (Linux; only the 2 MiB pages wholly inside; a hint that THP
    may refuse), and buffers of CACHE_MIN_BYTES or more come from `_cache`, which keeps freed ones
    for the next output of the same size.
    Filled with NaN when SSMKIT_POISON=1.
    """
    dtype_size = torch.empty((), dtype=dtype).element_size()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype_size
    if nbytes >= CACHE_MIN_BYTES and _cache.limit() > 0:
        t = torch.from_numpy(_cache.take(nbytes)).view(dtype).view(shape)
    else:
        t = torch.empty(shape, dtype=dtype)
        _advise_huge(t.data_ptr(), nbytes)
    if os.environ.get("SSMKIT_POISON") == "1":
        t.fill_(float("nan"))
    return t


def _advise_huge(ptr: int, nbytes: int) -> None:
    global _madvise
    if not sys.platform.startswith("linux") or nbytes < 4 << 20:
        return
    if _madvise is None:
        _madvise = ctypes.CDLL(None).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-ptr // _HUGE_PAGE) * _HUGE_PAGE                         # whole 2 MiB pages inside
    end = (ptr + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _madvise(start, end - start, _MADV_HUGEPAGE)


class _BufferCache:
    """Large kernel outputs, kept when freed for the next request of the same size.

    Each buffer is handed out as a fresh numpy view of it, which the tensor's storage holds; a
    weakref finalizer on the view marks the buffer idle once the last tensor or array on it is gone,
    so a buffer is never handed out twice while in use. Idle buffers beyond the limit (environment
    variable SSMKIT_CPU_CACHE_MB, default 2048; 0 turns the cache off) are released, oldest first,
    and `empty_cache()` releases them all. A training loop's outputs then come back each step
    without a page fault.
    """

    def __init__(self):
        self._lock = threading.RLock()      # reentrant: a finalizer may run inside take() (gc)
        self._buffers: list[_Buffer] = []   # oldest first

    @staticmethod
    def limit() -> int:
        raw = os.environ.get(CACHE_ENV, "")
        try:
            mb = float(raw) if raw else CACHE_DEFAULT_MB
        except ValueError:
            raise ValueError(f"environment variable {CACHE_ENV} must be a number of MiB, got {raw!r}") \
                from None
        return int(mb * (1 << 20))

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            buf = next((x for x in reversed(self._buffers) if x.idle and x.array.nbytes == nbytes), None)
            if buf is None:
                raw = np.empty(nbytes + _HUGE_PAGE, np.uint8)  # start on a 2 MiB boundary: all huge pages
                start = -raw.ctypes.data % _HUGE_PAGE
                buf = _Buffer(raw[start: start + nbytes])
                _advise_huge(buf.array.ctypes.data, nbytes)
            else:
                self._buffers.remove(buf)
            self._buffers.append(buf)
            buf.idle = False
            view = buf.array[:]
            weakref.finalize(view, self._release, buf).atexit = False
            return view

    def _release(self, buf: _Buffer) -> None:
        with self._lock:
            buf.idle = True
            self._trim(self.limit())

    def _trim(self, limit: int) -> None:
        idle = sum(x.array.nbytes for x in self._buffers if x.idle)
        for x in [x for x in self._buffers if x.idle]:
            if idle <= limit:
                break
            self._buffers.remove(x)
            idle -= x.array.nbytes

    def empty(self) -> None:
        with self._lock:
            self._trim(0)

    def idle_bytes(self) -> int:
        with self._lock:
            return sum(x.array.nbytes for x in self._buffers if x.idle)


class _Buffer:
    __slots__ = ("array", "idle")

    def __init__(self, array: np.ndarray):
        self.array, self.idle = array, False


_cache = _BufferCache()


def empty_cache() -> None:
    """Release the idle buffers that the CPU kernels keep for reuse (see `_BufferCache`)."""
    _cache.empty()


def poison(shape) -> np.ndarray:
    """Uninitialized float32 array (`out_tensor`'s memory); NaN when SSMKIT_POISON=1 so an unwritten
    element shows."""
    return out_tensor(shape).numpy()
