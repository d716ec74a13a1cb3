"""tg.linear_scan: h_t = a_t * h_{t-1} + b_t against a hand loop, finite differences (float64)
and PyTorch; every kernel variant against the numpy reference; the TINYGRAD_RNN_NUMBA=0
switch; a planted wrong derivative; bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import ShapeError, Tensor, scan_kernels
from tinygrad_rnn.testing import check_vjp, gradcheck
from tinygrad_rnn.testing import strategies as S

ROOT = Path(__file__).resolve().parent.parent
_RULE = scan_kernels.scan_backward_reference       # before any test patches it


def hand_loop(a, b, h0=None, reverse=False):
    """The recurrence written out, one step at a time, with numpy broadcasting."""
    shape = np.broadcast_shapes(a.shape, b.shape)
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    h = np.zeros(shape[1:]) if h0 is None else h0
    out = np.empty(shape, dtype=np.result_type(a, b, h))
    steps = range(shape[0] - 1, -1, -1) if reverse else range(shape[0])
    for t in steps:
        h = out[t] = a[t] * h + b[t]
    return out


def broadcast_variants(T, B, H):
    """The shapes a may take against b (T, B, H)."""
    return [(T, B, H), (T, 1, H), (T, B, 1), (1, B, H), (T, 1, 1), (1, 1, 1)]


@st.composite
def scan_problems(draw, dtype=np.float64):
    T, B, H = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    a_shape = draw(st.sampled_from(broadcast_variants(T, B, H)))
    b_shape = draw(st.sampled_from([(T, B, H), (1, B, H), (T, 1, H)]))
    if np.broadcast_shapes(a_shape, b_shape) != (T, B, H):
        b_shape = (T, B, H)
    # |a| < 1.3 keeps the states moderate over five steps.
    a = Tensor(draw(S.arrays(a_shape, dtype, -1.3, 1.3)), requires_grad=True, name="a")
    b = Tensor(draw(S.arrays(b_shape, dtype)), requires_grad=True, name="b")
    h0 = (Tensor(draw(S.arrays((B, H), dtype)), requires_grad=True, name="h0")
          if draw(st.booleans()) else None)
    return a, b, h0, draw(st.booleans())


def scan_fn(reverse, with_h0):
    def fn(a, b, *rest):
        return tg.linear_scan(a, b, rest[0] if with_h0 else None, reverse=reverse)
    return fn


@settings(max_examples=60)
@given(scan_problems())
def test_linear_scan_equals_the_hand_loop_and_finite_differences(problem):
    a, b, h0, reverse = problem
    out = tg.linear_scan(a, b, h0, reverse=reverse)
    expected = hand_loop(a.data, b.data, None if h0 is None else h0.data, reverse)
    assert out.shape == expected.shape and out.dtype == np.float64
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    inputs = (a, b) if h0 is None else (a, b, h0)
    fn = scan_fn(reverse, h0 is not None)
    assert gradcheck(fn, *inputs)
    check_vjp(fn, *inputs)


@settings(max_examples=20)
@given(scan_problems(dtype=np.float32))
def test_float32_stays_float32_and_agrees_with_float64(problem):
    a, b, h0, reverse = problem
    out = tg.linear_scan(a, b, h0, reverse=reverse)
    assert out.dtype == np.float32
    expected = hand_loop(*(x.data.astype(np.float64) for x in (a, b)),
                         None if h0 is None else h0.data.astype(np.float64), reverse)
    np.testing.assert_allclose(out.data, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    for x in (a, b) if h0 is None else (a, b, h0):
        assert x.grad.dtype == np.float32 and x.grad.shape == x.shape


def test_mixed_dtypes_promote_like_numpy():
    a = Tensor(np.full((3, 2, 2), 0.5, np.float32))
    b = Tensor(np.ones((3, 2, 2)))
    assert tg.linear_scan(a, b).dtype == np.float64
    assert tg.linear_scan(a, a).dtype == np.float32


def test_gradients_match_torch_autograd_through_a_loop():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    a_np = rng.uniform(-1, 1, (7, 3, 1))
    b_np, h0_np = rng.standard_normal((7, 3, 4)), rng.standard_normal((3, 4))
    g_np = rng.standard_normal((7, 3, 4))
    for reverse in (False, True):
        a, b, h0 = (Tensor(x.copy(), requires_grad=True) for x in (a_np, b_np, h0_np))
        out = tg.linear_scan(a, b, h0, reverse=reverse)
        out.backward(g_np)
        ta, tb, th = (torch.tensor(x, requires_grad=True) for x in (a_np, b_np, h0_np))
        h, states = th, [None] * 7
        for t in (range(6, -1, -1) if reverse else range(7)):
            h = states[t] = ta[t] * h + tb[t]
        torch_out = torch.stack(states)
        torch_out.backward(torch.tensor(g_np))
        np.testing.assert_allclose(out.data, torch_out.detach().numpy(), rtol=1e-12)
        for ours, theirs in ((a, ta), (b, tb), (h0, th)):
            np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_a_long_sequence_is_one_node_and_exact():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.9, 1.0, (10_000, 2, 3)), rng.standard_normal((10_000, 2, 3))
    a_t = Tensor(a, requires_grad=True)
    out = tg.linear_scan(a_t, Tensor(b))
    assert out._ctx.parents[0] is a_t                     # one tape node for all 10,000 steps
    np.testing.assert_allclose(out.data, hand_loop(a, b), rtol=1e-10, atol=1e-10)
    out[-1].sum().backward()
    assert np.isfinite(a_t.grad).all()


# --- the kernels ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["serial", "blocked", "chunked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,N", [(1, 1), (2, 5), (7, 3), (33, 70), (100, 130), (257, 17)])
def test_every_kernel_variant_equals_the_numpy_reference(variant, dtype, T, N):
    rng = np.random.default_rng(T * 1000 + N)
    a = rng.uniform(-1.1, 1.1, (T, N)).astype(dtype)
    b = rng.standard_normal((T, N)).astype(dtype)
    h0 = rng.standard_normal(N).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for reverse in (False, True):
        ref = scan_kernels.scan_numpy(a, b, h0, reverse)
        got = scan_kernels.scan(a, b, h0, reverse, variant=variant)
        assert got.dtype == dtype and got.shape == (T, N)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("threads,T,N,expected", [
    (1, 5000, 5000, "serial"),        # one thread: nothing to share
    (2, 5000, 5000, "serial"),        # two: measured, the parallel loops never won
    (8, 100, 256, "serial"),          # small: waking threads costs more than the scan
    (8, 1000, 4096, "blocked"),       # wide: one block of columns per thread
    (8, 200_000, 16, "chunked"),      # narrow: split time instead
])
def test_the_variant_chooser(monkeypatch, threads, T, N, expected):
    monkeypatch.setattr(scan_kernels, "_threads", lambda: threads)
    assert scan_kernels.choose_variant(T, N) == expected


def test_the_op_runs_whichever_variant_is_chosen(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (40, 2, 3)), rng.standard_normal((40, 2, 3))
    expected = hand_loop(a, b)
    for variant in scan_kernels.VARIANTS:
        monkeypatch.setattr(scan_kernels, "choose_variant", lambda T, N, v=variant: v)
        np.testing.assert_allclose(tg.linear_scan(Tensor(a), Tensor(b)).data, expected, rtol=1e-12)


def test_unknown_variant_is_named():
    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match="linear_scan: unknown variant 'fast'"):
        scan_kernels.scan(x, x, x[0], False, variant="fast")


_SWITCH = r"""
import json, sys
import numpy as np
import tinygrad_rnn as tg
out = {"numba_imported_at_import": "numba" in sys.modules}
for dtype in ("float32", "float64"):
    rng = np.random.default_rng(0)
    a = tg.Tensor(rng.uniform(-1, 1, (50, 3, 1)).astype(dtype), requires_grad=True)
    b = tg.Tensor(rng.standard_normal((50, 3, 4)).astype(dtype), requires_grad=True)
    for reverse in (False, True):
        h = tg.linear_scan(a, b, reverse=reverse)
        (h * h).sum().backward()
        out[f"{dtype}-{reverse}"] = [h.data.tolist(), a.grad.tolist(), b.grad.tolist()]
        a.grad = b.grad = None
out["numba_imported"] = "numba" in sys.modules
print(json.dumps(out))
"""


def _run_switch(value):
    env = dict(os.environ, TINYGRAD_RNN_NUMBA=value)
    done = subprocess.run([sys.executable, "-c", _SWITCH], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_numba_switch_off_gives_the_same_scan_values_and_gradients():
    off, on = _run_switch("0"), _run_switch("1")
    assert not off["numba_imported"] and on["numba_imported"]
    assert not on["numba_imported_at_import"]        # compiled on first use, not at import
    for key in ("float32-False", "float32-True", "float64-False", "float64-True"):
        tol = 1e-5 if key.startswith("float32") else 1e-12
        for x, y in zip(off[key], on[key]):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=tol, atol=tol)


# --- a planted wrong derivative is caught -------------------------------------------------------

def _without_the_carried_term(a, g, h, h0, reverse, dh=None, da=None):
    """The backward with ``dh_t = g_t``: ``+ a_{t+1} dh_{t+1}`` forgotten, so each step's
    gradient stops at that step (``a = 0`` in the rule)."""
    ref_dh, ref_da, ref_dh0 = _RULE(np.zeros_like(a), g, h, h0, reverse)
    if dh is None:                                     # called as the reference
        return ref_dh, ref_da, ref_dh0
    dh[...], da[...] = ref_dh, ref_da                  # called as the fused kernel
    return ref_dh0


@pytest.mark.parametrize("path", ["fused Numba kernel", "numpy rule"])
def test_dropping_the_carried_term_of_the_backward_scan_is_caught(monkeypatch, path):
    from tinygrad_rnn import _numba_scan
    rng = np.random.default_rng(2)
    a = Tensor(rng.uniform(0.3, 0.9, (4, 2, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal((4, 2, 3)), requires_grad=True)
    h0 = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    for reverse in (False, True):
        assert gradcheck(scan_fn(reverse, True), a, b, h0)
    if path == "fused Numba kernel":
        monkeypatch.setattr(_numba_scan, "scan_backward_serial", _without_the_carried_term)
    else:
        monkeypatch.setattr(scan_kernels, "NUMBA_ENABLED", False)
        monkeypatch.setattr(scan_kernels, "scan_backward_reference", _without_the_carried_term)
    for reverse in (False, True):
        with pytest.raises(AssertionError, match="gradcheck: gradient of input"):
            gradcheck(scan_fn(reverse, True), a, b, h0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,N", [(1, 1), (2, 5), (7, 3), (100, 130)])
def test_the_fused_backward_kernel_equals_the_rule(dtype, T, N):
    from tinygrad_rnn import _numba_scan
    rng = np.random.default_rng(T + N)
    a, g = rng.uniform(-1, 1, (T, N)).astype(dtype), rng.standard_normal((T, N)).astype(dtype)
    h, h0 = rng.standard_normal((T, N)).astype(dtype), rng.standard_normal(N).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for reverse in (False, True):
        dh, da = np.empty_like(g), np.empty_like(g)
        dh0 = _numba_scan.scan_backward_serial(a, g, h, h0, reverse, dh, da)
        for got, want in zip((dh, da, dh0), scan_kernels.scan_backward_reference(a, g, h, h0, reverse)):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_a_wrong_kernel_is_caught_by_the_variant_check(monkeypatch):
    from tinygrad_rnn import _numba_scan
    real = _numba_scan.scan_serial

    def off_by_one(a, b, h0, reverse, out):
        real(a, b, h0, reverse, out)
        out[-1] += 1e-3
        return out

    monkeypatch.setattr(_numba_scan, "scan_serial", off_by_one)
    with pytest.raises(AssertionError):
        test_every_kernel_variant_equals_the_numpy_reference("serial", np.float64, 7, 3)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("a_shape,b_shape,h0_shape,match", [
    ((5, 2, 3), (4, 2, 3), None, r"linear_scan: a \(5, 2, 3\) and b \(4, 2, 3\) disagree in T"),
    ((5, 2, 3), (5, 3, 3), None, r"linear_scan: a \(5, 2, 3\) and b \(5, 3, 3\) disagree in B"),
    ((5, 2, 3), (5, 2, 4), None, r"disagree in H \(axis 2: 3 vs 4\)"),
    ((5, 3), (5, 2, 3), None, r"linear_scan: a must have rank 3 \(T, B, H\), got shape \(5, 3\)"),
    ((5, 2, 3), (2, 3), None, r"linear_scan: b must have rank 3 \(T, B, H\), got shape \(2, 3\)"),
    ((5, 2, 3), (5, 2, 3), (3, 2), r"linear_scan: h0 must have shape \(B, H\) = \(2, 3\) for a "
                                   r"\(5, 2, 3\) and b \(5, 2, 3\), got \(3, 2\)"),
    ((5, 2, 3), (5, 2, 3), (3,), r"h0 must have shape \(B, H\) = \(2, 3\)"),
])
def test_shape_errors_name_the_function_and_the_shapes(a_shape, b_shape, h0_shape, match):
    h0 = None if h0_shape is None else Tensor(np.zeros(h0_shape))
    with pytest.raises(ShapeError, match=match):
        tg.linear_scan(Tensor(np.zeros(a_shape)), Tensor(np.zeros(b_shape)), h0)


@pytest.mark.parametrize("which", ["a", "b", "h0"])
def test_non_float_inputs_are_a_type_error(which):
    arrays = {"a": np.zeros((3, 2, 2)), "b": np.zeros((3, 2, 2)), "h0": np.zeros((2, 2))}
    arrays[which] = arrays[which].astype(np.int64)
    with pytest.raises(TypeError, match=f"linear_scan: {which} must be a floating-point tensor "
                                        r"\(float32 or float64\), got dtype int64"):
        tg.linear_scan(Tensor(arrays["a"]), Tensor(arrays["b"]), Tensor(arrays["h0"]))


def test_non_tensor_inputs_are_named():
    with pytest.raises(TypeError, match="linear_scan: expected Tensors, got list"):
        tg.linear_scan([[[1.0]]], Tensor(np.zeros((1, 1, 1))))
