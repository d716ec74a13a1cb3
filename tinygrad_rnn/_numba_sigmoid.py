"""A one-pass sigmoid for Numba, and the vectorizable exp it is built on.

Why: the llvmlite build on PyPI has no SVML, so ``math.exp`` inside a Numba loop is a scalar
libm call (~3 ns an element), and the numpy form needs several passes; PyTorch's sigmoid is
one vectorized pass. This is that pass. Imported by `kernels` on first use only (it imports
numba).

``sigmoid(x) = 1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` for x < 0, with
``e = exp(-|x|) <= 1`` (never overflows; full relative precision in both tails). The exp is
Cody-Waite: ``y = k ln2 + r`` with ``|r| <= ln2 / 2`` (`_reduce`), ``exp(r) - 1`` by its
Taylor series (`_expm1_poly64`, degree 13: truncation 4e-18; `_expm1_poly32`, degree 7 for
float32 inputs, computed in float64: 5e-9), and ``2**k`` written directly into the exponent
bits (`_pow2`). These four are the one home of that exp: the compiled loops' exp and tanh
(`_numba_math`) are built from them too. Measured: at most 1.5 ulp (float64) and 0.5 ulp
(float32) over [-800, 800]; tests/test_kernels.py checks 4 ulp.

Every branch is on integer bits, not on float comparisons: a vectorized float comparison
with a NaN sets the invalid-operation flag, and numpy would warn. NaN comes back as NaN;
``|x|`` beyond 709 is clamped, so ``e`` is 0 there (the true value is below 2.2e-308). No
float-to-integer conversion either (AVX2 has no vector one for int64): ``k`` reaches the
exponent bits through the bits of ``k + ROUND``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types, vectorize
from numba.extending import intrinsic


@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float64 as an int64 (a reinterpretation, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, b):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of ln 2: k * LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10
ROUND = 6755399441055744.0               # 1.5 * 2**52: adding it rounds to an integer
EXPONENT_ONE = 1023 << 52
ABS_MASK = 0x7FFFFFFFFFFFFFFF
CLAMP = int(np.float64(709.0).view(np.int64))
INF = int(np.float64(np.inf).view(np.int64))


def _inline(fn):
    """Inlined into its callers (Numba IR), so it vectorizes with the caller's loop and takes
    its fastmath flags. njit, not register_jitable: an overload is also compiled alone for
    each signature, which made the sigmoid's first (uncached) build ~0.6 s slower."""
    return njit(inline="always")(fn)


@_inline
def _reduce(y):
    """(t, r) with y = k ln2 + r, |r| <= ln2/2, k = round(y / ln 2) = t - ROUND. ``t`` rather
    than ``k``: t holds k in its low bits, which `_pow2` moves into the exponent, one
    floating add fewer per element than rebuilding t from k."""
    t = y * LOG2E + ROUND
    k = t - ROUND
    r = (y - k * LN2_HI) - k * LN2_LO
    return t, r


@_inline
def _expm1_poly64(r):
    """exp(r) - 1 for |r| <= ln2/2; degree 13 (truncation below 1e-17 relative)."""
    p = 1.0 / 6227020800.0                                      # Horner
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    return p * r


@_inline
def _expm1_poly32(r):
    """exp(r) - 1 for |r| <= ln2/2; degree 7 (truncation 5e-9: enough for float32)."""
    p = 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    return p * r


@_inline
def _pow2(t):
    """2**k for t = k + ROUND, k an integer in [-1022, 1023]: the shift moves t's low bits (k,
    two's complement) into the exponent field."""
    return _from_bits(EXPONENT_ONE + (_bits(t) << 52))


def _sigmoid64(x):
    b = _bits(x)
    abs_bits = b & ABS_MASK
    a = _from_bits(abs_bits if abs_bits < CLAMP else CLAMP)     # |x|, at most 709
    t, r = _reduce(-a)
    e = (1.0 + _expm1_poly64(r)) * _pow2(t)                     # exp(-|x|)
    s = (e if b < 0 else 1.0) / (1.0 + e)
    return s if abs_bits <= INF else x                          # NaN stays NaN


def _sigmoid32(x32):
    x = np.float64(x32)
    b = _bits(x)
    abs_bits = b & ABS_MASK
    a = _from_bits(abs_bits if abs_bits < CLAMP else CLAMP)
    t, r = _reduce(-a)
    e = (1.0 + _expm1_poly32(r)) * _pow2(t)
    s = (e if b < 0 else 1.0) / (1.0 + e)
    return np.float32(s if abs_bits <= INF else x)


def build():
    """The two ufuncs (float32, float64); compiled once, then loaded from Numba's cache."""
    # "contract" only lets LLVM fuse a * b + c into one FMA (more accurate, not less); no
    # other fast-math assumption (NaN and inf must behave).
    options = dict(nopython=True, cache=True, fastmath={"contract"})
    f32 = vectorize(["float32(float32)"], **options)(_sigmoid32)
    f64 = vectorize(["float64(float64)"], **options)(_sigmoid64)
    return f32.ufunc, f64.ufunc
