"""Scalar exp, tanh and sigmoid for Numba loops, written so that LLVM vectorizes them.

Why: the llvmlite on PyPI has no SVML, so ``math.exp``/``math.tanh`` in a Numba loop are
scalar libm calls (3-16 ns an element). These are branch-free (every choice is a select on
integer bits) and inline into the compiled loops of `tinygrad_rnn.compile`, which call them
once per element. They are built from `_numba_sigmoid`'s exp, its one home: Cody-Waite range
reduction ``y = k ln2 + r`` (``|r| <= ln2/2``, `_reduce`), a Taylor polynomial for
``exp(r) - 1`` (`_expm1_poly64`, `_expm1_poly32`), and ``2**k`` written into the exponent
bits (`_pow2`). float32 inputs are computed in float64 with the shorter polynomial and
rounded once.

- ``exp(x)``: ``2**k`` is applied as two factors, so that k from -1080 to 1025 works:
  overflow gives inf, underflow 0 (through the subnormals), NaN stays NaN.
- ``tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|))`` with the sign of x: through expm1, no
  cancellation near 0 (``tanh(1e-9)`` keeps full precision); ``|x| > 22`` gives exactly ±1.
- ``sigmoid`` is `_numba_sigmoid`'s.

Measured ulp errors against long double are checked by tests/test_numba_math.py. Imported
only by the compiled path (it imports numba).
"""

import numpy as np
from numba import njit

from ._numba_sigmoid import (
    ABS_MASK,
    INF,
    ROUND,
    _bits,
    _expm1_poly32,
    _expm1_poly64,
    _from_bits,
    _pow2,
    _reduce,
    _sigmoid32,
    _sigmoid64,
)

TANH_CLAMP = 22.0                 # tanh(22) rounds to 1 in float64
EXP_MAX, EXP_MIN = 710.0, -750.0  # past these exp is inf or 0 in float64 anyway
EXP32_MAX, EXP32_MIN = 90.0, -110.0

_options = dict(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")


@njit(**_options)
def _exp_from(y, em1):
    t, r = _reduce(y)
    k = t - ROUND
    half = np.floor(k * 0.5)             # 2**k as two factors: k from -1080 to 1025 works
    return (1.0 + em1(r)) * _pow2(half + ROUND) * _pow2((k - half) + ROUND)


@njit(**_options)
def exp64(x):
    y = min(max(x, EXP_MIN), EXP_MAX)
    e = _exp_from(y, _expm1_poly64)
    return e if (_bits(x) & ABS_MASK) <= INF else x          # NaN stays NaN


@njit(**_options)
def exp32(x32):
    x = np.float64(x32)
    y = min(max(x, EXP32_MIN), EXP32_MAX)
    e = _exp_from(y, _expm1_poly32)
    return np.float32(e if (_bits(x) & ABS_MASK) <= INF else x)


@njit(**_options)
def _tanh_abs(a, em1):
    """tanh(a) for 0 <= a <= TANH_CLAMP, via m = expm1(-2a) in (-1, 0]."""
    t, r = _reduce(-2.0 * a)
    s = _pow2(t)
    m = s * em1(r) + (s - 1.0)
    return (0.0 - m) / (2.0 + m)         # 0 - m: tanh(+0) is +0, so the sign copy is exact


@njit(**_options)
def tanh64(x):
    b = _bits(x)
    a = min(_from_bits(b & ABS_MASK), TANH_CLAMP)
    t = _tanh_abs(a, _expm1_poly64)
    t = -t if b < 0 else t
    return t if (b & ABS_MASK) <= INF else x


@njit(**_options)
def tanh32(x32):
    x = np.float64(x32)
    b = _bits(x)
    a = min(_from_bits(b & ABS_MASK), TANH_CLAMP)
    t = _tanh_abs(a, _expm1_poly32)
    t = -t if b < 0 else t
    return np.float32(t if (b & ABS_MASK) <= INF else x)


sigmoid64 = njit(**_options)(_sigmoid64)
sigmoid32 = njit(**_options)(_sigmoid32)


@njit(**_options)
def relu64(x):
    return 0.0 if x < 0.0 else x                                # NaN stays NaN, as np.maximum


@njit(**_options)
def relu32(x):
    return np.float32(0.0) if x < 0.0 else x


@njit(**_options)
def select(m, a, b):
    return a if m else b


@njit(**_options)
def sign(x):
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else x)          # 0 and NaN as np.sign


@njit(**_options)
def log(x):
    return np.log(x)


@njit(**_options)
def sqrt(x):
    return np.sqrt(x)
