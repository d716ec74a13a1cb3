"""Tensor construction, dtypes (float32 preserved end to end), operand coercion and errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.testing import strategies as S

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
MASK = np.array([True, False, True, True])

# name -> (fn, shapes of its tensor inputs, positive inputs?)
OPS = {
    "add": (lambda a, b: a + b, [(3, 4), (4,)]),
    "sub": (lambda a, b: a - b, [(3, 1), (3, 4)]),
    "mul": (lambda a, b: a * b, [(3, 4), (1, 4)]),
    "div": (lambda a, b: a / b, [(3, 4), (3, 4)]),
    "pow_tensor_tensor": (lambda a, b: a ** b, [(3, 4), (4,)]),
    "pow_tensor_scalar": (lambda a: a ** 1.5, [(3, 4)]),
    "pow_scalar_tensor": (lambda a: 2.5 ** a, [(3, 4)]),
    "neg": (lambda a: -a, [(3, 4)]),
    "matmul_2d": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "matmul_vec": (lambda a, b: a @ b, [(4,), (4,)]),
    "matmul_batched": (lambda a, b: a @ b, [(2, 3, 4), (4, 2)]),
    "matmul_broadcast": (lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
    "tanh": (lambda a: a.tanh(), [(3, 4)]),
    "sigmoid_small": (lambda a: a.sigmoid(), [(3, 4)]),
    "sigmoid_large": (lambda a: a.sigmoid(), [(40, 40)]),
    "relu": (lambda a: a.relu(), [(3, 4)]),
    "exp": (lambda a: a.exp(), [(3, 4)]),
    "log": (lambda a: a.log(), [(3, 4)]),
    "sqrt": (lambda a: a.sqrt(), [(3, 4)]),
    "abs": (lambda a: a.abs(), [(3, 4)]),
    "sum": (lambda a: a.sum(axis=0), [(3, 4)]),
    "mean": (lambda a: a.mean(axis=(0, 1), keepdims=True), [(3, 4)]),
    "max": (lambda a: a.max(axis=-1), [(3, 4)]),
    "max_all": (lambda a: a.max(), [(3, 4)]),
    "reshape": (lambda a: a.reshape(4, 3), [(3, 4)]),
    "transpose": (lambda a: a.transpose(1, 0), [(3, 4)]),
    "T": (lambda a: a.T, [(3, 4)]),
    "getitem_basic": (lambda a: a[1:, ::-2], [(3, 4)]),
    "getitem_array": (lambda a: a[np.array([0, 2, 0])], [(3, 4)]),
    "getitem_mask": (lambda a: a[:, MASK], [(3, 4)]),
    "cat": (lambda a, b: tg.cat([a, b], axis=1), [(3, 4), (3, 2)]),
    "stack": (lambda a, b: tg.stack([a, b], axis=1), [(3, 4), (3, 4)]),
    "chunk": (lambda a: a.chunk(2)[1], [(3, 4)]),
    "split": (lambda a: a.split([1, 3])[1], [(3, 4)]),
    "where": (lambda a, b: tg.where(MASK, a, b), [(3, 4), (3, 4)]),
    "where_scalar": (lambda a: tg.where(MASK, a, 0.5), [(3, 4)]),
    "softmax": (lambda a: a.softmax(axis=0), [(3, 4)]),
    "log_softmax": (lambda a: a.log_softmax(), [(3, 4)]),
}
if hasattr(tg, "linear"):
    OPS["linear"] = (lambda x, w, b: tg.linear(x, w, b), [(3, 4), (2, 4), (2,)])
if hasattr(Tensor, "unbind"):
    OPS["unbind"] = (lambda a: a.unbind(1)[2], [(3, 4)])


def _inputs(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    # positive values keep log/sqrt/pow defined for every op in the table
    return [Tensor(rng.uniform(0.5, 2.0, s).astype(dtype), requires_grad=True) for s in shapes]


@pytest.mark.parametrize("name", sorted(OPS))
def test_float32_in_float32_out_and_grads(name):
    fn, shapes = OPS[name]
    xs = _inputs(shapes, np.float32)
    seen = []
    for x in xs:
        # a hook on a leaf sees the op's own gradient before it is accumulated (and cast)
        x.register_hook(lambda g: seen.append(g.dtype))
    out = fn(*xs)
    assert out.dtype == F32, f"{name}: output {out.dtype}"
    out.backward(np.ones(out.shape, np.float32))
    for x in xs:
        assert x.grad.dtype == F32 and x.grad.shape == x.shape
    assert seen and all(dt == F32 for dt in seen), f"{name}: op gradients of dtype {seen}"
    # and the values agree with the same graph in float64
    xs64 = [Tensor(x.data.astype(np.float64), requires_grad=True) for x in xs]
    out64 = fn(*xs64)
    out64.backward(np.ones(out64.shape))
    np.testing.assert_allclose(out.data, out64.data, rtol=1e-5, atol=1e-6)
    for x, x64 in zip(xs, xs64):
        np.testing.assert_allclose(x.grad, x64.grad, rtol=1e-4, atol=1e-5)


MIXED = ["add", "sub", "mul", "div", "pow_tensor_tensor", "matmul_2d", "matmul_broadcast",
         "cat", "stack", "where"] + (["linear"] if "linear" in OPS else [])


@pytest.mark.parametrize("first", [np.float32, np.float64])
@pytest.mark.parametrize("name", MIXED)
def test_mixed_dtypes_follow_numpy_promotion(name, first):
    fn, shapes = OPS[name]
    dtypes = [first] + [np.float64 if first == np.float32 else np.float32] * (len(shapes) - 1)
    xs = [_inputs([s], dt, seed=i)[0] for i, (s, dt) in enumerate(zip(shapes, dtypes))]
    out = fn(*xs)
    assert out.dtype == np.result_type(*dtypes) == F64
    out.sum().backward()
    for x, dt in zip(xs, dtypes):
        assert x.grad.dtype == dt   # each leaf's gradient keeps the leaf's own dtype


@pytest.mark.parametrize("expr", [
    lambda x: x + 1.5, lambda x: 1.5 + x, lambda x: x - 1, lambda x: 1 - x, lambda x: x * 2,
    lambda x: 0.1 * x, lambda x: x / 3.0, lambda x: 3.0 / x, lambda x: x ** 2.0, lambda x: x ** 2,
    lambda x: 2.0 ** x, lambda x: tg.where(x > 1.0, x, 0.25), lambda x: tg.where(x > 1.0, 0.25, x),
    lambda x: (x * 1e-3).mean(), lambda x: x.softmax() * 0.5,
])
def test_python_scalar_never_upcasts_float32(expr):
    x = Tensor(np.array([0.5, 1.5, 2.0], np.float32), requires_grad=True)
    out = expr(x)
    assert out.dtype == F32
    out.sum().backward()
    assert x.grad.dtype == F32


def test_float64_tensor_with_python_scalar_stays_float64():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    assert (x * 0.5).dtype == F64 and (2 - x).dtype == F64 and (x / 3).dtype == F64


def test_default_dtype_float64_and_set_default_dtype():
    assert tg.get_default_dtype() == F64
    assert Tensor([1.0, 2.0]).dtype == F64 and Tensor(3.0).dtype == F64
    assert tg.zeros(2, 3).dtype == F64 and tg.ones((2,)).dtype == F64
    tg.set_default_dtype(np.float32)
    assert tg.get_default_dtype() == F32
    for t in (tg.zeros(2, 3), tg.ones(2), tg.full((2,), 1.5), tg.randn(2, 2, seed=0),
              Tensor([1.0, 2.0]), tg.tensor([[1.0]]), Tensor(3.0)):
        assert t.dtype == F32
    assert tg.zeros((2, 3)).shape == (2, 3)
    # explicit dtypes and numpy arrays win over the default
    assert tg.zeros(2, dtype=np.float64).dtype == F64
    assert Tensor(np.zeros(2)).dtype == F64
    assert Tensor([1.0], dtype=np.float64).dtype == F64
    # integer data stays integer
    assert Tensor([1, 2]).dtype.kind == "i"
    tg.set_default_dtype("float64")
    assert tg.get_default_dtype() == F64 and tg.ones(1).dtype == F64


@pytest.mark.parametrize("bad", [np.int32, np.float16, "complex64", bool])
def test_set_default_dtype_rejects_non_float32_64(bad):
    with pytest.raises(TypeError, match="set_default_dtype"):
        tg.set_default_dtype(bad)
    assert tg.get_default_dtype() == F64


def test_factories_values():
    np.testing.assert_array_equal(tg.zeros(2, 2).data, np.zeros((2, 2)))
    np.testing.assert_array_equal(tg.ones(3).data, np.ones(3))
    np.testing.assert_array_equal(tg.full(2, 7.0).data, [7.0, 7.0])
    z = tg.zeros_like(Tensor(np.ones((2, 3), np.float32)))
    assert z.shape == (2, 3) and z.dtype == F32 and not z.data.any()
    np.testing.assert_array_equal(tg.randn(3, seed=5).data, tg.randn(3, seed=5).data)
    assert not np.array_equal(tg.randn(3, seed=5).data, tg.randn(3, seed=6).data)
    assert tg.ones(2, requires_grad=True).requires_grad


# --- construction errors ----------------------------------------------------------------------

@pytest.mark.parametrize("data", [np.arange(3), [1, 2, 3], np.array([True, False]), 3])
def test_integer_tensor_cannot_require_grad(data):
    with pytest.raises(TypeError, match="requires_grad=True needs a floating dtype"):
        Tensor(data, requires_grad=True)


@pytest.mark.parametrize("data", ["abc", b"x", {"a": 1}, None, {1, 2}, ["a", "b"]])
def test_non_numeric_data_is_a_type_error(data):
    with pytest.raises(TypeError, match="Tensor"):
        Tensor(data)


# --- operand coercion -----------------------------------------------------------------------

BINOPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b,
    "lt": lambda a, b: a < b, "gt": lambda a, b: a > b,
}


@pytest.mark.parametrize("garbage", ["text", {"a": 1}, None, object(), {1}])
@pytest.mark.parametrize("name", sorted(BINOPS))
def test_garbage_operand_is_a_type_error_naming_the_op(name, garbage):
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(TypeError, match=rf"^{name}: expected"):
        BINOPS[name](x, garbage)
    if name not in ("lt", "gt"):
        with pytest.raises(TypeError, match=rf"^{name}: expected"):
            BINOPS[name](garbage, x)


def test_numpy_and_list_operands():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    a = np.array([3.0, 4.0])
    for out, expected in [(x + a, [4, 6]), (a + x, [4, 6]), (a - x, [2, 2]), (x * [2.0, 3.0], [2, 6]),
                          (a / x, [3, 2]), (np.float64(2.0) * x, [2, 4])]:
        assert isinstance(out, Tensor)
        np.testing.assert_allclose(out.data, expected)
    (a * x).sum().backward()
    np.testing.assert_allclose(x.grad, a)


def test_comparisons_give_plain_boolean_tensors():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    for mask, expected in [(x > 2, [0, 0, 1]), (x >= 2, [0, 1, 1]), (x < 2, [1, 0, 0]),
                           (x <= 2, [1, 1, 0]), (x > Tensor(np.array([0.0, 5.0, 1.0])), [1, 0, 1])]:
        assert mask.dtype == np.bool_ and not mask.requires_grad and mask.is_leaf
        np.testing.assert_array_equal(mask.data, np.array(expected, bool))


# --- small properties ---------------------------------------------------------------------------

def test_properties():
    x = Tensor(np.zeros((2, 3, 4), np.float32), requires_grad=True)
    assert x.shape == (2, 3, 4) and x.ndim == 3 and x.size == 24 and len(x) == 2
    assert x.dtype == F32 and x.is_leaf and x.numpy() is x.data
    y = x * 2
    assert not y.is_leaf and y.requires_grad
    with pytest.raises(TypeError):
        len(Tensor(1.0))
    assert Tensor(np.array([[2.5]])).item() == 2.5
    with pytest.raises(ValueError, match="item"):
        Tensor(np.ones(2)).item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(Tensor(np.ones(2)))
    assert bool(Tensor(1.0)) and not bool(Tensor(0.0))
    assert "requires_grad=True" in repr(x) and "grad_fn=mul" in repr(y)
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)
    assert Tensor(x).data is x.data


def test_ops_without_grad_inputs_record_nothing():
    a, b = Tensor(np.ones(3)), Tensor(np.ones(3))
    c = (a * b).tanh().sum()
    assert not c.requires_grad and c.is_leaf


@given(x=S.tensors(dtype=np.float32))
def test_strategies_float32_tensors_stay_float32(x):
    assert x.dtype == F32 and x.requires_grad
    assert (x.tanh() * 2.0 + 1).dtype == F32


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 3))
def test_detach_shares_data_and_is_a_leaf(dtype, k):
    x = Tensor(np.ones(k + 1, dtype), requires_grad=True)
    d = (x * 2).detach()
    assert d.is_leaf and not d.requires_grad and d.dtype == dtype
    np.testing.assert_array_equal(d.data, 2 * np.ones(k + 1))


def test_astype_keeps_the_graph_and_casts_the_gradient_back():
    x = tg.Tensor(np.array([0.5, -1.5, 2.0], dtype=np.float32), requires_grad=True)
    y = x.astype(np.float64)
    assert y.dtype == np.float64
    (y * y * 3.0).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 6.0 * x.data, rtol=1e-6)


def test_astype_to_int_of_a_grad_tensor_is_a_clear_error():
    x = tg.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="astype"):
        x.astype(np.int64)
    assert x.detach().astype(np.int64).dtype == np.int64


def test_reductions_to_a_scalar_keep_an_ndarray():
    x = tg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    for out in (x.sum(), x.mean(), x.max(), (x * 2).sum()):
        assert type(out.data) is np.ndarray and out.shape == ()


def test_mean_over_a_bad_axis_names_mean_and_the_shape():
    with pytest.raises(tg.ShapeError, match=r"mean: cannot reduce shape \(2, 3\) over axis=4"):
        tg.zeros(2, 3).mean(axis=4)
