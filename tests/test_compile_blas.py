"""The compiled loops' matrix products (tinygrad_rnn/compile/blas.py): numpy's bundled CBLAS
called from Numba, and the np.dot fallback, both against numpy."""

import glob
import os
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_rnn.compile import blas

dims = st.integers(1, 40)


@settings(max_examples=40, deadline=None)
@given(m=dims, k=dims, n=dims, dtype=st.sampled_from([np.float32, np.float64]),
       data=st.data())
def test_gemm_and_gemm_acc_equal_numpy(m, k, n, dtype, data):
    floats = st.floats(-4, 4, width=32)
    a = data.draw(hnp.arrays(dtype, (m, k), elements=floats))
    b = data.draw(hnp.arrays(dtype, (k, n), elements=floats))
    c0 = data.draw(hnp.arrays(dtype, (m, n), elements=floats))
    gemm, gemm_acc = ((blas.gemm32, blas.gemm_acc32) if dtype == np.float32
                      else (blas.gemm64, blas.gemm_acc64))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    scale = 1 + np.abs(a) @ np.abs(b)
    out = np.full((m, n), np.nan, dtype)          # every element must be written
    gemm(a, b, out)
    np.testing.assert_allclose(out / scale, (a @ b) / scale, rtol=0, atol=tol)
    acc = c0.copy()
    gemm_acc(a, b, acc)                           # adds: c0 must still count
    np.testing.assert_allclose(acc / (scale + np.abs(c0)), (c0 + a @ b) / (scale + np.abs(c0)),
                               rtol=0, atol=tol)


def test_gemm_writes_into_a_row_of_a_larger_array():
    # the loops pass views such as S0[cur] and A2[0]: contiguous rows of (T, B, n) arrays
    rng = np.random.default_rng(0)
    S = rng.standard_normal((3, 4, 5)).astype(np.float32)
    W = rng.standard_normal((5, 6)).astype(np.float32)
    out = np.zeros((3, 4, 6), np.float32)
    blas.gemm32(S[1], W, out[2])
    np.testing.assert_allclose(out[2], S[1] @ W, rtol=1e-5)
    assert not out[:2].any()                       # nothing else touched


def test_numpys_bundled_openblas_is_used_when_numpy_has_one():
    site = os.path.dirname(os.path.dirname(np.__file__))
    bundled = glob.glob(os.path.join(site, "numpy.libs", "libscipy_openblas64_*"))
    if not bundled:
        pytest.skip("this numpy bundles no scipy-openblas64 (a conda or Accelerate build)")
    assert blas.KIND == "numpy-cblas"


@pytest.mark.parametrize("kind", ["numpy.dot", "loops"])
def test_each_fallback_gives_the_same_compiled_gradients(tmp_path, kind):
    # The fallbacks are what a numpy without bundled OpenBLAS runs; forced in fresh processes.
    if kind == "numpy.dot":
        pytest.importorskip("scipy.linalg.cython_blas", reason="Numba's np.dot needs SciPy")
    code = """
import numpy as np, tinygrad_rnn as tg
from tinygrad_rnn.compile import blas
tg.manual_seed(3)
cell = tg.LSTMCell(3, 5)
xs = tg.Tensor(np.random.default_rng(1).standard_normal((6, 2, 3)), requires_grad=True)
ys, _ = tg.Unroll(tg.compile(cell))(xs)
ys.backward(np.random.default_rng(2).standard_normal((6, 2, 5)))
np.savez(OUT, kind=blas.KIND, ys=ys.data, dx=xs.grad, *[p.grad for p in cell.parameters()])
"""
    results = {}
    for which in (kind, "default"):
        env = dict(os.environ, TINYGRAD_RNN_CACHE_DIR=str(tmp_path / "cache"))
        env.pop("TINYGRAD_RNN_BLAS", None)
        if which != "default":
            env["TINYGRAD_RNN_BLAS"] = which
        out = tmp_path / f"{which}.npz"
        subprocess.run([sys.executable, "-c", code.replace("OUT", repr(str(out)))],
                       check=True, env=env, timeout=300)
        results[which] = np.load(out)
    assert str(results[kind]["kind"]) == kind
    for name in results["default"].files:
        if name != "kind":
            np.testing.assert_allclose(results[kind][name], results["default"][name],
                                       rtol=1e-12, atol=1e-14, err_msg=name)


def test_an_unknown_blas_choice_is_refused():
    code = "import tinygrad_rnn.compile.blas"
    env = dict(os.environ, TINYGRAD_RNN_BLAS="mkl")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "TINYGRAD_RNN_BLAS='mkl': expected one of numpy-cblas, numpy.dot, loops" in result.stderr
