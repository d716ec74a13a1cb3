"""Gradients of gradients through the compiled path: its node falls back to an eager replay
under create_graph (compile/runtime.py), with the eager cell's numbers."""

import unittest.mock

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn
from tinygrad_rnn.compile import runtime
from tinygrad_rnn.rnn.cell import tree_leaves
from tinygrad_rnn.testing import gradgradcheck


class MGUCell(tg.Cell):
    """The minimal gated unit as equations: linear of cat([x, h]) (the compiler splits W)."""

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size, dtype=np.float64)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size, dtype=np.float64)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size, dtype=np.float64)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


CELLS = {
    "LSTMCell": lambda i, h: tg.LSTMCell(i, h, dtype=np.float64),
    "GRUCell": lambda i, h: tg.GRUCell(i, h, dtype=np.float64),
    "MGUCell": MGUCell,
}


def _state(cell, h0):
    return (h0, h0 * 0.5) if isinstance(cell, tg.LSTMCell) else h0


def _unroll_fn(cell, lengths=None):
    def fn(xs, h0):
        return tg.Unroll(cell)(xs, _state(cell.eager if hasattr(cell, "eager") else cell, h0),
                               lengths)
    return fn


def _replays(monkeypatch):
    """Count the eager replays, so a test knows the compiled node (not eager) was used."""
    calls = []
    original = runtime.Program.replay

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)
    monkeypatch.setattr(runtime.Program, "replay", counted)
    return calls


@pytest.mark.parametrize("name", sorted(CELLS))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_gradgradcheck_through_compiled_unroll_with_lengths(name, data):
    T = data.draw(st.integers(1, 3), label="T")
    B = data.draw(st.integers(1, 3), label="B")
    I = data.draw(st.integers(1, 3), label="I")
    H = data.draw(st.integers(1, 3), label="H")
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    floats = st.floats(-1, 1, allow_nan=False, width=64)
    tg.manual_seed(data.draw(st.integers(0, 100), label="seed"))
    cell = tg.compile(CELLS[name](I, H), fallback=False)
    xs = Tensor(data.draw(hnp.arrays(np.float64, (T, B, I), elements=floats)), requires_grad=True)
    h0 = Tensor(data.draw(hnp.arrays(np.float64, (B, H), elements=floats)), requires_grad=True)
    with unittest.mock.patch.object(runtime.Program, "replay", autospec=True,
                                    side_effect=runtime.Program.replay) as replay:
        gradgradcheck(_unroll_fn(cell, lengths), xs, h0, params=cell.parameters())
    assert replay.called


def _lstm_and_inputs(seed=0, T=4, B=3, I=2, H=3):
    tg.manual_seed(seed)
    eager = tg.LSTMCell(I, H, dtype=np.float64)
    rng = np.random.default_rng(seed)
    xs = Tensor(rng.standard_normal((T, B, I)))
    h0 = Tensor(rng.standard_normal((B, H)))
    return eager, xs, h0


def test_hvp_through_compiled_lstm_equals_eager(monkeypatch):
    eager, xs, h0 = _lstm_and_inputs()
    lengths = np.array([4, 2, 3])
    params = eager.parameters()
    rng = np.random.default_rng(7)
    tangents = tuple(Tensor(rng.standard_normal(p.shape)) for p in params)

    def hvp(cell):
        def f():
            ys, (h, c) = tg.Unroll(cell)(xs, (h0, h0 * 0.5), lengths)
            return (ys.tanh() * ys).sum() + (c * h).sum()
        g = tg.grad(f(), params, create_graph=True)
        dot = sum((gi * v).sum() for gi, v in zip(g, tangents))
        return [t.data for t in tg.grad(dot, params)]

    calls = _replays(monkeypatch)
    compiled = hvp(tg.compile(eager, fallback=False))
    assert calls
    reference = hvp(eager)
    for a, b in zip(compiled, reference):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert any(np.abs(b).max() > 1e-3 for b in reference)   # a real, nonzero HVP

    # tg.func.hvp over the input sequence, too.
    compiled_cell = tg.compile(eager, fallback=False)
    v = Tensor(rng.standard_normal(xs.shape))

    def seq_loss(cell):
        return lambda x: (tg.Unroll(cell)(x, (h0, h0 * 0.5), lengths)[0] ** 2).sum()
    value_c, hv_c = tg.func.hvp(seq_loss(compiled_cell), (xs,), (v,))
    value_e, hv_e = tg.func.hvp(seq_loss(eager), (xs,), (v,))
    np.testing.assert_allclose(value_c.data, value_e.data, rtol=1e-10)
    np.testing.assert_allclose(tree_leaves(hv_c)[0].data, tree_leaves(hv_e)[0].data,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradient_penalty_step_compiled_equals_eager(name, monkeypatch):
    """loss + ||dL/dx||^2: the parameter gradients of one step, compiled and eager."""
    calls = _replays(monkeypatch)

    def step(compiled):
        tg.manual_seed(5)
        cell = CELLS[name](2, 3)
        if compiled:
            cell = tg.compile(cell, fallback=False)
        rng = np.random.default_rng(5)
        xs = Tensor(rng.standard_normal((5, 2, 2)), requires_grad=True)
        h0 = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
        ys, _ = _unroll_fn(cell, np.array([5, 3]))(xs, h0)
        loss = (ys * ys).sum()
        dx, dh0 = tg.grad(loss, [xs, h0], create_graph=True)
        total = loss + (dx * dx).sum() + (dh0 * dh0).sum()
        params = cell.parameters()
        opt = tg.optim.SGD(params, lr=0.1)
        opt.zero_grad()
        total.backward()
        grads = [p.grad.copy() for p in params]
        opt.step()
        return grads, [p.data.copy() for p in params]

    grads_c, after_c = step(compiled=True)
    assert calls
    grads_e, after_e = step(compiled=False)
    for a, b in zip(grads_c + after_c, grads_e + after_e):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_third_order_through_compiled_unroll():
    """The replay is on the tape, so the gradient of the gradient is itself differentiable."""
    def third(cell):
        tg.manual_seed(2)
        x = Tensor(np.linspace(-1, 1, 6).reshape(3, 1, 2), requires_grad=True)
        ys, _ = tg.Unroll(cell)(x)
        (g,) = tg.grad(ys.sum(), [x], create_graph=True)
        (gg,) = tg.grad((g * g).sum(), [x], create_graph=True)
        (ggg,) = tg.grad((gg * gg).sum(), [x])
        return ggg.data

    tg.manual_seed(9)
    eager = tg.GRUCell(2, 2, dtype=np.float64)
    np.testing.assert_allclose(third(tg.compile(eager, fallback=False)), third(eager),
                               rtol=1e-10, atol=1e-12)


def test_first_order_never_replays(monkeypatch):
    """Without create_graph the generated reverse loop runs, not the eager replay."""
    calls = _replays(monkeypatch)
    eager, xs, h0 = _lstm_and_inputs()
    xs.requires_grad = True
    ys, _ = tg.Unroll(tg.compile(eager, fallback=False))(xs, (h0, h0))
    ys.sum().backward()
    assert xs.grad is not None and not calls


def test_a_planted_wrong_second_derivative_in_the_replay_is_caught(monkeypatch):
    """A replay that detaches the weights is right to first order, wrong to second."""
    original = runtime.Program.replay

    def detached(self, inputs, T, lengths):
        n_front = len(self.layout.perstep) + len(self.graph.states)
        inputs = list(inputs[:n_front]) + [Tensor(t.data) for t in inputs[n_front:]]
        return original(self, inputs, T, lengths)
    monkeypatch.setattr(runtime.Program, "replay", detached)
    tg.manual_seed(1)
    cell = tg.compile(tg.GRUCell(2, 2, dtype=np.float64), fallback=False)
    rng = np.random.default_rng(1)
    xs = Tensor(rng.standard_normal((2, 2, 2)), requires_grad=True)
    h0 = Tensor(rng.standard_normal((2, 2)), requires_grad=True)
    with pytest.raises(AssertionError, match="gradgradcheck"):
        gradgradcheck(_unroll_fn(cell), xs, h0, params=cell.parameters())
