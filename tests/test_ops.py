"""Every op's gradient against central differences in float64, over hypothesis-drawn shapes.

Each test checks the forward against numpy and the backward with ``gradcheck`` (every input
element, fixed random cotangent) and ``check_vjp`` (dot-product property). Shapes include
0-d, size-1 and broadcast dimensions; binary ops are checked on both sides and in their
Tensor-scalar and scalar-Tensor forms. A last section compares forward and gradients with
PyTorch (float64) where it is installed.
"""

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, kernels
from tinygrad_rnn.testing import check_vjp, gradcheck
from tinygrad_rnn.testing import strategies as S


def check(fn, ref, *inputs):
    """Forward equals the numpy reference; the gradients of every input pass gradcheck and
    the dot-product test."""
    out = fn(*inputs)
    outs = out if isinstance(out, (list, tuple)) else [out]
    refs = ref(*[x.data if isinstance(x, Tensor) else x for x in inputs])
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == np.shape(r)
        np.testing.assert_allclose(o.data, r, rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, *inputs)
    check_vjp(fn, *inputs)


@contextlib.contextmanager
def kernels_bound_to(backend):
    """Bind the ops' kernels to one implementation whatever the array size: "numpy" (the
    references), "numba" (the ufuncs) or "default" (the dispatchers)."""
    names = kernels._KERNEL_NAMES
    saved = {n: getattr(kernels, n) for n in names}
    if backend == "numpy":
        chosen = {n: getattr(kernels.numpy_kernels, n) for n in names}
    elif backend == "numba":
        chosen = {n: getattr(kernels.numba_kernels, n) for n in names}
    else:
        chosen = saved
    try:
        for n, f in chosen.items():
            setattr(kernels, n, f)
        yield
    finally:
        for n, f in saved.items():
            setattr(kernels, n, f)


@st.composite
def operand_pair(draw, a_kw=None, b_kw=None):
    sa, sb = draw(S.broadcastable_shapes(2))
    return draw(S.tensors(sa, **(a_kw or {}))), draw(S.tensors(sb, **(b_kw or {})))


scalars = st.floats(-2.0, 2.0)
nonzero_scalars = S.elements(-2.0, 2.0, away_from_zero=0.5)


# --- binary arithmetic ------------------------------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, np.add, {}),
    "sub": (lambda a, b: a - b, np.subtract, {}),
    "mul": (lambda a, b: a * b, np.multiply, {}),
    "div": (lambda a, b: a / b, np.divide, {"away_from_zero": 0.5}),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_broadcast(name, data):
    fn, ref, b_kw = BINARY[name]
    a, b = data.draw(operand_pair(b_kw=b_kw))
    check(fn, ref, a, b)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(ab=operand_pair(b_kw={"away_from_zero": 0.5}))
def test_div_with_each_kernel_backend(backend, ab):
    with kernels_bound_to(backend):        # div's rhs gradient is a kernel
        check(lambda a, b: a / b, np.divide, *ab)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_one_side_constant(name, data):
    """Only one operand requires grad: the other side's gradient is skipped, not wrong."""
    fn, ref, b_kw = BINARY[name]
    a, b = data.draw(operand_pair(b_kw=b_kw))
    constant_side = data.draw(st.sampled_from([0, 1]))
    (a, b)[constant_side].requires_grad = False
    check(fn, ref, a, b)
    out = fn(a, b)
    out.sum().backward()
    assert (a, b)[constant_side].grad is None


@pytest.mark.parametrize("name", sorted(BINARY))
@given(a=S.tensors(away_from_zero=0.5), s=nonzero_scalars)
def test_binary_tensor_scalar(name, a, s):
    fn, ref, _ = BINARY[name]
    check(lambda a: fn(a, s), lambda a: ref(a, s), a)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(a=S.tensors(away_from_zero=0.5), s=nonzero_scalars)
def test_binary_scalar_tensor(name, a, s):
    fn, ref, _ = BINARY[name]
    check(lambda a: fn(s, a), lambda a: ref(s, a), a)


@given(a=S.tensors(), s=scalars)
def test_integer_scalars(a, s):
    # Python ints on either side, as in `1 - f` of a GRU/MGU update.
    check(lambda a: (1 - a) * 3 + a / 2 - 2 * a, lambda a: (1 - a) * 3 + a / 2 - 2 * a, a)


@given(a=S.tensors())
def test_neg(a):
    check(lambda a: -a, np.negative, a)


# --- pow ---------------------------------------------------------------------------------

@given(a=S.tensors(low=0.2, high=3.0), p=st.sampled_from([0.0, 0.5, 1.5, -1.0, -2.5, 2.0, 3.0]))
def test_pow_tensor_scalar_positive_base(a, p):
    check(lambda a: a ** p, lambda a: a ** p, a)


@given(a=S.tensors(), p=st.sampled_from([1, 2, 3, 2.0]))
def test_pow_tensor_integer_exponent_any_sign(a, p):
    check(lambda a: a ** p, lambda a: a ** p, a)


@given(a=S.tensors(), base=st.floats(0.2, 3.0))
def test_pow_scalar_tensor(a, base):
    check(lambda a: base ** a, lambda a: base ** a, a)


@given(ab=operand_pair(a_kw={"low": 0.2, "high": 3.0}))
def test_pow_tensor_tensor(ab):
    check(lambda a, b: a ** b, np.power, *ab)


# --- matmul ------------------------------------------------------------------------------

@given(data=st.data())
def test_matmul_shapes(data):
    sa, sb = data.draw(S.matmul_shapes())
    a, b = data.draw(S.tensors(sa)), data.draw(S.tensors(sb))
    check(lambda a, b: a @ b, np.matmul, a, b)


@pytest.mark.parametrize("sa, sb", [
    ((3, 4), (4, 2)),           # 2-D @ 2-D
    ((4,), (4, 2)),             # 1-D @ 2-D
    ((3, 4), (4,)),             # 2-D @ 1-D
    ((4,), (4,)),               # 1-D @ 1-D: a scalar
    ((2, 3, 4), (4, 2)),        # N-D @ 2-D (the batch folded into rows)
    ((2, 2, 3, 4), (4, 2)),
    ((3, 4), (2, 4, 2)),        # 2-D @ N-D
    ((4,), (2, 4, 2)),          # 1-D @ N-D
    ((2, 3, 4), (4,)),          # N-D @ 1-D
    ((2, 1, 3, 4), (3, 4, 2)),  # batch dims broadcast on both sides
    ((1, 3, 4), (2, 4, 2)),
])
def test_matmul_every_path(sa, sb):
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal(sa), requires_grad=True)
    b = Tensor(rng.standard_normal(sb), requires_grad=True)
    check(lambda a, b: a @ b, np.matmul, a, b)
    # one side constant, on both sides (needs_input_grad paths)
    check(lambda a: a @ b.detach(), lambda a: a @ b.data, a)
    check(lambda b: a.detach() @ b, lambda b: a.data @ b, b)


def test_rmatmul_with_numpy_array():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4))
    x = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    check(lambda x: w @ x, lambda x: w @ x, x)


# --- pointwise ---------------------------------------------------------------------------

UNARY = {
    "tanh": (lambda a: a.tanh(), np.tanh, {}),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), {}),
    "relu": (lambda a: a.relu(), lambda a: np.maximum(a, 0), {"away_from_zero": 0.1}),
    "exp": (lambda a: a.exp(), np.exp, {}),
    "log": (lambda a: a.log(), np.log, {"low": 0.2, "high": 3.0}),
    "sqrt": (lambda a: a.sqrt(), np.sqrt, {"low": 0.2, "high": 3.0}),
    "abs": (lambda a: a.abs(), np.abs, {"away_from_zero": 0.1}),
}


@pytest.mark.parametrize("backend", ["default", "numpy", "numba"])
@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary(name, backend, data):
    fn, ref, kw = UNARY[name]
    a = data.draw(S.tensors(**kw))
    with kernels_bound_to(backend):
        check(fn, ref, a)


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_larger_arrays(name, data):
    fn, ref, kw = UNARY[name]
    a = data.draw(S.tensors(shape=(data.draw(st.integers(65, 90)),), **kw))
    check(fn, ref, a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_fused_and_numpy_paths_agree(dtype):
    x = Tensor(np.linspace(-30, 30, 301).astype(dtype), requires_grad=True)
    results = []
    for backend in ("numpy", "numba"):
        x.grad = None
        with kernels_bound_to(backend):
            y = x.sigmoid()
            y.backward(np.cos(x.data))
        results.append((y.data, x.grad))
    (y_np, g_np), (y_nb, g_nb) = results
    np.testing.assert_array_max_ulp(y_nb, y_np, maxulp=4, dtype=dtype)
    # s * (1 - s) from an s that is 1 ulp off near 1 has an absolute error of ~eps, not relative
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(g_nb, g_np, rtol=8 * eps, atol=4 * eps)
    exact = 1 / (1 + np.exp(-x.data.astype(np.longdouble)))
    np.testing.assert_array_max_ulp(y_np, exact.astype(dtype), maxulp=4, dtype=dtype)


def test_relu_and_abs_subgradient_at_zero():
    x = Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    (x.relu() + x.abs()).sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 2.0])


# --- reductions ----------------------------------------------------------------------------

@st.composite
def tensor_and_axis(draw, distinct=False, min_dims=0):
    shape = draw(S.shapes(min_dims=min_dims))
    x = draw(S.distinct_tensors(shape) if distinct else S.tensors(shape))
    return x, draw(S.axes(len(shape))), draw(st.booleans())


@given(args=tensor_and_axis())
def test_sum(args):
    x, axis, keepdims = args
    check(lambda x: x.sum(axis=axis, keepdims=keepdims),
          lambda x: np.sum(x, axis=axis, keepdims=keepdims), x)


@given(args=tensor_and_axis())
def test_mean(args):
    x, axis, keepdims = args
    check(lambda x: x.mean(axis=axis, keepdims=keepdims),
          lambda x: np.mean(x, axis=axis, keepdims=keepdims), x)


@given(args=tensor_and_axis(distinct=True))
def test_max(args):
    x, axis, keepdims = args
    check(lambda x: x.max(axis=axis, keepdims=keepdims),
          lambda x: np.max(x, axis=axis, keepdims=keepdims), x)


def test_max_ties_share_the_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    y = Tensor(np.array([5.0, 1.0, 5.0]), requires_grad=True)
    (y.max() * 4).backward()
    np.testing.assert_allclose(y.grad, [2.0, 0.0, 2.0])


# --- shape ops -------------------------------------------------------------------------------

@st.composite
def tensor_and_new_shape(draw):
    shape = draw(S.shapes())
    n = int(np.prod(shape))
    candidates = [(n,), (-1,), (1, n), (n, 1, 1), tuple(reversed(shape)), shape + (1,), ()]
    if n % 2 == 0:
        candidates += [(2, -1), (n // 2, 1, 2)]
    new = draw(st.sampled_from([c for c in candidates if c != () or n == 1]))
    return draw(S.tensors(shape)), new


@given(args=tensor_and_new_shape())
def test_reshape(args):
    x, new = args
    check(lambda x: x.reshape(new), lambda x: x.reshape(new), x)
    check(lambda x: x.reshape(*new), lambda x: x.reshape(new), x)


@st.composite
def tensor_and_perm(draw):
    shape = draw(S.shapes())
    return draw(S.tensors(shape)), draw(S.permutations_of_axes(len(shape)))


@given(args=tensor_and_perm())
def test_transpose(args):
    x, perm = args
    check(lambda x: x.transpose(*perm), lambda x: np.transpose(x, perm), x)
    check(lambda x: x.transpose(perm), lambda x: np.transpose(x, perm), x)


@given(x=S.tensors())
def test_T(x):
    check(lambda x: x.T, lambda x: x.T, x)
    check(lambda x: x.transpose(), lambda x: x.T, x)


@st.composite
def tensor_and_basic_index(draw):
    shape = draw(S.shapes(min_dims=1))
    return draw(S.tensors(shape)), draw(S.basic_indices(shape))


@given(args=tensor_and_basic_index())
def test_getitem_basic(args):
    x, index = args
    check(lambda x: x[index], lambda x: x[index], x)


@pytest.mark.parametrize("index", [
    1, -1, slice(None, None, 2), slice(None, None, -1), slice(3, 0, -2), (slice(1, None), -2),
    (Ellipsis, 0), (None, slice(None), 1), (slice(None), slice(None, None, -3)),
])
def test_getitem_basic_examples(index):
    x = Tensor(np.random.default_rng(2).standard_normal((4, 5)), requires_grad=True)
    check(lambda x: x[index], lambda x: x[index], x)


@st.composite
def tensor_and_integer_arrays(draw):
    shape = draw(S.shapes(min_dims=1))
    return draw(S.tensors(shape)), draw(S.integer_index_arrays(shape))


@given(args=tensor_and_integer_arrays())
def test_getitem_integer_arrays(args):
    x, index = args
    check(lambda x: x[index], lambda x: x[index], x)


@st.composite
def tensor_and_mask(draw):
    shape = draw(S.shapes(min_dims=1))
    return draw(S.tensors(shape)), draw(S.boolean_masks(shape))


@given(args=tensor_and_mask())
def test_getitem_boolean_mask(args):
    x, mask = args
    check(lambda x: x[mask], lambda x: x[mask], x)
    check(lambda x: x[Tensor(mask)], lambda x: x[mask], x)


def test_getitem_repeated_rows_sum_their_gradients():
    """The embedding lookup: a row used k times receives the sum of its k gradients."""
    W = Tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    idx = np.array([[1, 3, 1], [1, 0, 3]])
    out = W[idx]
    assert out.shape == (2, 3, 3)
    g = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(g)
    expected = np.zeros((4, 3))
    for b in range(2):
        for t in range(3):
            expected[idx[b, t]] += g[b, t]
    np.testing.assert_allclose(W.grad, expected)
    assert np.all(W.grad[2] == 0)
    # the same through a Tensor index and a Python list, and mixed with a slice
    check(lambda W: W[Tensor(idx)], lambda W: W[idx], W)
    check(lambda W: W[[0, 0, 2, 0]], lambda W: W[[0, 0, 2, 0]], W)
    check(lambda W: W[np.array([2, 2, -1]), 1:], lambda W: W[np.array([2, 2, -1]), 1:], W)
    check(lambda W: W[:, np.array([0, 0])], lambda W: W[:, np.array([0, 0])], W)


@st.composite
def tensors_to_cat(draw):
    shape = draw(S.shapes(min_dims=1))
    ndim = len(shape)
    axis = draw(st.integers(-ndim, ndim - 1))
    n = draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        out.append(draw(S.tensors(tuple(s))))
    return out, axis


@given(args=tensors_to_cat())
def test_cat(args):
    xs, axis = args
    check(lambda *xs: tg.cat(list(xs), axis=axis), lambda *xs: np.concatenate(xs, axis=axis), *xs)


@st.composite
def tensors_to_stack(draw):
    shape = draw(S.shapes())
    ndim = len(shape)
    axis = draw(st.integers(-ndim - 1, ndim))
    xs = [draw(S.tensors(shape)) for _ in range(draw(st.integers(1, 3)))]
    return xs, axis


@given(args=tensors_to_stack())
def test_stack(args):
    xs, axis = args
    check(lambda *xs: tg.stack(list(xs), axis=axis), lambda *xs: np.stack(xs, axis=axis), *xs)


def test_cat_and_stack_with_a_constant():
    rng = np.random.default_rng(4)
    a = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    c = Tensor(rng.standard_normal((2, 3)))
    check(lambda a: tg.cat([c, a, c], axis=1), lambda a: np.concatenate([c.data, a, c.data], 1), a)
    check(lambda a: tg.stack([a, c, a], axis=-1), lambda a: np.stack([a, c.data, a], -1), a)


@st.composite
def tensor_axis_chunks(draw):
    shape = list(draw(S.shapes(min_dims=1, max_side=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    chunks = draw(st.integers(1, 4))
    shape[axis] *= chunks
    return draw(S.tensors(tuple(shape))), axis, chunks


@given(args=tensor_axis_chunks())
def test_chunk(args):
    x, axis, chunks = args
    check(lambda x: x.chunk(chunks, axis=axis),
          lambda x: np.split(x, chunks, axis=axis), x)


@given(args=tensor_axis_chunks(), data=st.data())
def test_chunk_partly_used(args, data):
    """An LSTM that reads only some gates: unused pieces get a zero gradient."""
    x, axis, chunks = args
    used = data.draw(st.lists(st.integers(0, chunks - 1), min_size=1, max_size=3))

    def fn(x):
        parts = x.chunk(chunks, axis=axis)
        return [parts[i] * (i + 1) for i in used]

    def ref(x):
        parts = np.split(x, chunks, axis=axis)
        return [parts[i] * (i + 1) for i in used]

    check(fn, ref, x)


@st.composite
def tensor_axis_sizes(draw):
    shape = list(draw(S.shapes(min_dims=1, max_side=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    shape[axis] = sum(sizes)
    return draw(S.tensors(tuple(shape))), axis, sizes


@given(args=tensor_axis_sizes())
def test_split_sizes(args):
    x, axis, sizes = args
    check(lambda x: x.split(sizes, axis=axis),
          lambda x: np.split(x, np.cumsum(sizes)[:-1], axis=axis), x)


@given(args=tensor_axis_sizes(), size=st.integers(1, 4))
def test_split_int_with_remainder(args, size):
    x, axis, _ = args
    n = x.shape[axis]
    bounds = list(range(size, n, size))
    check(lambda x: x.split(size, axis=axis), lambda x: np.split(x, bounds, axis=axis), x)


@pytest.mark.skipif(not hasattr(Tensor, "unbind"), reason="Tensor.unbind not present")
@given(args=tensor_and_axis(min_dims=1), data=st.data())
def test_unbind(args, data):
    x, _, _ = args
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check(lambda x: x.unbind(axis), lambda x: list(np.moveaxis(x, axis, 0)), x)


@pytest.mark.skipif(not hasattr(tg, "linear"), reason="tg.linear not present")
@given(data=st.data())
def test_linear(data):
    batch = data.draw(S.shapes(max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(S.tensors(batch + (n_in,)))
    w = data.draw(S.tensors((n_out, n_in)))
    b = data.draw(S.tensors((n_out,)))
    check(tg.linear, lambda x, w, b: x @ w.T + b, x, w, b)
    check(lambda x, w: tg.linear(x, w), lambda x, w: x @ w.T, x, w)


@st.composite
def where_args(draw):
    sm, sa, sb = draw(S.broadcastable_shapes(3))
    mask = draw(hnp.arrays(np.bool_, sm))
    return mask, draw(S.tensors(sa)), draw(S.tensors(sb))


@given(args=where_args())
def test_where(args):
    mask, a, b = args
    check(lambda a, b: tg.where(mask, a, b), lambda a, b: np.where(mask, a, b), a, b)
    check(lambda a, b: tg.where(Tensor(mask), a, b), lambda a, b: np.where(mask, a, b), a, b)


@given(args=where_args(), s=scalars)
def test_where_with_scalars(args, s):
    mask, a, _ = args
    check(lambda a: tg.where(mask, a, s), lambda a: np.where(mask, a, s), a)
    check(lambda a: tg.where(mask, s, a), lambda a: np.where(mask, s, a), a)


# --- softmax family -------------------------------------------------------------------------

def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    return np.log(_softmax_ref(x, axis))


@st.composite
def tensor_and_softmax_axis(draw):
    shape = draw(S.shapes(min_dims=1))
    ndim = len(shape)
    axis = draw(st.one_of(st.integers(-ndim, ndim - 1),
                          hnp.valid_tuple_axes(ndim, min_size=1)))
    return draw(S.tensors(shape, low=-4.0, high=4.0)), axis


@given(args=tensor_and_softmax_axis())
def test_softmax(args):
    x, axis = args
    check(lambda x: x.softmax(axis=axis), lambda x: _softmax_ref(x, axis), x)


@given(args=tensor_and_softmax_axis())
def test_log_softmax(args):
    x, axis = args
    check(lambda x: x.log_softmax(axis=axis), lambda x: _log_softmax_ref(x, axis), x)


def test_softmax_default_axis_is_last():
    x = Tensor(np.random.default_rng(5).standard_normal((3, 4)))
    np.testing.assert_allclose(x.softmax().data, _softmax_ref(x.data, -1))
    np.testing.assert_allclose(x.log_softmax().data.sum(), np.log(_softmax_ref(x.data, -1)).sum())


# --- numerical stability -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("n", [2, 100])
@pytest.mark.parametrize("name", ["sigmoid", "softmax", "log_softmax", "tanh"])
def test_stable_at_plus_minus_1000(name, n, backend, dtype):
    data = np.tile(np.array([1000.0, -1000.0], dtype=dtype), n // 2)
    x = Tensor(data, requires_grad=True)
    g = np.linspace(-1, 1, n).astype(dtype)
    with warnings.catch_warnings(), kernels_bound_to(backend):
        warnings.simplefilter("error")
        # Underflow to 0 (exp(-2000)) is the correctly rounded result and numpy ignores it
        # by default; overflow, 0/0 and log(0) are what would make inf/nan.
        with np.errstate(all="raise", under="ignore"):
            y = getattr(x, name)()
            y.backward(g)
    assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(x.grad))
    assert y.dtype == dtype and x.grad.dtype == dtype
    expected = {
        "sigmoid": np.tile([1.0, 0.0], n // 2),
        "tanh": np.tile([1.0, -1.0], n // 2),
        "softmax": np.tile([1.0, 0.0], n // 2) / (n // 2),
        "log_softmax": np.tile([0.0, -2000.0], n // 2) - np.log(n // 2),
    }[name]
    np.testing.assert_allclose(y.data, expected, rtol=1e-6, atol=1e-6)
    if name in ("sigmoid", "tanh"):
        np.testing.assert_array_equal(x.grad, 0)   # saturated: the derivative is exactly 0


def test_log_softmax_gradient_at_extremes_is_exact():
    x = Tensor(np.array([1000.0, -1000.0, 0.0]), requires_grad=True)
    y = x.log_softmax()
    y.backward(np.array([1.0, 0.0, 0.0]))
    # d log p_0 / dx = e_0 - p, p = (1, 0, 0) up to exp(-1000)
    np.testing.assert_allclose(x.grad, [0.0, 0.0, 0.0], atol=1e-300)
    y2 = Tensor(np.array([1000.0, -1000.0, 0.0]), requires_grad=True)
    y2.log_softmax().backward(np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(y2.grad, [-1.0, 1.0, 0.0], atol=1e-300)


# --- errors ---------------------------------------------------------------------------------

def test_matmul_misaligned_message():
    a, b = Tensor(np.ones((3, 4))), Tensor(np.ones((5, 6)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 6\) are not aligned"):
        a @ b
    with pytest.raises(tg.ShapeError, match=r"matmul: shapes \(4,\) and \(3,\)"):
        Tensor(np.ones(4)) @ Tensor(np.ones(3))
    with pytest.raises(tg.ShapeError, match=r"matmul: batch dimensions"):
        Tensor(np.ones((2, 3, 4))) @ Tensor(np.ones((3, 4, 5)))


@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"), (lambda a, b: a * b, "mul"),
    (lambda a, b: a / b, "div"), (lambda a, b: a ** b, "pow"),
    (lambda a, b: tg.where(np.ones((3, 1), bool), a, b), "where"),
])
def test_broadcast_failure_names_op_and_shapes(op, name):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5)))
    with pytest.raises(tg.ShapeError, match=rf"^{name}: .*\(2, 3\).*\(4, 5\)"):
        op(a, b)


@pytest.mark.parametrize("fn, pattern", [
    (lambda x: x.reshape(4, 4), r"reshape: .*\(2, 3\)"),
    (lambda x: x.transpose(0, 0), r"transpose: .*\(2, 3\)"),
    (lambda x: x.sum(axis=2), r"sum: .*\(2, 3\)"),
    (lambda x: x.max(axis=(0, 5)), r"max: .*\(2, 3\)"),
    (lambda x: x[5], r"getitem: .*\(2, 3\)"),
    (lambda x: tg.cat([x, Tensor(np.ones((3, 3)))], axis=1), r"cat: .*\(2, 3\), \(3, 3\)"),
    (lambda x: tg.stack([x, Tensor(np.ones((3, 2)))]), r"stack: .*\(2, 3\), \(3, 2\)"),
    (lambda x: x.chunk(2, axis=1), r"chunk: .*\(2, 3\)"),
    (lambda x: x.split([1, 1], axis=1), r"split: .*\(2, 3\)"),
    (lambda x: x.softmax(axis=3), r"softmax: .*\(2, 3\)"),
    (lambda x: x.log_softmax(axis=3), r"log_softmax: .*\(2, 3\)"),
])
def test_shape_errors_name_the_op(fn, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(Tensor(np.ones((2, 3)), requires_grad=True))


# --- PyTorch reference (float64) ---------------------------------------------------------------

TORCH_CASES = {
    "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 5)]),
    "matmul_vec": (lambda a, b: a @ b, lambda a, b: a @ b, [(4,), (2, 4, 3)]),
    "tanh": (lambda a: a.tanh(), lambda a: a.tanh(), [(3, 5)]),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: a.sigmoid(), [(3, 5)]),
    "sigmoid_large": (lambda a: a.sigmoid(), lambda a: a.sigmoid(), [(40, 60)]),
    "relu": (lambda a: a.relu(), lambda a: a.relu(), [(3, 5)]),
    "exp_log": (lambda a: (a.exp() + 1).log(), lambda a: (a.exp() + 1).log(), [(3, 5)]),
    "sqrt_abs": (lambda a: (a.abs() + 0.5).sqrt(), lambda a: (a.abs() + 0.5).sqrt(), [(3, 5)]),
    "div_pow": (lambda a, b: (a / (b * b + 1)) ** 2, lambda a, b: (a / (b * b + 1)) ** 2,
                [(3, 1), (1, 4)]),
    "pow_tensor": (lambda a, b: (a.abs() + 0.5) ** b, lambda a, b: (a.abs() + 0.5) ** b,
                   [(2, 3), (3,)]),
    "softmax": (lambda a: a.softmax(axis=0), lambda a: a.softmax(dim=0), [(4, 3)]),
    "log_softmax": (lambda a: a.log_softmax(), lambda a: a.log_softmax(dim=-1), [(4, 3)]),
    "sum_mean": (lambda a: a.sum(axis=(0, -1), keepdims=True) * a.mean(axis=0),
                 lambda a: a.sum(dim=(0, -1), keepdim=True) * a.mean(dim=0), [(2, 3, 4)]),
    "max_ties": (lambda a: a.max(axis=1), lambda a: a.amax(dim=1), "ties"),
    "getitem_embedding": (lambda w: w[np.array([[0, 2, 2], [1, 0, 2]])],
                          lambda w: w[torch_index([[0, 2, 2], [1, 0, 2]])], [(3, 4)]),
    "getitem_slices": (lambda a: a[::-2, 1:, None], lambda a: a.flip(0)[::2, 1:, None], [(5, 3)]),
    "transpose_reshape": (lambda a: a.transpose(2, 0, 1).reshape(4, -1).T,
                          lambda a: a.permute(2, 0, 1).reshape(4, -1).T, [(2, 3, 4)]),
    "cat_stack": (lambda a, b: tg.stack([tg.cat([a, b], axis=1), tg.cat([b, a], axis=1)], axis=-1),
                  lambda a, b: torch_mod().stack([torch_mod().cat([a, b], 1),
                                                  torch_mod().cat([b, a], 1)], -1),
                  [(2, 3), (2, 3)]),
    "where": (lambda a, b: tg.where(np.array([True, False, True]), a, b),
              lambda a, b: torch_mod().where(torch_mod().tensor([True, False, True]), a, b),
              [(2, 3), (2, 1)]),
    "chunk": (lambda a: a.chunk(3)[1] * a.chunk(3)[2],
              lambda a: a.chunk(3, dim=-1)[1] * a.chunk(3, dim=-1)[2], [(2, 6)]),
}


def torch_mod():
    import torch
    return torch


def torch_index(idx):
    return torch_mod().tensor(idx)


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_against_pytorch(name):
    torch = pytest.importorskip("torch")
    ours, theirs, shapes = TORCH_CASES[name]
    rng = np.random.default_rng(sorted(TORCH_CASES).index(name))
    if shapes == "ties":
        arrays = [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.5, -1.0, 0.25]])]
    else:
        arrays = [rng.standard_normal(s) for s in shapes]
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, tout = ours(*xs), theirs(*ts)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(ab=operand_pair())
def test_broadcast_mul_against_pytorch(ab):
    torch = pytest.importorskip("torch")
    a, b = ab
    ta, tb = (torch.tensor(x.data, requires_grad=True) for x in (a, b))
    ((a * b).tanh() - a).sum().backward()
    ((ta * tb).tanh() - ta).sum().backward()
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-12, atol=1e-12)
