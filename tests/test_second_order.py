"""Backward is itself a graph: every op's second derivative, higher derivatives against closed
forms, create_graph through Unroll, Stack, lengths and the deferred weight sums, HVPs and a
gradient penalty against PyTorch, and the mutation that the checks must catch."""

import inspect
import unittest.mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, autograd, kernels, ops
from tinygrad_rnn.engine import weight_grads
from tinygrad_rnn.testing import gradcheck, gradgradcheck
from tinygrad_rnn.testing import strategies as S

# --- every op of the catalogue ------------------------------------------------------------------


def _catalogue():
    """The op classes of ops.py (a new op lands here, and must get a case below)."""
    return sorted(name for name, cls in inspect.getmembers(ops, inspect.isclass)
                  if issubclass(cls, autograd.Function) and cls.__module__ == ops.__name__
                  and not name.startswith("_"))


def _pair(data, **b_kw):
    sa, sb = data.draw(S.broadcastable_shapes(2))
    return data.draw(S.tensors(sa)), data.draw(S.tensors(sb, **b_kw))


def _unary(data, **kw):
    return (data.draw(S.tensors(**kw)),)


def _axis_case(data, distinct=False):
    shape = data.draw(S.shapes())
    x = data.draw(S.distinct_tensors(shape) if distinct else S.tensors(shape))
    return x, data.draw(S.axes(len(shape))), data.draw(st.booleans())


# Every path of MatMul's rule, whatever hypothesis draws first.
MATMUL_PATHS = [((2, 3), (3, 4)), ((2, 2, 3), (3, 2)), ((3,), (3, 2)), ((2, 3), (3,)),
                ((3,), (3,)), ((1, 2, 3), (2, 3, 2))]


def case_matmul(data):
    sa, sb = data.draw(st.one_of(st.sampled_from(MATMUL_PATHS), S.matmul_shapes()))
    return lambda a, b: a @ b, (data.draw(S.tensors(sa)), data.draw(S.tensors(sb)))


def case_linear(data):
    batch = data.draw(S.shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    x, w = data.draw(S.tensors(batch + (n_in,))), data.draw(S.tensors((n_out, n_in)))
    if data.draw(st.booleans()):
        return tg.linear, (x, w, data.draw(S.tensors((n_out,))))
    return tg.linear, (x, w)


def case_reduction(method, distinct=False):
    def case(data):
        x, axis, keepdims = _axis_case(data, distinct)
        return lambda x: getattr(x, method)(axis=axis, keepdims=keepdims), (x,)
    return case


def case_softmax(method):
    def case(data):
        shape = data.draw(S.shapes(min_dims=1))
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
        return lambda x: getattr(x, method)(axis=axis), (data.draw(S.tensors(shape)),)
    return case


def case_reshape(data):
    shape = data.draw(S.shapes())
    return lambda x: x.reshape(-1, 1), (data.draw(S.tensors(shape)),)


def case_transpose(data):
    shape = data.draw(S.shapes())
    perm = data.draw(S.permutations_of_axes(len(shape)))
    return lambda x: x.transpose(perm), (data.draw(S.tensors(shape)),)


def case_getitem(data):
    shape = data.draw(S.shapes(min_dims=1))
    x = data.draw(S.tensors(shape))
    index = data.draw(st.one_of(S.basic_indices(shape), S.integer_index_arrays(shape),
                                S.boolean_masks(shape)))
    return lambda x: x[index], (x,)


def case_scatter_add(data):
    shape = data.draw(S.shapes(min_dims=1))
    index = data.draw(S.integer_index_arrays(shape))
    index = index if isinstance(index, tuple) else (index,)
    g = data.draw(S.tensors(np.zeros(shape)[index].shape))
    return lambda g: ops.ScatterAdd.apply(g, shape=shape, dtype=np.dtype(np.float64), index=index), (g,)


def case_cat_or_stack(kind):
    def case(data):
        shape = data.draw(S.shapes(min_dims=1))
        n = data.draw(st.integers(1, 3))
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
        xs = []
        for _ in range(n):
            s = list(shape)
            if kind == "cat":
                s[axis] = data.draw(st.integers(1, 3))
            xs.append(data.draw(S.tensors(tuple(s))))
        join = tg.cat if kind == "cat" else tg.stack
        return lambda *xs: join(list(xs), axis=axis), tuple(xs)
    return case


def case_split(data):
    shape = data.draw(S.shapes(min_dims=1))
    axis = data.draw(st.integers(0, len(shape) - 1))
    size = data.draw(st.integers(1, shape[axis]))
    # some pieces unused: the rule's zero fill is recorded too
    keep = data.draw(st.integers(1, -(-shape[axis] // size)))
    return lambda x: tuple(x.split(size, axis=axis)[:keep]), (data.draw(S.tensors(shape)),)


def case_unbind(data):
    shape = data.draw(S.shapes(min_dims=1))
    keep = data.draw(st.integers(1, shape[0]))
    return lambda x: tuple(x.unbind(0)[:keep]), (data.draw(S.tensors(shape)),)


def case_linear_scan(data):
    T, B, H = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    a_shape = data.draw(st.sampled_from([(T, B, H), (T, 1, H), (1, B, H)]))
    a = data.draw(S.tensors(a_shape, low=-0.9, high=0.9))    # |a| < 1: a stable recurrence
    b = data.draw(S.tensors((T, B, H)))
    reverse = data.draw(st.booleans())
    if data.draw(st.booleans()):
        return (lambda a, b, h0: tg.linear_scan(a, b, h0, reverse=reverse),
                (a, b, data.draw(S.tensors((B, H)))))
    return lambda a, b: tg.linear_scan(a, b, reverse=reverse), (a, b)


def case_where(data):
    a, b = _pair(data)
    shape = np.broadcast_shapes(a.shape, b.shape)
    mask = data.draw(S.arrays(shape)) > 0
    return lambda a, b: tg.where(mask, a, b), (a, b)


CASES = {
    "Add": lambda d: (lambda a, b: a + b, _pair(d)),
    "Sub": lambda d: (lambda a, b: a - b, _pair(d)),
    "Mul": lambda d: (lambda a, b: a * b, _pair(d)),
    "Div": lambda d: (lambda a, b: a / b, _pair(d, away_from_zero=0.5)),
    "Pow": lambda d: (lambda a, b: a.abs() ** b, d.draw(S.pow_operands())),
    "Neg": lambda d: (lambda a: -a, _unary(d)),
    "MatMul": case_matmul,
    "Linear": case_linear,
    "Tanh": lambda d: (lambda a: a.tanh(), _unary(d)),
    "Sigmoid": lambda d: (lambda a: a.sigmoid(), _unary(d)),
    "Relu": lambda d: (lambda a: a.relu(), _unary(d, away_from_zero=0.1)),
    "Exp": lambda d: (lambda a: a.exp(), _unary(d)),
    "Log": lambda d: (lambda a: a.log(), _unary(d, low=0.2, high=3.0)),
    "Sqrt": lambda d: (lambda a: a.sqrt(), _unary(d, low=0.2, high=3.0)),
    "Abs": lambda d: (lambda a: a.abs(), _unary(d, away_from_zero=0.1)),
    "Sum": case_reduction("sum"),
    "Max": case_reduction("max", distinct=True),
    "Cast": lambda d: (lambda a: a.astype(np.float64), _unary(d)),
    "Reshape": case_reshape,
    "Transpose": case_transpose,
    "GetItem": case_getitem,
    "ScatterAdd": case_scatter_add,
    "Cat": case_cat_or_stack("cat"),
    "Stack": case_cat_or_stack("stack"),
    "Split": case_split,
    "Unbind": case_unbind,
    "Where": case_where,
    "LinearScan": case_linear_scan,
    "Softmax": case_softmax("softmax"),
    "LogSoftmax": case_softmax("log_softmax"),
}


def squared(fn):
    """``fn``'s outputs times themselves: the gradient reaching the op then depends on the
    inputs, so even a linear op's rule must record correctly on Tensors."""
    def composed(*xs):
        out = fn(*xs)
        if isinstance(out, tuple):
            return tuple(o * o for o in out)
        return out * out
    return composed


def test_every_op_of_the_catalogue_has_a_second_order_case():
    assert set(_catalogue()) == set(CASES), "add a case for each new op (and drop removed ones)"
    for name in _catalogue():
        assert getattr(ops, name).differentiable_backward, name


@pytest.mark.parametrize("name", _catalogue())
@settings(max_examples=12)
@given(data=st.data())
def test_second_derivative_of_every_op(name, data):
    fn, inputs = CASES[name](data)
    gradgradcheck(fn, *inputs)
    gradgradcheck(squared(fn), *inputs)


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid", "Exp", "Mul", "Div", "MatMul", "Softmax"])
@settings(max_examples=5)
@given(data=st.data())
def test_second_derivative_with_given_grad_outputs(name, data):
    fn, inputs = CASES[name](data)
    out = fn(*inputs)
    v = np.random.default_rng(1).standard_normal(out.shape)
    gradgradcheck(fn, *inputs, grad_outputs=v)


# --- higher orders: closed forms -------------------------------------------------------------------

def _derivatives(fn, x, order):
    """d^k/dx^k fn(x) elementwise for k = 1..order (fn pointwise), each by tg.grad."""
    out, results = fn(x), []
    for k in range(order):
        (out,) = tg.grad(out.sum(), x, create_graph=k < order - 1)
        results.append(out.data)
    return results


CLOSED_FORMS = {
    # f, [f', f'', f'''] as functions of x
    "tanh": (lambda x: x.tanh(), lambda x: [1 - np.tanh(x) ** 2,
                                            -2 * np.tanh(x) * (1 - np.tanh(x) ** 2),
                                            (6 * np.tanh(x) ** 2 - 2) * (1 - np.tanh(x) ** 2)]),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: [
        (s := 1 / (1 + np.exp(-x))) * (1 - s), s * (1 - s) * (1 - 2 * s),
        s * (1 - s) * (1 - 6 * s + 6 * s * s)]),
    "exp": (lambda x: x.exp(), lambda x: [np.exp(x)] * 3),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@given(x=S.tensors(low=-3.0, high=3.0))
def test_third_derivative_against_closed_form(name, x):
    fn, closed = CLOSED_FORMS[name]
    for k, (ours, expected) in enumerate(zip(_derivatives(fn, x, 3), closed(x.data)), start=1):
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12, err_msg=f"order {k}")


def test_fourth_derivative_of_exp_is_still_recorded():
    x = Tensor(np.array([0.2, -1.0]), requires_grad=True)
    np.testing.assert_allclose(_derivatives(lambda x: x.exp(), x, 4)[-1], np.exp(x.data))


# --- one rule, two interpreters: the fused kernels against the composed formulas -----------------

KERNEL_ARGS = {"tanh_backward": 2, "sigmoid_backward": 2, "relu_backward": 2, "sqrt_backward": 2,
               "div_rhs_backward": 3}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(KERNEL_ARGS))
@given(data=st.data())
def test_kernel_equals_the_formula_the_tensor_path_records(name, dtype, data):
    shape = data.draw(S.shapes(min_dims=1))
    args = [data.draw(S.arrays(shape, dtype=dtype, away_from_zero=0.25)) for _ in range(KERNEL_ARGS[name])]
    if name == "sqrt_backward":
        args[1] = np.abs(args[1])
    fused = getattr(kernels, name)(*args)                      # Numba (or numpy) on arrays
    composed = getattr(ops.TensorMath, name)(*[Tensor(a) for a in args])   # ops on Tensors
    assert composed.dtype == fused.dtype
    np.testing.assert_allclose(composed.data, fused, rtol=4 * np.finfo(dtype).eps, atol=0)
    assert set(KERNEL_ARGS) == {n for n in kernels._KERNEL_NAMES if n.endswith("_backward")}


# --- the mutation the checks must catch ----------------------------------------------------------

def _detached_tanh_rule(self, g):
    """Right to first order, wrong to second: the output as data, not as the graph's Tensor."""
    y = self.out.detach() if isinstance(self.out, Tensor) else self.out
    return (self.xp.tanh_backward(g, y),)


def test_a_rule_using_detached_data_fails_gradgradcheck_not_gradcheck():
    x = Tensor(np.array([[0.3, -0.8, 1.2]]), requires_grad=True)
    w = Tensor(np.array([[0.5], [-1.1], [0.7]]), requires_grad=True)
    fn = lambda x, w: (x @ w).tanh()  # noqa: E731
    assert gradgradcheck(fn, x, w)
    with unittest.mock.patch.object(ops.Tanh, "backward", _detached_tanh_rule):
        assert gradcheck(fn, x, w)                      # first order still right
        with pytest.raises(AssertionError, match=r"gradgradcheck: .* of input 0 \(shape \(1, 3\)\) "
                                                 r"is wrong at index"):
            gradgradcheck(fn, x, w)


def test_check_cell_second_order_catches_the_detached_rule():
    from tinygrad_rnn.testing import check_cell
    with unittest.mock.patch.object(ops.Tanh, "backward", _detached_tanh_rule):
        with pytest.raises(AssertionError, match=r"property \(8\)"):
            check_cell(lambda: tg.RNNCell(2, 2), second_order=True, max_examples=1,
                       gradcheck_examples=1, second_order_examples=1)


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
def test_check_cell_second_order_passes_the_builtin_cells(cell):
    from tinygrad_rnn.testing import check_cell
    check_cell(lambda: getattr(tg, cell)(2, 2), second_order=True, max_examples=2,
               gradcheck_examples=1, second_order_examples=2)


# --- create_graph through the RNN machinery ------------------------------------------------------

def _unroll_fn(cell, lengths=None):
    def fn(xs, h0):
        state = h0 if not isinstance(cell, tg.LSTMCell) else (h0, h0 * 0.5)
        ys, final = tg.Unroll(cell)(xs, state, lengths)
        return ys, final
    return fn


@pytest.mark.parametrize("cell_name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_second_order_through_unroll_with_lengths(cell_name):
    tg.manual_seed(3)
    cell = getattr(tg, cell_name)(2, 3, dtype=np.float64)
    rng = np.random.default_rng(0)
    xs = Tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    h0 = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    gradgradcheck(_unroll_fn(cell, lengths=np.array([3, 1])), xs, h0, params=cell.parameters())


def test_second_order_through_stack():
    tg.manual_seed(4)
    cell = tg.Stack([tg.LSTMCell(2, 2, dtype=np.float64), tg.GRUCell(2, 2, dtype=np.float64)])
    rng = np.random.default_rng(1)
    xs = Tensor(rng.standard_normal((2, 2, 2)), requires_grad=True)
    gradgradcheck(lambda xs: tg.Unroll(cell)(xs), xs, params=cell.parameters())


def test_second_order_with_every_weight_gradient_deferred(monkeypatch):
    # Force the OuterProductSum path for every use: create_graph must not defer, and the first
    # order walk (the finite differences' gradients) must still sum the factors right.
    monkeypatch.setattr(weight_grads, "DEFER_WEIGHT_GRAD_MIN_WORK", 0)
    tg.manual_seed(5)
    cell = tg.LSTMCell(3, 2, dtype=np.float64)
    xs = Tensor(np.random.default_rng(2).standard_normal((3, 2, 3)), requires_grad=True)
    loss = tg.Unroll(cell)(xs)[0].tanh().sum()
    grads = tg.grad(loss, cell.parameters(), create_graph=True)
    assert all(isinstance(g, Tensor) and g.requires_grad for g in grads)
    gradgradcheck(lambda xs: tg.Unroll(cell)(xs)[0], xs, params=cell.parameters())


# --- against PyTorch --------------------------------------------------------------------------------

def _torch_model(kind, num_layers):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(3, 4, num_layers=num_layers).double()
    return torch, m, tg.interop.from_torch(m)


@pytest.mark.parametrize("kind,num_layers", [("LSTM", 1), ("GRU", 1), ("LSTM", 2)])
def test_hvp_through_an_unroll_against_torch_func(kind, num_layers):
    torch, theirs, ours = _torch_model(kind, num_layers)
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((5, 2, 3))
    names = [n for n, _ in theirs.named_parameters()]
    vs = [rng.standard_normal(tuple(p.shape)) for p in theirs.parameters()]
    target = rng.standard_normal((5, 2, 4))

    def loss_ours(*params):
        ys, _ = ours(Tensor(xs))
        return ((ys - Tensor(target)) ** 2).mean()

    value, hv = tg.func.hvp(loss_ours, ours.parameters(), [Tensor(v) for v in vs])

    def loss_theirs(params):
        ys, _ = torch.func.functional_call(theirs, dict(zip(names, params)), (torch.tensor(xs),))
        return ((ys - torch.tensor(target)) ** 2).mean()

    primals = tuple(p.detach() for p in theirs.parameters())
    tangents = tuple(torch.tensor(v) for v in vs)
    _, expected = torch.func.jvp(torch.func.grad(loss_theirs), (primals,), (tangents,))
    np.testing.assert_allclose(value.item(), loss_theirs(primals).item(), rtol=1e-12)
    for ours_hv, theirs_hv, name in zip(hv, expected, names):
        np.testing.assert_allclose(ours_hv.data, theirs_hv.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_gradient_penalty_training_step_against_torch():
    """loss + lam * ||dL/dx||^2, differentiated w.r.t. the weights, then one SGD step."""
    torch, theirs, ours = _torch_model("LSTM", 1)
    rng = np.random.default_rng(8)
    xs, target, lam = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 4)), 0.7
    opt = tg.optim.SGD(ours.parameters(), lr=0.1)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(2):
        x = Tensor(xs, requires_grad=True)
        loss = ((ours(x)[0] - Tensor(target)) ** 2).mean()
        (dx,) = tg.grad(loss, x, create_graph=True)
        total = loss + lam * (dx * dx).sum()
        opt.zero_grad()
        total.backward()

        tx = torch.tensor(xs, requires_grad=True)
        tloss = ((theirs(tx)[0] - torch.tensor(target)) ** 2).mean()
        (tdx,) = torch.autograd.grad(tloss, tx, create_graph=True)
        ttotal = tloss + lam * (tdx * tdx).sum()
        topt.zero_grad()
        ttotal.backward()

        np.testing.assert_allclose(total.item(), ttotal.item(), rtol=1e-12)
        np.testing.assert_allclose(dx.data, tdx.detach().numpy(), rtol=1e-10, atol=1e-13)
        for p, tp in zip(ours.parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9, atol=1e-12)
        opt.step()
        topt.step()


# --- tg.grad and Tensor.backward(create_graph=True) -------------------------------------------------

def test_grad_returns_tensors_and_touches_no_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = Tensor(np.array([0.5, -0.3]), requires_grad=True)
    y = (x * w).tanh().sum()
    gx, gw = tg.grad(y, [x, w], retain_graph=True)
    assert isinstance(gx, Tensor) and not gx.requires_grad
    assert x.grad is None and w.grad is None
    np.testing.assert_allclose(gx.data, w.data * (1 - np.tanh(x.data * w.data) ** 2))
    (gx2,) = tg.grad(y, x)          # retain_graph=False by default: the graph is freed...
    with pytest.raises(RuntimeError, match="already freed"):
        tg.grad(y, x)
    np.testing.assert_allclose(gx2.data, gx.data)


def test_grad_of_an_intermediate_and_of_several_outputs():
    x = Tensor(np.array([0.4, -0.2, 0.9]), requires_grad=True)
    h = x.sigmoid()
    a, b = (h * 3).sum(), (h * h).sum()
    gh, gx = tg.grad([a, b], [h, x], grad_outputs=[Tensor(2.0), np.array(1.0)])
    np.testing.assert_allclose(gh.data, 6 + 2 * h.data)
    np.testing.assert_allclose(gx.data, (6 + 2 * h.data) * h.data * (1 - h.data))


def test_grad_errors():
    x = Tensor(np.ones(3), requires_grad=True)
    unused = Tensor(np.ones(2), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"outputs\[0\] has shape \(3,\); the gradient can be "
                                           "implied only for a single-element output"):
        tg.grad(y, x)
    with pytest.raises(RuntimeError, match=r"inputs\[1\] \(shape \(2,\)\) was not used .* "
                                           "allow_unused=True"):
        tg.grad(y.sum(), [x, unused], retain_graph=True)
    gx, none = tg.grad(y.sum(), [x, unused], allow_unused=True, retain_graph=True)
    assert none is None and np.all(gx.data == 2)
    with pytest.raises(RuntimeError, match=r"inputs\[0\] \(shape \(3,\)\) does not require grad"):
        tg.grad(y.sum(), Tensor(np.ones(3)))
    with pytest.raises(tg.ShapeError, match=r"its gradient has shape \(2,\), expected the "
                                            r"output's shape \(3,\)"):
        tg.grad(y, x, grad_outputs=np.ones(2))


def test_backward_create_graph_keeps_grad_an_array_and_fills_grad_tensor():
    x = Tensor(np.array([0.3, -1.2]), requires_grad=True)
    y = (x ** 3).sum()
    y.backward(create_graph=True)
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, 3 * x.data ** 2)
    assert x.grad_tensor.requires_grad
    np.testing.assert_allclose(x.grad_tensor.data, x.grad)
    x.grad_tensor.sum().backward()      # d/dx sum(3x^2) = 6x, accumulated onto 3x^2
    np.testing.assert_allclose(x.grad, 3 * x.data ** 2 + 6 * x.data)
    np.testing.assert_allclose(x.grad_tensor.data, x.grad)
    tg.optim.SGD([x], lr=0.1).zero_grad()
    assert x.grad is None and x.grad_tensor is None


def test_hooks_see_tensors_under_create_graph():
    x = Tensor(np.array([0.5, 1.5]), requires_grad=True)
    h = x.tanh()
    seen = []
    h.register_hook(lambda g: seen.append(g) or g * 2)
    (gx,) = tg.grad((h * h).sum(), x, create_graph=True)
    assert isinstance(seen[0], Tensor) and seen[0].requires_grad
    t = np.tanh(x.data)
    np.testing.assert_allclose(gx.data, 2 * 2 * t * (1 - t * t))
    gradgradcheck(lambda x: x.tanh() * x, x)


class _ArrayOnlyCube(autograd.Function):
    """A user's op whose backward works on arrays only (not written with self.xp)."""

    def forward(self, x):
        self.x = x
        return x ** 3

    def backward(self, g):
        return (g * 3 * self.x ** 2,)


def test_an_array_only_backward_is_right_once_and_refuses_a_second_time():
    x = Tensor(np.array([0.5, -2.0]), requires_grad=True)
    (gx,) = tg.grad(_ArrayOnlyCube.apply(x).sum(), x, create_graph=True)
    np.testing.assert_allclose(gx.data, 3 * x.data ** 2)
    with pytest.raises(RuntimeError, match="gradient of '_arrayonlycube' was computed by a backward "
                                           "that works on numpy arrays only"):
        tg.grad(gx.sum(), x)


def test_to_dot_draws_the_graph_of_a_gradient():
    x = Tensor(np.array([0.5]), requires_grad=True, name="x")
    (gx,) = tg.grad(x.tanh().sum(), x, create_graph=True)
    dot = tg.inspect.to_dot(gx)
    # the gradient g * (1 - y*y): recorded as mul and sub nodes, reaching the forward's tanh
    for op in ("mul", "sub", "tanh"):
        assert f"{op}" in dot
    assert "x" in dot


def test_the_internals_doc_example_runs_and_prints_what_the_doc_shows(tmp_path, monkeypatch, capsys):
    """docs/internals.md, section 7: the HVP of a tiny RNN against finite differences."""
    import pathlib
    import re
    import shutil
    text = (pathlib.Path(__file__).parent.parent / "docs" / "internals.md").read_text()
    section = text[text.index("## 7. Backward is itself a graph"):]
    start = section.index("```python\nimport numpy as np")
    code, shown = re.match(r"```python\n(.*?)```\n\n```\n(.*?)```", section[start:], re.S).groups()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    if shutil.which("dot") is None:
        code = code.replace('inspect.render(gv, "docs/figures/hvp_graph.png", names=cell)',
                            "inspect.to_dot(gv, names=cell)")
    exec(compile(code, "internals.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.splitlines() == shown.splitlines()
    difference = float(printed.splitlines()[-1].split()[-1])
    assert difference < 1e-8                      # the tape's H v equals finite differences
