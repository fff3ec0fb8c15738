"""Shared pieces of the fused CPU kernels (numba): a vectorizable exp, softplus, silu, the
availability check, the tensor <-> array conversions and the inference kernels' tiles.

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

exp bounds a fused scan: numba turns `math.exp` into a scalar libm call (about 0.4 G/s on 2 cores),
which LLVM cannot vectorize. `vexp` below is written with plain arithmetic so it vectorizes:
    x = k ln2 + f,  |f| <= ln2/2 (ln2 split in two parts, Cody-Waite);  e^x = 2^k e^f;
    e^f = 1 + f + f^2 P(f), P the degree-5 minimax polynomial of Cephes' expf (Horner);
    2^k built directly in the float's exponent bits ((k + 127) << 23 reinterpreted as float32).
Max relative error 1.2e-7 (1 ulp) compiled strictly; 3e-7 inside the fastmath kernels, where LLVM
may reassociate the two-part reduction (fastmath is what lets the scan's sums vectorize).
x is clamped to [-87, 88] (no overflow, no denormals).

Glossary: vexp = e^x; softplus(x) = log(1 + e^x); silu(x) = x sigmoid(x).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref

import numpy as np
import torch

NUMBA_MISSING = "numba is not installed (pip install ssmkit[cpu])"
DTYPES = (torch.float32, torch.bfloat16)



def unsupported_reason(*tensors) -> str | None:
    """None when the numba kernels can run these tensors, else why not (used by every op's cpu.py)."""
    if not HAVE_NUMBA:
        return NUMBA_MISSING
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.device.type != "cpu":
            return f"tensor on {t.device.type}"
        if t.is_floating_point() and t.dtype not in DTYPES:
            return f"the cpu backend supports float32 and bfloat16, got {t.dtype}"
    return None


def as_array(t: torch.Tensor) -> np.ndarray:
    """t as a C-contiguous float32 numpy array: a view when t already is one, else a copy.

    A (b, d, l) tensor that is a transposed (b, l, d) projection (stride 1 along d, as every layer
    hands its kernels) is copied by `copy_transposed`, 16 channels at a time along l: 5.2 ms against
    torch's 12.3 ms for (1, 1536, 2048) on 2 cores, once per such input per layer.
    """
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    if t.is_contiguous():
        return t.numpy()
    out = poison(t.shape)
    copy_into(out, t)
    return out


def copy_into(dst: np.ndarray, t: torch.Tensor) -> None:
    """dst[...] = t (float32), through `copy_transposed` when t is a transposed (b, d, l) projection."""
    t = t.detach().float()
    if HAVE_NUMBA and t.dim() == 3 and t.stride(1) == 1 and t.shape[1] > 1 and not t.is_contiguous():
        copy_transposed(t.numpy(), dst)
    else:
        dst[...] = t.numpy()


def poison(shape) -> np.ndarray:
    """Uninitialized float32 array (`out_tensor`'s memory); NaN when SSMKIT_POISON=1 so an unwritten
    element shows."""
    return out_tensor(shape).numpy()


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None
CACHE_MIN_BYTES = 16 << 20
CACHE_ENV = "SSMKIT_CPU_CACHE_MB"
CACHE_DEFAULT_MB = 2048


def out_tensor(shape, dtype=torch.float32) -> torch.Tensor:
    """torch.empty for a kernel's large output: on huge pages, and reused once freed.

    Fresh memory costs a page fault per 4 KiB at its first touch, as long as parallel_scan's own
    forward pass at (1, 4096, 32768): 145 ms per 512 MB on the 2-core machine the benchmarks ran on,
    46 ms on 2 MiB pages. So buffers of 4 MiB or more are advised onto transparent huge pages (Linux;
    only the 2 MiB pages wholly inside; a hint that THP may refuse), and buffers of CACHE_MIN_BYTES
    or more come from `_cache`, which keeps freed ones for the next output of the same size.
    Filled with NaN when SSMKIT_POISON=1, as `poison` does.
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
    and `empty_cache()` releases them all. At parallel_scan's (1, 4096, 32768) a training step's
    three 512 MB outputs come back without a page fault: fwd+bwd 355 -> 247 ms on huge pages and
    860 -> 247 ms where THP refused them (benchmarks/parallel_scan.py, "cpu (numba)" vs its cold run).
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


try:  # numba is optional: without it the kernels below stay plain Python and are never called
    import numba as nb
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
    prange = nb.prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    nb = None
    HAVE_NUMBA = False
    prange = range


def njit(**options):
    """numba.njit(cache=True, **options), or the identity decorator when numba is missing."""
    if nb is None:
        return lambda f: f
    return nb.njit(cache=True, **options)


if HAVE_NUMBA:

    @intrinsic
    def _int_bits_as_f32(typingctx, i):
        sig = types.float32(types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return sig, codegen

else:  # pragma: no cover

    def _int_bits_as_f32(i):
        return np.array([i], dtype=np.int32).view(np.float32)[0]


f32 = np.float32
LOG2E = f32(1.4426950408889634)
LN2_HI = f32(0.693145751953125)
LN2_LO = f32(1.428606765330187e-06)
EXP_LO, EXP_HI = f32(-87.0), f32(88.0)
# minimax polynomial for (e^f - 1 - f) / f^2 on |f| <= ln2/2 (the Cephes expf coefficients)
P0, P1, P2 = f32(5.0000001201e-1), f32(1.6666665459e-1), f32(4.1665795894e-2)
P3, P4, P5 = f32(8.3334519073e-3), f32(1.3981999507e-3), f32(1.9875691500e-4)
ONE, HALF, ZERO = f32(1.0), f32(0.5), f32(0.0)


@njit(inline="always", fastmath=True)
def vexp(x):
    x = min(max(f32(x), EXP_LO), EXP_HI)
    k = np.floor(x * LOG2E + HALF)
    f = x - k * LN2_HI - k * LN2_LO
    p = ONE + f + f * f * (P0 + f * (P1 + f * (P2 + f * (P3 + f * (P4 + f * P5)))))
    return p * _int_bits_as_f32(np.int32((np.int32(k) + 127) << 23))


# log1p(y) / y on 0 <= y <= 1: degree-9 Chebyshev least-squares fit (numpy, float64) in monomial
# form; max relative error of y * poly(y) in float32 Horner 1.4e-7. No 1 + y is ever formed, so
# there is no rounding for fastmath to reassociate away and tiny y keep their precision.
LOG1P_POLY = (f32(1.0), f32(-0.4999985098838806), f32(0.3332909941673279), f32(-0.24947808682918549),
              f32(0.19651491940021515), f32(-0.1525145173072815), f32(0.10533228516578674),
              f32(-0.056435029953718185), f32(0.019649166613817215), f32(-0.0032140363473445177))
G0, G1, G2, G3, G4, G5, G6, G7, G8, G9 = LOG1P_POLY


@njit(inline="always", fastmath=True)
def log1p_unit(y):
    """log(1 + y) for 0 <= y <= 1 with plain arithmetic (vectorizes; numba's log1p is a libm call)."""
    p = ((((((((G9 * y + G8) * y + G7) * y + G6) * y + G5) * y + G4) * y + G3) * y + G2) * y + G1) * y + G0
    return y * p


@njit(inline="always", fastmath=True)
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, no libm call; relative error ~2e-7."""
    return max(x, ZERO) + log1p_unit(vexp(-abs(x)))


@njit(inline="always", fastmath=True)
def sigmoid(x):
    return ONE / (ONE + vexp(-x))


@njit(inline="always", fastmath=True)
def silu(x):
    return x / (ONE + vexp(-x))


# the inference kernels (forward only, channels-last) give each job LANES channels, vectorized
# across them, and walk time in tiles of TILE steps staged in (TILE, LANES) buffers (L1/L2)
LANES = 64
TILE = 128


def rows(t: torch.Tensor) -> tuple[np.ndarray, int, bool]:
    """A (b, d, l) tensor as a 2-D C-contiguous float32 array, without a copy where the layout allows.

    Returns (arr, col0, channels_last):
      channels_last: arr is (b*l, W) and t[i, c, s] = arr[i*l + s, col0 + c] (rows of time steps);
        a transposed (b, l, d) projection, also a column slice of a wider one (W > d, as the gate z
        and the conv input are halves of in_proj's output), comes this way as a view;
      else: arr is (b*d, l) and t[i, c, s] = arr[i*d + c, s], col0 = 0 (a contiguous (b, d, l)).
    Any other layout is copied to channels-last first. The kernels read both forms with `load_tile`.
    """
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    b, d, l = t.shape
    if t.is_contiguous():
        return t.numpy().reshape(b * d, l), 0, False
    sb, sc, sl = t.stride()
    if (sc == 1 or d == 1) and sl >= d and (sb == l * sl or b == 1):
        off = t.storage_offset()
        col0 = min(off, sl - d)
        if off - col0 + b * l * sl <= t.untyped_storage().nbytes() // 4:
            flat = torch.as_strided(t, (b * l, sl), (sl, 1), off - col0)
            return flat.numpy(), col0, True
    return t.transpose(1, 2).contiguous().numpy().reshape(b * l, d), 0, True


@njit(inline="always")
def load_tile(src, col0, cl, i, d, L, c0, cb, t0, tl, buf):
    """buf[s, c] = x[i, c0 + c, t0 + s] for s < tl, c < cb, x given as `rows` gives it.

    Each row is sliced first and indexed by the loop variable alone: numba then drops its negative-
    index check, which on a computed index (col0 + c0 + c) cost 3x in a loop as short as this.
    """
    if cl:
        for s in range(tl):
            seg = src[i * L + t0 + s, col0 + c0: col0 + c0 + cb]
            for c in range(cb):
                buf[s, c] = seg[c]
    else:
        for c in range(cb):
            seg = src[i * d + c0 + c, t0: t0 + tl]
            for s in range(tl):
                buf[s, c] = seg[s]


@njit(parallel=True)
def copy_transposed(src, dst):
    # dst[i, c, t] = src[i, c, t] for src strided along t: a block of 16 channels reads whole
    # cache lines of src and writes 16 rows of dst
    b, d, L = src.shape
    nblk = (d + 15) // 16
    for job in prange(b * nblk):
        i = job // nblk
        c0 = (job % nblk) * 16
        c1 = min(d, c0 + 16)
        for t in range(L):
            for c in range(c0, c1):
                dst[i, c, t] = src[i, c, t]


@njit(parallel=True, fastmath=True)
def _exp_throughput_kernel(x, out):
    for i in prange(x.shape[0]):
        out[i] = vexp(x[i])


def exp_array(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """vexp over a float32 array into `out` (new if None): tests and the benchmark's exp/s ceiling."""
    out = np.empty_like(x) if out is None else out
    _exp_throughput_kernel(x, out)
    return out


def num_threads() -> int:
    """numba's current thread count (1 without numba)."""
    return nb.get_num_threads() if HAVE_NUMBA else 1


def set_threads(n: int | None) -> None:
    """Set numba's thread count (None: leave numba's default, the number of cores)."""
    if n is not None:
        import numba

        numba.set_num_threads(n)
