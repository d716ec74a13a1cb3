"""The Numba kernels against their numpy references, and the TINYGRAD_RNN_NUMBA=0 switch."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_rnn import kernels
from tinygrad_rnn.kernels import numba_kernels, numpy_kernels
from tinygrad_rnn.testing import strategies as S

ROOT = Path(__file__).resolve().parents[1]


def _public(cls):
    return sorted(n for n in vars(cls) if not n.startswith("_"))


KERNELS = _public(numpy_kernels)


def test_every_kernel_has_both_versions_and_a_dispatcher():
    assert KERNELS == _public(numba_kernels) == sorted(kernels._KERNEL_NAMES)
    assert len(KERNELS) >= 6
    for name in KERNELS:
        assert callable(getattr(kernels, name))


# Each argument's domain: the kernels see op outputs (y = tanh, s = sigmoid, y = sqrt > 0),
# inputs (x of relu, including exact zeros) and divisors (b away from zero).
def _domain(name, position, dtype):
    # No subnormals: Numba may keep an intermediate in float64 where numpy rounds it to a
    # float32 subnormal, a difference of representation, not of the kernel's arithmetic.
    def floats(lo, hi):
        return S.elements(lo, hi, dtype=dtype, allow_subnormal=False)

    if name == "sigmoid":
        return floats(-60, 60)                 # both tails: relative precision matters there
    if name == "tanh_backward" and position == 1:
        return floats(-1, 1)
    if name == "sigmoid_backward" and position == 1:
        return floats(0, 1)
    if name == "relu_backward" and position == 1:
        return st.one_of(st.just(0.0), st.just(-0.0), floats(-1, 1))
    if name == "sqrt_backward" and position == 1:
        return floats(0.05, 5)
    if name == "div_rhs_backward" and position == 2:
        return S.elements(-4, 4, away_from_zero=0.25, dtype=dtype, allow_subnormal=False)
    return floats(-10, 10)


sizes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),     # tiny, incl. empty/0-d
    st.integers(60, 70).map(lambda n: (n,)),                               # around 64
    st.integers(65, 400).map(lambda n: (n // 8, 8)),                       # > 64
)


def _args(draw, name, dtype, shape):
    arity = len(inspect.signature(getattr(numpy_kernels, name)).parameters)
    return [draw(hnp.arrays(dtype, shape, elements=_domain(name, i, dtype))) for i in range(arity)]


def _assert_same(name, ours, ref, dtype):
    assert ours.dtype == ref.dtype == dtype, f"{name}: {ours.dtype} vs {ref.dtype}"
    assert ours.shape == ref.shape
    # Same arithmetic, but Numba may keep an intermediate in float64 (a float64 literal such as
    # 1.0) or use another libm exp: a few units in the last place, never more.
    np.testing.assert_array_max_ulp(ours, ref, maxulp=4, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", KERNELS)
@given(data=st.data())
def test_numba_kernel_matches_numpy(name, dtype, data):
    shape = data.draw(sizes)
    args = _args(data.draw, name, dtype, shape)
    ref = getattr(numpy_kernels, name)(*args)
    _assert_same(name, getattr(numba_kernels, name)(*args), ref, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 16, 64, 65, 1000])
@pytest.mark.parametrize("name", KERNELS)
def test_numba_kernel_matches_numpy_fixed_sizes(name, n, dtype):
    rng = np.random.default_rng(n)
    arity = len(inspect.signature(getattr(numpy_kernels, name)).parameters)
    args = [rng.uniform(0.25, 3.0, n).astype(dtype) * rng.choice([-1, 1], n).astype(dtype)
            for _ in range(arity)]
    if name in ("sqrt_backward", "sigmoid_backward"):
        args[1] = np.abs(args[1])
    # non-contiguous views too: every other element of a bigger array
    strided = [np.repeat(a, 2)[::2] for a in args]
    ref = getattr(numpy_kernels, name)(*args)
    for a in (args, strided):
        _assert_same(name, getattr(numba_kernels, name)(*a), ref, np.dtype(dtype))
        _assert_same(name, getattr(kernels, name)(*a), ref, np.dtype(dtype))


def test_div_rhs_backward_broadcasts_b():
    rng = np.random.default_rng(0)
    g, b = rng.standard_normal((4, 3)), rng.uniform(0.5, 2, (1, 3))
    out = rng.standard_normal((4, 3)) / b
    np.testing.assert_array_max_ulp(numba_kernels.div_rhs_backward(g, out, b),
                                    numpy_kernels.div_rhs_backward(g, out, b), maxulp=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_keeps_relative_precision_in_both_tails(dtype):
    """sigmoid(-40) is 4.2e-18, not 0: both paths must agree with the exact value to a few
    ulp wherever it is a normal number, or log(sigmoid(x)) turns -inf. The Numba pass
    computes its own exp (range reduction + polynomial), so check it densely, across every
    range-reduction interval up to where the result leaves the normal range."""
    limit = 87 if dtype == np.float32 else 708
    x = np.concatenate([np.linspace(-limit, limit, 200_001), np.linspace(-1, 1, 20_001),
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(dtype)
    exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))
    assert exact.min() > np.finfo(dtype).tiny
    for ours in (numpy_kernels.sigmoid(x), numba_kernels.sigmoid(x), kernels.sigmoid(x)):
        assert ours.dtype == dtype
        np.testing.assert_array_max_ulp(ours, exact.astype(dtype), maxulp=4, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_sigmoid_saturates_quietly_and_keeps_nan(impl, dtype):
    sigmoid = {"numpy": numpy_kernels, "numba": numba_kernels}[impl].sigmoid
    special = np.array([-1e4, -1000.0, -800.0, 800.0, 1000.0, 1e4, -np.inf, np.inf,
                        np.finfo(dtype).min, np.finfo(dtype).max], dtype)
    with np.errstate(all="raise", under="ignore"):      # no overflow or invalid-value warning
        big = sigmoid(special)
        nan = sigmoid(np.array([np.nan, -np.nan, 1.0, np.nan], dtype))
    np.testing.assert_array_equal(big, [0, 0, 0, 1, 1, 1, 0, 1, 0, 1])
    assert np.isnan(nan[[0, 1, 3]]).all() and nan[2] == numpy_kernels.sigmoid(np.array(1.0, dtype))


def test_dispatch_falls_back_to_numpy_for_mixed_or_other_dtypes():
    g64, y32 = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 5).astype(np.float32)
    out = kernels.tanh_backward(g64, y32)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, numpy_kernels.tanh_backward(g64, y32))
    x16 = np.linspace(-3, 3, 5).astype(np.float16)
    assert kernels.sigmoid(x16).dtype == np.float16


# --- the environment switch -------------------------------------------------------------------

_GRAPH = r"""
import json, sys
import numpy as np
import tinygrad_rnn as tg
from tinygrad_rnn import kernels
results = {"enabled": kernels.NUMBA_ENABLED,
           "numpy_bound": kernels.tanh_backward is kernels.numpy_kernels.tanh_backward}
for dtype in ("float32", "float64"):
    for n in (3, 300):                # 15 and 1,500 elements
        rng = np.random.default_rng(n)
        x = tg.Tensor(rng.standard_normal((n, 5)).astype(dtype), requires_grad=True)
        w = tg.Tensor(rng.standard_normal((5, 9)).astype(dtype), requires_grad=True)
        h = (x @ w).tanh() * x.sigmoid().sum(axis=1, keepdims=True) + (x @ w).relu()
        loss = (h.abs() + 1).sqrt() / (x.sigmoid().sum() + 1)
        loss.sum().backward()
        key = f"{dtype}-{n}"
        results[key] = [loss.data.tolist(), x.grad.tolist(), w.grad.tolist(), str(x.grad.dtype)]
results["numba_imported"] = "numba" in sys.modules
print(json.dumps(results))
"""


def _run(env_value):
    env = dict(os.environ, TINYGRAD_RNN_NUMBA=env_value)
    return subprocess.Popen([sys.executable, "-c", _GRAPH], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_numba_switch_off_gives_the_same_values_and_gradients():
    off, on = _run("0"), _run("1")
    off, on = _result(off), _result(on)
    assert off["enabled"] is False and off["numpy_bound"] is True
    assert off["numba_imported"] is False        # the numpy path never even imports numba
    assert on["enabled"] is True and on["numpy_bound"] is False and on["numba_imported"] is True
    for key in ("float32-3", "float32-300", "float64-3", "float64-300"):
        rtol = 1e-5 if key.startswith("float32") else 1e-13
        assert off[key][3] == on[key][3] == key.split("-")[0]
        for a, b in zip(off[key][:3], on[key][:3]):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=rtol)


def test_numba_switch_spellings():
    code = (
        "import importlib, os\n"
        "from tinygrad_rnn import kernels\n"
        "out = {}\n"
        "for v in ['0', 'false', 'OFF', ' no ', '1', 'yes', '']:\n"
        "    os.environ['TINYGRAD_RNN_NUMBA'] = v\n"
        "    out[v] = importlib.reload(kernels).NUMBA_ENABLED\n"
        "import json; print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"0": False, "false": False, "OFF": False, " no ": False,
                                "1": True, "yes": True, "": True}
