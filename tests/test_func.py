"""tg.func: grad, value_and_grad, vjp, jvp, hvp, jacobian, hessian against finite differences
(float64, hypothesis shapes with broadcasting), against each other, and composed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.testing import strategies as S

EPS = 1e-6


def numeric_jacobian(f, args, argnum):
    """d f(args) / d args[argnum] by central differences: shape out.shape + arg.shape."""
    base = [a.data.copy() for a in args]
    x = base[argnum]
    out_shape = f(*[Tensor(a) for a in base]).shape
    jac = np.zeros(out_shape + x.shape)
    for i in np.ndindex(x.shape):
        plus, minus = [a.copy() for a in base], [a.copy() for a in base]
        plus[argnum][i] += EPS
        minus[argnum][i] -= EPS
        diff = f(*[Tensor(a) for a in plus]).data - f(*[Tensor(a) for a in minus]).data
        jac[(Ellipsis,) + i] = diff / (2 * EPS)
    return jac


def broadcast_fn(a, b):
    """A smooth function of two broadcastable tensors with a non-trivial Hessian."""
    return (a * b).tanh() * a.sigmoid() + (b * b) / (1 + a * a)


@st.composite
def two_tensors(draw):
    sa, sb = draw(S.broadcastable_shapes(2, max_dims=2, max_side=3))
    return draw(S.tensors(sa, requires_grad=False)), draw(S.tensors(sb, requires_grad=False))


@settings(max_examples=20)
@given(ab=two_tensors(), argnum=st.sampled_from([0, 1]))
def test_jacobian_against_finite_differences(ab, argnum):
    a, b = ab
    jac = tg.func.jacobian(broadcast_fn, argnums=argnum)(a, b)
    np.testing.assert_allclose(jac.data, numeric_jacobian(broadcast_fn, [a, b], argnum),
                               rtol=1e-6, atol=1e-8)


@settings(max_examples=20)
@given(ab=two_tensors())
def test_hessian_against_finite_differences_of_the_gradient(ab):
    a, b = ab

    def loss(a, b):
        return broadcast_fn(a, b).sum()

    hess = tg.func.hessian(loss, argnums=(0, 1))(a, b)
    for i in range(2):
        for j in range(2):
            expected = numeric_jacobian(tg.func.grad(loss, argnums=i), [a, b], j)
            np.testing.assert_allclose(hess[i][j].data, expected, rtol=1e-6, atol=1e-8,
                                       err_msg=f"d2/d{'ab'[i]} d{'ab'[j]}")
    # symmetric, as a Hessian must be
    np.testing.assert_allclose(hess[0][1].data.reshape(a.size, b.size),
                               hess[1][0].data.reshape(b.size, a.size).T, rtol=1e-9, atol=1e-12)


@settings(max_examples=20)
@given(ab=two_tensors(), seed=st.integers(0, 100))
def test_vjp_jvp_and_hvp_agree_with_the_jacobian_and_hessian(ab, seed):
    a, b = ab
    rng = np.random.default_rng(seed)
    out, vjp_fn = tg.func.vjp(broadcast_fn, a, b)
    v = rng.standard_normal(out.shape)
    ta, tb = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
    ja = tg.func.jacobian(broadcast_fn, argnums=(0, 1))(a, b)
    flat = lambda j, x: j.data.reshape(out.size, x.size)  # noqa: E731
    ga, gb = vjp_fn(Tensor(v))
    np.testing.assert_allclose(ga.data.ravel(), flat(ja[0], a).T @ v.ravel(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.data.ravel(), flat(ja[1], b).T @ v.ravel(), rtol=1e-10, atol=1e-12)
    out2, tangent = tg.func.jvp(broadcast_fn, (a, b), (Tensor(ta), Tensor(tb)))
    np.testing.assert_allclose(out2.data, out.data)
    np.testing.assert_allclose(tangent.data.ravel(),
                               flat(ja[0], a) @ ta.ravel() + flat(ja[1], b) @ tb.ravel(),
                               rtol=1e-10, atol=1e-12)

    def loss(a, b):
        return broadcast_fn(a, b).sum()

    value, (ha, hb) = tg.func.hvp(loss, (a, b), (Tensor(ta), Tensor(tb)))
    H = tg.func.hessian(loss, argnums=(0, 1))(a, b)
    mat = lambda h, x, y: h.data.reshape(x.size, y.size)  # noqa: E731
    np.testing.assert_allclose(value.data, loss(a, b).data)
    np.testing.assert_allclose(ha.data.ravel(), mat(H[0][0], a, a) @ ta.ravel() +
                               mat(H[0][1], a, b) @ tb.ravel(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(hb.data.ravel(), mat(H[1][0], b, a) @ ta.ravel() +
                               mat(H[1][1], b, b) @ tb.ravel(), rtol=1e-9, atol=1e-11)


def test_grad_of_grad_of_grad_is_the_third_derivative():
    x = Tensor(np.array(0.3))
    d3 = tg.func.grad(tg.func.grad(tg.func.grad(lambda x: (x * x * x * x).sum())))
    np.testing.assert_allclose(d3(x).data, 24 * 0.3)


def test_value_and_grad_with_nested_arguments_and_outputs():
    h = Tensor(np.array([0.2, -0.4]))
    c = Tensor(np.array([1.0, 0.5]))

    def loss(state, w):
        h, c = state
        return (w * h.tanh() + c * c).sum()

    w = Tensor(np.array([2.0, 3.0]))
    value, ((gh, gc), gw) = tg.func.value_and_grad(loss, argnums=(0, 1))((h, c), w)
    np.testing.assert_allclose(value.data, loss((h, c), w).data)
    np.testing.assert_allclose(gh.data, w.data * (1 - np.tanh(h.data) ** 2))
    np.testing.assert_allclose(gc.data, 2 * c.data)
    np.testing.assert_allclose(gw.data, np.tanh(h.data))
    # a function with a tuple output: one Jacobian per output
    jh, jc = tg.func.jacobian(lambda s: (s[0].tanh(), s[0] * s[1]))((h, c))
    assert jh[0].shape == (2, 2) and jc[1].shape == (2, 2)
    np.testing.assert_allclose(np.diag(jc[1].data), h.data)


def test_func_results_record_only_when_nested():
    cube = tg.func.grad(lambda x: (x ** 3).sum())
    for x in (Tensor(np.array([1.0, 2.0])), Tensor(np.array([1.0, 2.0]), requires_grad=True)):
        assert not cube(x).requires_grad        # top level, a leaf: a plain gradient
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    g = cube(w * 1.0)                           # an argument computed on the tape
    assert g.requires_grad
    (gg,) = tg.grad(g.sum(), w)
    np.testing.assert_allclose(gg.data, 6 * w.data)
    # inside another transform the inner one records, whatever its arguments
    np.testing.assert_allclose(tg.func.grad(lambda x: cube(x).sum())(Tensor(np.array([1.0, 2.0]))).data,
                               [6.0, 12.0])


def test_a_parameter_read_from_the_closure_is_the_argument():
    tg.manual_seed(0)
    lin = tg.nn.Linear(2, 1)
    x = Tensor(np.array([[0.5, -1.0]]))
    g = tg.func.grad(lambda w: lin(x).tanh().sum())(lin.weight)
    lin(x).tanh().sum().backward()
    np.testing.assert_allclose(g.data, lin.weight.grad)


def test_func_errors():
    x = Tensor(np.ones(3))
    with pytest.raises(ValueError, match="grad: f must return a single-element Tensor"):
        tg.func.grad(lambda x: x * 2)(x)
    with pytest.raises(ValueError, match="argnums 2 is out of range for 1 arguments"):
        tg.func.grad(lambda x: x.sum(), argnums=2)(x)
    with pytest.raises(TypeError, match="floating tensors"):
        tg.func.grad(lambda x: x.sum())(Tensor(np.arange(3)))
    with pytest.raises(ValueError, match="jvp: tangents must match"):
        tg.func.jvp(lambda x: x * 2, (x,), (Tensor(np.ones(2)),))
    _, vjp_fn = tg.func.vjp(lambda x: x * 2, x)
    with pytest.raises(ValueError, match=r"vjp_fn: a cotangent has shape \(2,\), its output \(3,\)"):
        vjp_fn(Tensor(np.ones(2)))


def test_unused_argument_gets_zeros():
    g = tg.func.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(Tensor(np.ones(2)), Tensor(np.ones(3)))
    np.testing.assert_allclose(g[1].data, np.zeros(3))
