"""Tensor.retain_grad and Tensor.register_hook, with PyTorch's semantics."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor


def leaf(values):
    return Tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def test_retain_grad_keeps_the_gradient_of_a_non_leaf():
    x = leaf([1.0, -2.0, 3.0])
    y = x * 2.0
    z = x * 3.0
    y.retain_grad()
    ((y * y).sum() + z.sum()).backward()
    np.testing.assert_allclose(y.grad, 2 * y.data)     # d(sum y^2)/dy
    assert z.grad is None                               # not retained: dropped once consumed
    np.testing.assert_allclose(x.grad, 2 * 2 * y.data + 3.0)


def test_retained_grad_of_a_tensor_used_twice_is_the_sum_and_accumulates_across_backwards():
    x = leaf([1.0, 2.0])
    y = x * 3.0
    y.retain_grad()
    loss = (y * y).sum() + y.sum()
    loss.backward(retain_graph=True)
    np.testing.assert_allclose(y.grad, 2 * y.data + 1)
    loss.backward()
    np.testing.assert_allclose(y.grad, 2 * (2 * y.data + 1))   # as PyTorch: retained grads add up


def test_retain_grad_on_the_root_and_on_a_tensor_without_grad():
    x = leaf([1.0, 2.0])
    r = (x * 2.0).sum()
    r.retain_grad()
    r.backward()
    assert r.grad == 1.0
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).retain_grad()


def test_hooks_run_from_the_loss_backwards_and_in_registration_order_on_one_tensor():
    calls = []
    x = leaf([1.0, 2.0])
    a = x * 2.0
    b = a.tanh()
    c = b * b
    for name, t in (("a", a), ("b", b), ("c", c), ("x", x)):
        t.register_hook(lambda g, name=name: calls.append(name))
    b.register_hook(lambda g: calls.append("b second"))
    c.sum().backward()
    assert calls == ["c", "b", "b second", "a", "x"]


def test_a_hook_sees_the_gradient_and_its_return_value_replaces_it():
    x = leaf([0.5, -1.0])
    y = x * x
    seen = []
    y.register_hook(lambda g: seen.append(g.copy()))
    y.register_hook(lambda g: g * 10.0)          # replaces what flows on to x
    y.register_hook(lambda g: seen.append(g.copy()))   # later hooks see the replacement
    (y * 3.0).sum().backward()
    np.testing.assert_allclose(seen[0], [3.0, 3.0])
    np.testing.assert_allclose(seen[1], [30.0, 30.0])
    np.testing.assert_allclose(x.grad, 30.0 * 2 * x.data)


def test_retained_grad_reflects_the_hooks_replacement():
    # PyTorch >= 2: the retain_grad hook always runs last.
    x = leaf([1.0, 2.0])
    y = x * 3.0
    y.retain_grad()
    y.register_hook(lambda g: g * 10.0)
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad, 10 * 2 * y.data)


def test_a_leaf_hook_runs_once_with_the_summed_gradient_and_changes_what_accumulates():
    a = leaf([1.0, 2.0])
    calls = []
    a.register_hook(lambda g: calls.append(g.copy()))
    a.register_hook(lambda g: -g)
    (a * a + a).sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 2 * a.data + 1)
    np.testing.assert_allclose(a.grad, -(2 * a.data + 1))


def test_a_hook_on_one_output_of_a_multi_output_node():
    x = leaf(np.arange(6.0).reshape(2, 3))
    first, second, third = x.split(1, axis=-1)
    first.register_hook(lambda g: g * 0.0)
    (first * 5.0 + second * 7.0 + third).sum().backward()
    np.testing.assert_allclose(x.grad, np.tile([0.0, 7.0, 1.0], (2, 1)))


def test_removing_a_hook_and_bad_hooks():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    handle = y.register_hook(lambda g: g * 100.0)
    handle.remove()
    handle.remove()                                   # a second remove is harmless
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 2.0])

    z = x * 2.0
    z.register_hook(lambda g: np.ones(3))
    with pytest.raises(tg.ShapeError, match=r"shape \(3,\) for a tensor of shape \(2,\)"):
        z.sum().backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).register_hook(lambda g: g)


def test_a_hook_replacement_keeps_the_tensor_dtype():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x * 2.0
    y.register_hook(lambda g: g.astype(np.float64) * 2)
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 4.0)


@given(scales=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=6),
       x0=st.floats(-2, 2, allow_nan=False))
def test_hooks_scaling_a_chain_scale_the_leaf_gradient_by_their_product(scales, x0):
    # y_k = tanh(y_{k-1}); hook k multiplies dL/dy_k by scales[k]. The chain rule then
    # multiplies every scale into dL/dx.
    x = leaf([x0])
    y, ys = x, []
    for s in scales:
        y = y.tanh()
        y.register_hook(lambda g, s=s: g * s)
        ys.append(y)
    y.sum().backward()
    plain = np.prod([1 - t.data[0] ** 2 for t in ys])
    np.testing.assert_allclose(x.grad, [plain * np.prod(scales)], rtol=1e-12, atol=1e-300)


def test_hooks_and_retained_grads_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a0, w0 = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def run(lib_tensor, tanh, order):
        a, w = lib_tensor(a0), lib_tensor(w0)
        h = a @ w
        h.retain_grad()
        h.register_hook(lambda g: order.append("h") or g * 2.0)
        y = tanh(h)
        y.register_hook(lambda g: order.append("y") or g + 1.0)
        w.register_hook(lambda g: order.append("w") or None)
        (y * y).sum().backward()
        return a.grad, w.grad, h.grad

    ours_order, theirs_order = [], []
    ours = run(lambda v: Tensor(v.copy(), requires_grad=True), lambda t: t.tanh(), ours_order)
    theirs = run(lambda v: torch.tensor(v, requires_grad=True), torch.tanh, theirs_order)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=1e-12)
    assert ours_order == theirs_order == ["y", "h", "w"]
