"""The checkers themselves: gradcheck and check_vjp pass right gradients, catch wrong ones,
and say where; the hypothesis strategies draw what they promise."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.autograd import Function
from tinygrad_rnn.testing import check_vjp, gradcheck
from tinygrad_rnn.testing import strategies as S


class Cube(Function):
    """x**3 with a configurable derivative, to plant bugs in."""

    factor = 3.0

    def forward(self, a):
        self.a = a
        return a ** 3

    def backward(self, g):
        return (g * self.factor * self.a ** 2,)


class WrongCube(Cube):
    factor = 3.03      # a 1% error


class Product(Function):
    """a * b whose backward can drop the b-term of the product rule (for a shared input)."""

    drop = False

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return (g * self.b, None if self.drop else g * self.a)


class DroppedTerm(Product):
    drop = True


def x(shape=(2, 3), seed=0, dtype=np.float64):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


def test_gradcheck_passes_a_right_gradient():
    assert gradcheck(lambda a: Cube.apply(a), x()) is True
    u_JTv, Ju_v = check_vjp(lambda a: Cube.apply(a), x())
    assert u_JTv == pytest.approx(Ju_v, rel=1e-6) and abs(u_JTv) > 1e-3


def test_gradcheck_catches_a_one_percent_error_and_names_the_input():
    with pytest.raises(AssertionError, match=r"gradient of input 0 \(shape \(2, 3\)\) is wrong at index"):
        gradcheck(lambda a: WrongCube.apply(a), x())
    with pytest.raises(AssertionError, match=r"check_vjp: <u, J\^T v>"):
        check_vjp(lambda a: WrongCube.apply(a), x())


def test_gradcheck_catches_a_dropped_term():
    a = x()
    # a used on both sides: the dropped term is the one product-rule half
    with pytest.raises(AssertionError, match="input 0"):
        gradcheck(lambda a: DroppedTerm.apply(a, a), a)
    with pytest.raises(AssertionError):
        check_vjp(lambda a: DroppedTerm.apply(a, a), a)
    assert gradcheck(lambda a: Product.apply(a, a), a)


def test_gradcheck_second_input_and_names():
    a, b = x(seed=1), x(seed=2)
    b.name = "W_hh"
    with pytest.raises(AssertionError, match="input 'W_hh'"):
        gradcheck(lambda a, b: a * WrongCube.apply(b), a, b)
    assert gradcheck(lambda a, b: a * Cube.apply(b), a, b)


def test_gradcheck_checks_closure_params_and_restores_them():
    W = Tensor(np.random.default_rng(3).standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    W.name = "W"
    before = W.data.copy()
    assert gradcheck(lambda v: (v @ W).tanh(), x(), params=[W])
    v = x()
    v.requires_grad = False      # only the parameter is checked (and wrong)
    with pytest.raises(AssertionError, match="parameter 'W'"):
        gradcheck(lambda v: WrongCube.apply(v @ W), v, params=[W])
    # back to float32, same values, no leftover gradient
    assert W.dtype == np.float32 and W.grad is None
    np.testing.assert_array_equal(W.data, before)
    check_vjp(lambda v: (v @ W).sigmoid(), x(), params=[W])
    assert W.dtype == np.float32 and W.grad is None


def test_gradcheck_works_in_float64_and_leaves_float32_inputs_alone():
    a = x(dtype=np.float32)
    before = a.data.copy()
    dtypes = []

    def fn(v):
        dtypes.append(v.dtype)
        return v.tanh()

    assert gradcheck(fn, a)
    assert set(dtypes) == {np.dtype(np.float64)}
    assert a.dtype == np.float32 and a.grad is None
    np.testing.assert_array_equal(a.data, before)


def test_gradcheck_nested_outputs_and_non_tensor_args():
    def fn(a, k):
        h = a.tanh() * k
        return h, (h.sum(), None, [a * 2])

    assert gradcheck(fn, x(), 3.0)
    check_vjp(fn, x(), 3.0)
    with pytest.raises(AssertionError):
        gradcheck(lambda a, k: (a * k, WrongCube.apply(a)), x(), 2.0)


def test_gradcheck_detects_a_gradient_that_does_not_flow():
    # a detached path: the analytic gradient is 0, the numeric one is not
    with pytest.raises(AssertionError, match="analytic 0 vs numeric"):
        gradcheck(lambda a: a.detach() * 2 + 0 * a, x())


def test_gradcheck_needs_something_to_check():
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck(lambda a: a * 2, Tensor(np.ones(3)))
    with pytest.raises(ValueError, match="nothing to check"):
        check_vjp(lambda a: a * 2, Tensor(np.ones(3)))
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda a: "nope", x())


# --- strategies ---------------------------------------------------------------------------------

@given(st.data(), S.float_dtypes)
def test_elements_respect_bounds(data, dtype):
    v = data.draw(S.arrays((5,), dtype, low=-1.5, high=0.7, away_from_zero=0.1))
    assert v.dtype == dtype and np.all((v >= -1.5) & (v <= 0.7) & (np.abs(v.astype(np.float64)) >= 0.1))
    p = data.draw(S.positive_arrays((3,), dtype))
    assert np.all(p > 0)
    f = data.draw(S.elements(0.1, 0.3, dtype=dtype))     # 0.1 is not a float32: rounded inward
    assert 0.1 <= float(f) <= 0.3


@given(S.broadcastable_tensors(3, max_dims=3))
def test_broadcastable_tensors_broadcast(ts):
    assert len(ts) == 3 and all(t.requires_grad for t in ts)
    np.broadcast_shapes(*(t.shape for t in ts))


@given(S.distinct_tensors())
def test_distinct_tensors_are_spaced(t):
    v = np.sort(t.data.ravel())
    assert np.all(np.diff(v) >= 0.25 - 0.25 / 4)


@given(st.data(), st.integers(0, 4))
def test_axes_and_permutations_are_valid(data, ndim):
    a = np.zeros((2,) * ndim)
    np.sum(a, axis=data.draw(S.axes(ndim)))     # raises if invalid
    perm = data.draw(S.permutations_of_axes(ndim))
    assert sorted(p % ndim for p in perm) == list(range(ndim))


@given(st.data())
def test_index_strategies_are_valid(data):
    shape = data.draw(S.shapes(min_dims=1))
    a = np.zeros(shape)
    a[data.draw(S.basic_indices(shape))]
    a[data.draw(S.integer_index_arrays(shape))]
    mask = data.draw(S.boolean_masks(shape))
    assert mask.dtype == bool and shape[:mask.ndim] == mask.shape
    a[mask]


@given(S.matmul_shapes())
def test_matmul_shapes_are_valid(shapes):
    sa, sb = shapes
    np.matmul(np.zeros(sa), np.zeros(sb))
    assert tg.Tensor(np.zeros(sa)) @ tg.Tensor(np.zeros(sb)) is not None


def test_check_cell_without_hypothesis_says_what_to_install(monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_hypothesis(name, *args, **kwargs):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ModuleNotFoundError("No module named 'hypothesis'", name="hypothesis")
        return real_import(name, *args, **kwargs)

    import tinygrad_rnn.testing as testing

    for sub in ("cells", "strategies"):     # forget the submodules, as in a fresh process
        monkeypatch.delitem(sys.modules, f"tinygrad_rnn.testing.{sub}", raising=False)
        monkeypatch.delattr(testing, sub, raising=False)
    monkeypatch.setattr(builtins, "__import__", no_hypothesis)
    for name in ("check_cell", "strategies"):
        with pytest.raises(ImportError, match=r"needs hypothesis: pip install 'tinygrad-rnn\[testing\]'"):
            getattr(testing, name)
