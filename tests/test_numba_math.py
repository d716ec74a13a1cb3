"""The compiled loops' own exp and tanh (`_numba_math`): ulp error against long double,
and the special values (NaN, infinities, signed zero, overflow, underflow)."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from tinygrad_rnn import _numba_math as m  # noqa: E402

_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"contract"})


@numba.njit(**_OPTIONS)
def _apply64(x, out, which):
    for i in range(x.size):
        out[i] = m.exp64(x[i]) if which == 0 else m.tanh64(x[i])


@numba.njit(**_OPTIONS)
def _apply32(x, out, which):
    for i in range(x.size):
        out[i] = m.exp32(x[i]) if which == 0 else m.tanh32(x[i])


def _run(fn, x, which):
    out = np.empty_like(x)
    (_apply32 if x.dtype == np.float32 else _apply64)(x, out, which)
    return out


def _ulps(got, exact, dtype):
    spacing = np.spacing(np.abs(exact.astype(dtype))).astype(np.longdouble)
    return np.max(np.abs(got.astype(np.longdouble) - exact) / spacing)


def _samples(rng, lo, hi):
    return np.concatenate([rng.uniform(lo, hi, 20000), rng.uniform(-1e-3, 1e-3, 2000),
                           10.0 ** rng.uniform(-300, 0, 2000) * rng.choice([-1, 1], 2000)])


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
                    reason="long double is no wider than double here")
@pytest.mark.parametrize("dtype, exp_ulps, tanh_ulps", [(np.float64, 2, 4), (np.float32, 1, 1)])
def test_ulp_error_against_long_double(dtype, exp_ulps, tanh_ulps):
    rng = np.random.default_rng(0)
    hi = 700.0 if dtype == np.float64 else 85.0
    x = _samples(rng, -hi, hi).astype(dtype)
    exact = np.exp(x.astype(np.longdouble))
    finite = (exact > np.finfo(dtype).tiny) & (exact < np.finfo(dtype).max)
    assert _ulps(_run(None, x, 0)[finite], exact[finite], dtype) <= exp_ulps
    t = _samples(rng, -30, 30).astype(dtype)
    assert _ulps(_run(None, t, 1), np.tanh(t.astype(np.longdouble)), dtype) <= tanh_ulps


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 1000.0, -1000.0, 0.0, -0.0], dtype=dtype)
    e = _run(None, x, 0)
    np.testing.assert_array_equal(e, [np.nan, np.inf, 0.0, np.inf, 0.0, 1.0, 1.0])
    t = _run(None, x, 1)
    np.testing.assert_array_equal(t, [np.nan, 1.0, -1.0, 1.0, -1.0, 0.0, -0.0])
    assert np.signbit(t[-1]) and not np.signbit(t[-2])
    tiny = np.array([1e-30, -1e-30], dtype=dtype)
    np.testing.assert_array_equal(_run(None, tiny, 1), tiny)     # tanh(x) = x, exactly
