"""Numerics the fused CPU kernels inline: a vectorizable exp, softplus, sigmoid and silu.

exp bounds a fused scan: numba turns `math.exp` into a scalar libm call, which LLVM cannot
vectorize. `vexp` below is written with plain arithmetic so it vectorizes:
    x = k ln2 + f,  |f| <= ln2/2 (ln2 split in two parts, Cody-Waite);  e^x = 2^k e^f;
    e^f = 1 + f + f^2 P(f), P the degree-5 minimax polynomial of Cephes' expf (Horner);
    2^k built directly in the float's exponent bits ((k + 127) << 23 reinterpreted as float32).
Max relative error 1.2e-7 (1 ulp) compiled strictly; 3e-7 inside the fastmath kernels, where LLVM
may reassociate the two-part reduction (fastmath is what lets the scan's sums vectorize).
x is clamped to [-87, 88] (no overflow, no denormals).

Glossary: vexp = e^x; vexp2_neg = 2^x for x <= 0; softplus(x) = log(1 + e^x); sigmoid(x) = 1 / (1 + e^-x);
silu(x) = x sigmoid(x).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ssmkit.ops._numba import njit, prange


@intrinsic
def _int_bits_as_f32(typingctx, i):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


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


# 2^f on |f| <= 1/2: the Cephes exp2f polynomial, 2^f = 1 + f Q(f) (relative error 1.7e-7)
Q0, Q1, Q2 = f32(6.931472028550421e-1), f32(2.402264791363012e-1), f32(5.550332471162809e-2)
Q3, Q4, Q5 = f32(9.618437357674640e-3), f32(1.339887440266574e-3), f32(1.535336188319500e-4)
EXP2_LO = f32(-126.0)


@njit(inline="always", fastmath=True)
def vexp2_neg(x):
    """2^x for x <= 0, as a scan's decay exp(dt A) = 2^(dt A log2(e)) with A log2(e) computed once:
    `vexp` without its natural-log reduction and upper clamp; x below -126 gives 2^-126 (no denormals)."""
    x = max(f32(x), EXP2_LO)
    k = np.floor(x + HALF)
    f = x - k
    p = ONE + f * (Q0 + f * (Q1 + f * (Q2 + f * (Q3 + f * (Q4 + f * Q5)))))
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


@njit(parallel=True, fastmath=True)
def _exp_throughput_kernel(x, out):
    for i in prange(x.shape[0]):
        out[i] = vexp(x[i])


@njit(parallel=True, fastmath=True)
def _exp2_kernel(x, out):
    for i in prange(x.shape[0]):
        out[i] = vexp2_neg(x[i])


def exp2_neg_array(x: np.ndarray) -> np.ndarray:
    """vexp2_neg over a float32 array (tests)."""
    out = np.empty_like(x)
    _exp2_kernel(x, out)
    return out


def exp_array(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """vexp over a float32 array into `out` (new if None): tests and the benchmark's exp/s ceiling."""
    out = np.empty_like(x) if out is None else out
    _exp_throughput_kernel(x, out)
    return out
