"""The tape and the backward walk: accumulation, retain_graph, freeing, no_grad, detach,
deep chains, hooks, and the dot-product property over random programs."""

import threading

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.testing import check_vjp
from tinygrad_rnn.testing import strategies as S


def leaf(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


# --- errors ---------------------------------------------------------------------------------

def test_backward_non_scalar_needs_grad():
    x = leaf(2, 3)
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*single-element"):
        (x * 2).backward()


def test_backward_on_a_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(3)).sum().backward()
    with tg.no_grad():
        y = (leaf(3) * 2).sum()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_backward_grad_of_wrong_shape():
    x = leaf(2, 3)
    with pytest.raises(tg.ShapeError, match=r"\(3, 2\).*\(2, 3\)"):
        (x * 2).backward(np.ones((3, 2)))


def test_second_backward_through_freed_graph_raises():
    x = leaf(3)
    y = (x.tanh() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_through_a_freed_intermediate_raises():
    x = leaf(3)
    h = x.tanh()
    h.sum().backward()
    with pytest.raises(RuntimeError, match=r"'tanh'.*retain_graph"):
        (h * 3).sum().backward()


def test_a_freed_graph_error_leaves_every_grad_as_it_was():
    # the walk meets the freed node after running the new part; leaves are only written
    # once the whole walk succeeded, so no half-accumulated gradient is left behind
    x, w = leaf(3), leaf(3)
    h = x.tanh()
    h.sum().backward()
    before = x.grad.copy()
    with pytest.raises(RuntimeError, match="retain_graph"):
        ((w * 2).exp() + h * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, before)
    assert w.grad is None


def test_retain_graph_allows_two_backwards_and_accumulates():
    x = leaf(3, 2)
    y = (x.sigmoid() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    s = 1 / (1 + np.exp(-x.data))
    np.testing.assert_allclose(first, s + x.data * s * (1 - s))
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_grad_accumulates_across_two_backward_calls():
    x = leaf(4)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 3 + 2 * x.data)


def test_backward_with_explicit_grad_tensor_and_leaf_root():
    x = leaf(2, 2)
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    (x * 5).backward(Tensor(g))
    np.testing.assert_allclose(x.grad, 5 * g)
    z = leaf(3)
    z.backward(np.array([1.0, 2.0, 3.0]))   # the root is a leaf itself
    np.testing.assert_allclose(z.grad, [1, 2, 3])


# --- graph shapes ---------------------------------------------------------------------------

def test_weight_sharing_is_gradient_accumulation():
    """One weight used at every step of an unroll gets the sum over steps."""
    rng = np.random.default_rng(1)
    W = Tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    xs = [Tensor(rng.standard_normal((2, 3))) for _ in range(5)]
    h = Tensor(np.zeros((2, 3)))
    for x in xs:
        h = (h @ W + x).tanh()
    h.sum().backward()
    # the same, by hand: BPTT with a separate copy of W per step
    Ws = [Tensor(W.data.copy(), requires_grad=True) for _ in xs]
    h = Tensor(np.zeros((2, 3)))
    for x, Wt in zip(xs, Ws):
        h = (h @ Wt + x).tanh()
    h.sum().backward()
    np.testing.assert_allclose(W.grad, sum(Wt.grad for Wt in Ws), rtol=1e-12)


def test_diamond_and_reuse():
    x = leaf(3)
    a = x * 2
    b = a.tanh()
    c = a * b + a       # a used three times, b once
    c.sum().backward()
    t = np.tanh(2 * x.data)
    np.testing.assert_allclose(x.grad, 2 * (t + 2 * x.data * (1 - t * t)) + 2)


def test_same_tensor_twice_in_one_op():
    x = leaf(3)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)
    y = leaf(2, 2)
    (y @ y).sum().backward()
    ones = np.ones((2, 2))
    np.testing.assert_allclose(y.grad, ones @ y.data.T + y.data.T @ ones)


def test_inputs_not_requiring_grad_get_none():
    x, c = leaf(3), Tensor(np.ones(3))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None
    unused = leaf(3)
    assert unused.grad is None


def test_unused_output_of_a_multi_output_op_gets_no_gradient_flow():
    x = leaf(2, 6)
    a, b, c = x.chunk(3)
    (b * 2).sum().backward()
    expected = np.zeros((2, 6))
    expected[:, 2:4] = 2
    np.testing.assert_array_equal(x.grad, expected)


def test_detach_cuts_the_graph():
    x = leaf(3)
    (x.detach() * x).sum().backward()
    np.testing.assert_allclose(x.grad, x.data)     # not 2x: the detached factor is a constant
    h = (x * 2).tanh()
    d = h.detach()
    assert d.is_leaf and not d.requires_grad and d.data is h.data
    w = leaf(3, seed=1)
    (w * d).sum().backward()
    np.testing.assert_allclose(w.grad, d.data)
    np.testing.assert_allclose(x.grad, x.data)    # nothing flowed back through d into x


def test_deep_chain_20k_ops():
    x = Tensor(np.array([0.3, -0.2]), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 0.9999 + 0.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [0.9999 ** 20_000] * 2, rtol=1e-9)


def test_deep_chain_100k_nodes_and_its_teardown():
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(50_000):
        y = (y + 1.0) - 1.0       # 100,000 nodes
    y.backward()
    assert x.grad == 1.0
    # an un-backpropagated deep graph is also freed without recursing
    z = x
    for _ in range(100_000):
        z = z + 0.0
    del z


def test_saved_arrays_are_released_after_backward():
    x = leaf(3)
    y = x.tanh()
    node = y._ctx
    y.sum().backward()
    assert node.freed and not hasattr(node, "out")
    x2 = leaf(3)
    y2 = x2.tanh()
    y2.sum().backward(retain_graph=True)
    assert not y2._ctx.freed


# --- grad mode ------------------------------------------------------------------------------

def test_no_grad_context_manager_records_nothing():
    x = leaf(3)
    assert tg.is_grad_enabled()
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = (x * 2).tanh()
        with tg.enable_grad():
            z = x * 3
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    assert z.requires_grad and z._ctx is not None
    np.testing.assert_allclose(y.data, np.tanh(2 * x.data))


def test_no_grad_decorator_and_restores_on_exception():
    x = leaf(3)

    @tg.no_grad()
    def f(t):
        assert not tg.is_grad_enabled()
        return t * 2

    @tg.no_grad()
    def boom():
        raise KeyError("x")

    assert f.__name__ == "f"
    y = f(x)
    assert not y.requires_grad and y._ctx is None and tg.is_grad_enabled()
    with pytest.raises(KeyError):
        boom()
    assert tg.is_grad_enabled()
    with tg.no_grad():
        f(x)                      # nested: the inner exit restores "disabled"
        assert not tg.is_grad_enabled()
    assert tg.is_grad_enabled()


def test_no_grad_is_per_thread():
    inside, done = threading.Event(), threading.Event()
    results = {}

    def in_no_grad():
        with tg.no_grad():
            inside.set()
            done.wait(5)
            results["a"] = (leaf(2) * 2).requires_grad

    t = threading.Thread(target=in_no_grad)
    t.start()
    assert inside.wait(5)
    try:
        assert tg.is_grad_enabled()           # the other thread's no_grad is not ours
        y = leaf(2) * 2
        results["main"] = y.requires_grad and y._ctx is not None
    finally:
        done.set()
        t.join(5)
    assert results == {"a": False, "main": True}

    # and a thread started while the main thread is inside no_grad records normally
    out = {}
    with tg.no_grad():
        th = threading.Thread(target=lambda: out.setdefault("r", (leaf(2) * 2).requires_grad))
        th.start()
        th.join(5)
    assert out == {"r": True}


# --- hooks --------------------------------------------------------------------------------------

def test_register_hook_sees_and_can_replace_the_gradient():
    x = leaf(3)
    h = x * 2
    seen = []
    handle = h.register_hook(lambda g: seen.append(g.copy()))
    h.register_hook(lambda g: g * 10)     # replaces the gradient flowing on
    (h * 3).sum().backward()
    np.testing.assert_allclose(seen[0], [3, 3, 3])
    np.testing.assert_allclose(x.grad, [60, 60, 60])
    handle.remove()
    x.grad = None
    h2 = x * 2
    h2.register_hook(lambda g: np.ones(2))
    with pytest.raises(tg.ShapeError, match="hook"):
        h2.sum().backward()
    with pytest.raises(RuntimeError, match="register_hook"):
        Tensor(np.ones(2)).register_hook(print)


def test_retain_grad_keeps_a_non_leaf_gradient():
    x = leaf(3)
    h = (x * 2).retain_grad()
    k = x * 2
    (h.tanh() + k).sum().backward()
    np.testing.assert_allclose(h.grad, 1 - np.tanh(h.data) ** 2)
    assert k.grad is None
    with pytest.raises(RuntimeError, match="retain_grad"):
        Tensor(np.ones(2)).retain_grad()


# --- the dot-product property over random programs -----------------------------------------------

UNARY_STEPS = [
    lambda a: a.tanh(), lambda a: a.sigmoid(), lambda a: -a, lambda a: (a * 0.5).exp(),
    lambda a: (a * a + 0.5).log(), lambda a: (a * a + 0.3).sqrt(), lambda a: a.softmax(-1),
    lambda a: a.log_softmax(0) if a.ndim else a, lambda a: a * 1.5 - 0.25, lambda a: 2.0 / (a * a + 1),
    lambda a: a.T, lambda a: a.sum(axis=-1, keepdims=True) * a if a.ndim else a,
    lambda a: a.mean(axis=0) if a.ndim else a, lambda a: a[::-1] * a if a.ndim else a,
]


def _checkerboard(a, b):
    # a fixed mask (a data-dependent one like a > b is discontinuous at ties)
    shape = np.broadcast_shapes(a.shape, b.shape)
    return (np.arange(int(np.prod(shape))) % 2 == 0).reshape(shape)


# smooth steps only (no max, relu, abs): finite differences must see a derivative
BINARY_STEPS = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b * 0.5,
                lambda a, b: a / (b * b + 1), lambda a, b: tg.where(_checkerboard(a, b), a, b * 2)]


@st.composite
def programs(draw):
    """A random DAG: a list of (unary op index) or (binary op index, earlier value index)."""
    steps = []
    for i in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            steps.append(("u", draw(st.integers(0, len(UNARY_STEPS) - 1)), None))
        else:
            steps.append(("b", draw(st.integers(0, len(BINARY_STEPS) - 1)),
                          draw(st.integers(0, i))))
    return steps


def run_program(steps, x, y):
    values = [x + y]          # broadcast the two inputs once
    for kind, op, other in steps:
        a = values[-1]
        if kind == "u":
            values.append(UNARY_STEPS[op](a))
        else:
            values.append(BINARY_STEPS[op](a, values[other]))
    return values[-1], values[len(values) // 2]   # two outputs, one from the middle


@settings(max_examples=100)
@given(steps=programs(), xy=S.broadcastable_tensors(2, max_dims=2))
def test_check_vjp_random_programs(steps, xy):
    x, y = xy
    try:
        run_program(steps, x, y)
    except tg.ShapeError:
        assume(False)   # .T or a reduction can make a later binary step ill-shaped
    check_vjp(lambda x, y: run_program(steps, x, y), x, y)


def test_check_vjp_catches_a_wrong_walk():
    """If the walk dropped one of two uses of a tensor, the dot-product test would see it."""
    x = leaf(3, 2)
    u_JTv, Ju_v = check_vjp(lambda x: (x * x.tanh() + x).sum(axis=0), x)
    assert abs(u_JTv - Ju_v) <= 1e-6 + 1e-5 * abs(Ju_v)
    assert abs(u_JTv) > 1e-3          # a non-trivial projection
