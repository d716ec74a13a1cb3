"""Cells: the built-in ones and cells written the way a user writes them, each put through
check_cell; weight sharing as gradient accumulation; learned initial states; dtypes; errors."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn
from tinygrad_rnn.autograd import ShapeError
from tinygrad_rnn.testing import check_cell, gradcheck

# --- cells as a user writes them ----------------------------------------------------------


class MGUCell(tg.Cell):
    """Minimal gated unit, exactly as in DESIGN.md (no input_size attribute)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


class IndRNNCell(tg.Cell):
    """IndRNN (Li et al. 2018): h_t = relu(W x_t + u * h_{t-1} + b), u a vector."""

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = nn.Linear(input_size, hidden_size)
        self.u = nn.init.uniform_(nn.Parameter(np.empty(hidden_size, tg.get_default_dtype())), 0.0, 1.0)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        h = (self.W(x) + self.u * h).relu()
        return h, h


class PeepholeLSTMCell(tg.Cell):
    """LSTM whose gates also look at the cell state (Gers & Schmidhuber 2000)."""

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        dt = tg.get_default_dtype()
        self.p_i, self.p_f, self.p_o = (nn.init.uniform_(nn.Parameter(np.empty(hidden_size, dt)), -0.5, 0.5)
                                        for _ in range(3))

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size), tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = self.W(tg.cat([x, h], axis=-1)).chunk(4)
        c = (f + self.p_f * c).sigmoid() * c + (i + self.p_i * c).sigmoid() * g.tanh()
        h = (o + self.p_o * c).sigmoid() * c.tanh()
        return h, (h, c)


class ElmanWithReadout(tg.Cell):
    """The seed's vanilla RNN with its readout: output y_t = W_hy h_t differs from the state,
    and the output is a pair (y_t, h_t)."""

    def __init__(self, input_size, hidden_size, output_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_xh = nn.Linear(input_size, hidden_size, bias=False)
        self.W_hh = nn.Linear(hidden_size, hidden_size)
        self.W_hy = nn.Linear(hidden_size, output_size)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        h = (self.W_hh(h) + self.W_xh(x)).tanh()
        return (self.W_hy(h), h), h


# --- check_cell on every cell -------------------------------------------------------------

BUILTIN = {
    "rnn_tanh": lambda: tg.RNNCell(3, 4),
    "rnn_relu": lambda: tg.RNNCell(3, 4, nonlinearity="relu"),
    "rnn_relu_nobias": lambda: tg.RNNCell(3, 4, nonlinearity="relu", bias=False),
    "lstm": lambda: tg.LSTMCell(3, 4),
    "lstm_nobias": lambda: tg.LSTMCell(2, 3, bias=False),
    "lstm_learn_init": lambda: tg.LSTMCell(2, 3, learn_init=True),
    "gru": lambda: tg.GRUCell(3, 4),
    "gru_nobias_learn_init": lambda: tg.GRUCell(2, 3, bias=False, learn_init=True),
    "rnn_learn_init": lambda: tg.RNNCell(2, 3, learn_init=True),
}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_check_cell_builtin(name):
    check_cell(BUILTIN[name])


def test_check_cell_stack_of_mixed_cells():
    check_cell(lambda: tg.Stack([tg.LSTMCell(2, 3), tg.GRUCell(3, 4), tg.RNNCell(4, 3, nonlinearity="relu")]))


def test_check_cell_stack_of_custom_cells():
    check_cell(lambda: tg.Stack([MGUCell(2, 3), IndRNNCell(3, 3)]), input_size=2)


def test_check_cell_mgu():
    check_cell(lambda: MGUCell(3, 4), input_size=3)


def test_check_cell_indrnn():
    check_cell(lambda: IndRNNCell(3, 4))


def test_check_cell_peephole_lstm():
    check_cell(lambda: PeepholeLSTMCell(2, 3))


def test_check_cell_output_differs_from_state():
    check_cell(lambda: ElmanWithReadout(2, 3, 2))


def test_check_cell_feedback_cell_teacher_forced():
    # teacher_prob=1.0 reads the external input at every step: a deterministic cell.
    check_cell(lambda: tg.FeedbackCell(tg.GRUCell(2, 3), readout=nn.Linear(3, 2), teacher_prob=1.0),
               input_size=2)


def test_check_cell_feedback_cell_free_running():
    # No external input (width 0): one-to-many generation is an unroll of this cell.
    check_cell(lambda: tg.FeedbackCell(tg.LSTMCell(2, 3), readout=nn.Linear(3, 2)), input_size=0)


# --- the built-in equations, written out in numpy ----------------------------------------

def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_cell_equations_match_numpy(rng):
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    rnn = tg.RNNCell(3, 4)
    out, new = rnn(Tensor(x), Tensor(h))
    expected = np.tanh(x @ rnn.weight_ih.data.T + rnn.bias_ih.data + h @ rnn.weight_hh.data.T
                       + rnn.bias_hh.data)
    np.testing.assert_allclose(out.data, expected, rtol=1e-13, atol=1e-13)
    assert new is out

    lstm = tg.LSTMCell(3, 4)
    out, (h1, c1) = lstm(Tensor(x), (Tensor(h), Tensor(c)))
    gates = x @ lstm.weight_ih.data.T + lstm.bias_ih.data + h @ lstm.weight_hh.data.T + lstm.bias_hh.data
    i, f, g, o = np.split(gates, 4, axis=1)
    c_ref = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    np.testing.assert_allclose(c1.data, c_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(h1.data, _sigmoid(o) * np.tanh(c_ref), rtol=1e-13, atol=1e-13)

    gru = tg.GRUCell(3, 4)
    out, _ = gru(Tensor(x), Tensor(h))
    gx = x @ gru.weight_ih.data.T + gru.bias_ih.data
    gh = h @ gru.weight_hh.data.T + gru.bias_hh.data
    r = _sigmoid(gx[:, :4] + gh[:, :4])
    z = _sigmoid(gx[:, 4:8] + gh[:, 4:8])
    n = np.tanh(gx[:, 8:] + r * gh[:, 8:])
    np.testing.assert_allclose(out.data, (1 - z) * n + z * h, rtol=1e-13, atol=1e-13)


# --- weight sharing is gradient accumulation ------------------------------------------------

@pytest.mark.parametrize("cell_cls", [tg.RNNCell, tg.LSTMCell, tg.GRUCell])
def test_shared_weight_gradient_is_sum_of_per_step_contributions(cell_cls, rng):
    T, B, I, H = 5, 2, 3, 4
    xs = rng.standard_normal((T, B, I))
    v = rng.standard_normal((T, B, H))
    shared = cell_cls(I, H)
    ys, _ = tg.Unroll(shared)(Tensor(xs))
    (ys * Tensor(v)).sum().backward()

    # The same computation with a separate copy of the weights at every step: each copy's
    # gradient is that step's contribution alone.
    copies = [cell_cls(I, H) for _ in range(T)]
    for c in copies:
        c.load_state_dict(shared.state_dict())
    state = shared.init_state(B)
    outs = []
    for t, c in enumerate(copies):
        out, state = c(Tensor(xs[t]), state)
        outs.append(out)
    (tg.stack(outs) * Tensor(v)).sum().backward()

    for name, p in shared.named_parameters():
        contributions = [dict(c.named_parameters())[name].grad for c in copies]
        np.testing.assert_allclose(p.grad, sum(contributions), rtol=1e-12, atol=1e-14)
        # Every step contributes something different: the sum is not one step counted T times.
        assert not np.allclose(contributions[0], contributions[-1])


# --- learned initial state --------------------------------------------------------------------

@pytest.mark.parametrize("cell_cls", [tg.RNNCell, tg.LSTMCell, tg.GRUCell])
def test_learned_initial_state_gets_gradient_summed_over_batch(cell_cls, rng):
    B, T = 3, 4
    cell = cell_cls(2, 3, learn_init=True)
    for p in cell.initial_state:
        p.data[...] = rng.standard_normal(p.shape)
    xs = Tensor(rng.standard_normal((T, B, 2)))
    v = rng.standard_normal((T, B, 3))
    ys, _ = tg.Unroll(cell)(xs)
    (ys * Tensor(v)).sum().backward()

    # The same run from an explicit initial state: its gradient summed over the batch is
    # the learned state's gradient.
    explicit = tg.rnn.tree_map(
        lambda p: Tensor(np.broadcast_to(p.data, (B,) + p.shape).copy(), requires_grad=True),
        cell.initial_state if cell_cls is tg.LSTMCell else cell.initial_state[0])
    ys2, _ = tg.Unroll(cell)(xs, explicit)
    np.testing.assert_allclose(ys2.data, ys.data, rtol=1e-14)
    (ys2 * Tensor(v)).sum().backward()
    leaves = explicit if isinstance(explicit, tuple) else (explicit,)
    for p, leaf in zip(cell.initial_state, leaves):
        assert p.grad is not None and np.abs(p.grad).sum() > 0
        np.testing.assert_allclose(p.grad, leaf.grad.sum(axis=0), rtol=1e-12, atol=1e-14)


def test_learned_initial_state_gradcheck(rng):
    cell = tg.LSTMCell(2, 3, learn_init=True)
    xs = Tensor(rng.standard_normal((3, 2, 2)))
    gradcheck(lambda: tg.Unroll(cell)(xs), params=cell.initial_state)


# --- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell_cls", [tg.RNNCell, tg.LSTMCell, tg.GRUCell])
@pytest.mark.parametrize("how", ["argument", "default"])
def test_float32_cells_keep_float32(cell_cls, how, rng):
    if how == "default":
        tg.set_default_dtype(np.float32)
        cell = cell_cls(3, 4, learn_init=True)
    else:
        cell = cell_cls(3, 4, learn_init=True, dtype=np.float32)
    assert all(p.dtype == np.float32 for p in cell.parameters())
    xs = Tensor(rng.standard_normal((4, 2, 3)).astype(np.float32), requires_grad=True)
    ys, state = tg.Unroll(cell)(xs)
    assert ys.dtype == np.float32
    assert all(s.dtype == np.float32 for s in tg.rnn.cell.tree_leaves(state))
    (ys * 0.5).sum().backward()
    assert xs.grad.dtype == np.float32
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in cell.parameters())

    # And the numbers are the float64 cell's, to float32 precision.
    cell64 = cell_cls(3, 4, learn_init=True, dtype=np.float64)
    cell64.load_state_dict(cell.state_dict())
    ys64, _ = tg.Unroll(cell64)(Tensor(xs.data.astype(np.float64)))
    np.testing.assert_allclose(ys.data, ys64.data, rtol=1e-5, atol=1e-6)


# --- errors ---------------------------------------------------------------------------------------

def test_bad_nonlinearity_is_an_error():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        tg.RNNCell(2, 3, nonlinearity="sigmoid")


@pytest.mark.parametrize("cell_cls", [tg.RNNCell, tg.LSTMCell, tg.GRUCell])
def test_non_positive_sizes_are_an_error(cell_cls):
    with pytest.raises(ValueError, match=f"{cell_cls.__name__}: input_size and hidden_size must be positive"):
        cell_cls(0, 3)


def test_stack_with_mismatched_sizes_is_an_error():
    with pytest.raises(ShapeError, match="Stack: layer 0 outputs size 4 but layer 1 expects input size 5"):
        tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(5, 4)])


def test_empty_stack_is_an_error():
    with pytest.raises(ValueError, match="Stack: needs at least one cell"):
        tg.Stack([])


def test_cell_with_wrong_input_size_names_the_shapes():
    cell = tg.LSTMCell(3, 4)
    with pytest.raises(ShapeError,
                       match=r"linear: input of shape \(2, 5\) does not fit weight of shape \(16, 3\)"):
        cell(Tensor(np.zeros((2, 5))), cell.init_state(2))


def test_abstract_cell_methods_say_what_to_define():
    class Half(tg.Cell):
        pass

    with pytest.raises(NotImplementedError, match=r"Half.init_state is abstract"):
        Half().init_state(2)
    with pytest.raises(NotImplementedError, match=r"Half.forward is abstract"):
        Half()(Tensor(np.zeros((1, 1))), None)


def test_stack_state_is_tuple_of_layer_states():
    stack = tg.Stack([tg.LSTMCell(2, 3), tg.GRUCell(3, 4)])
    s = stack.init_state(5)
    assert isinstance(s, tuple) and len(s) == 2
    assert isinstance(s[0], tuple) and [t.shape for t in s[0]] == [(5, 3), (5, 3)]
    assert s[1].shape == (5, 4)
    assert stack.input_size == 2 and stack.hidden_size == 4
    names = [n for n, _ in stack.named_parameters()]
    assert names[0] == "cells.0.weight_ih" and "cells.1.bias_hh" in names


# --- the guide's examples run as written ---------------------------------------------------

def test_docs_cells_md_examples_run():
    """Every python block of docs/cells.md, in order, in one namespace; then the guide's
    one-line check_cell test."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cells.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        if "import torch" in block and importlib.util.find_spec("torch") is None:
            continue
        exec(compile(block, "docs/cells.md", "exec"), namespace)
    namespace["test_mgu_cell"]()


def test_calling_a_built_in_cell_with_a_wrongly_structured_state_names_it():
    lstm, gru = tg.LSTMCell(4, 8), tg.GRUCell(4, 8)
    x = tg.zeros(3, 4)
    with pytest.raises(tg.ShapeError, match=r"LSTMCell: the state must be a tuple \(h, c\).*Tensor\(3, 8\)"):
        lstm(x, tg.zeros(3, 8))
    with pytest.raises(tg.ShapeError, match=r"GRUCell: the state must be a Tensor h"):
        gru(x, (tg.zeros(3, 8), tg.zeros(3, 8)))
    h, (h2, c) = lstm(x, lstm.init_state(3))
    assert h.shape == c.shape == (3, 8) and h is h2
