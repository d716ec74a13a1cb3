"""check_cell itself: it passes correct cells and fails broken ones on the right property.

Each broken cell below is a plausible mistake in a user's cell; check_cell must reject it
with one AssertionError that names the property and shows hypothesis' shrunk example.
"""

import functools

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn.autograd import Function
from tinygrad_rnn.nn import init
from tinygrad_rnn.testing import cells as cells_module
from tinygrad_rnn.testing import check_cell


def fails(factory, prop, **kw):
    """check_cell(factory) must fail on property ``prop``; returns the message."""
    with pytest.raises(AssertionError) as info:
        check_cell(factory, **kw)
    assert type(info.value) is AssertionError          # not an exception group
    msg = str(info.value)
    assert f"property ({prop}) failed" in msg, msg
    assert "Case(T=" in msg, msg                        # hypothesis' falsifying example
    return msg


# --- broken cells ---------------------------------------------------------------------------

class DetachedRNN(tg.RNNCell):
    """Cuts its own recurrence: BPTT stops at every step."""

    def forward(self, x, h):
        return super().forward(x, h.detach())


class SloppyTanh(Function):
    """tanh whose backward is 1% off: the kind of bug a hand-written derivative has."""

    def forward(self, a):
        self.out = np.tanh(a)
        return self.out

    def backward(self, g):
        return (g * (1 - self.out ** 2) * 1.01,)


class SloppyRNN(tg.RNNCell):
    def forward(self, x, h):
        a = tg.linear(x, self.weight_ih, self.bias_ih) + tg.linear(h, self.weight_hh, self.bias_hh)
        h = SloppyTanh.apply(a)
        return h, h


class TupleInitLSTM(tg.LSTMCell):
    """init_state wraps (h, c) in one more tuple than forward returns."""

    def init_state(self, batch_size):
        return (super().init_state(batch_size),)

    def forward(self, x, state):
        if len(state) == 1:
            state = state[0]
        return super().forward(x, state)


class UnbatchedInitRNN(tg.RNNCell):
    """init_state forgets the batch axis."""

    def init_state(self, batch_size):
        return tg.zeros(self.hidden_size)


class Float32StateRNN(tg.RNNCell):
    """Silently drops the state to float32."""

    def forward(self, x, h):
        out, h = super().forward(x, h)
        return out, h.astype(np.float32)


class CountingRNN(tg.RNNCell):
    """Keeps a counter between calls: Unroll and a hand loop see different cells."""

    calls = 0

    def forward(self, x, h):
        self.calls += 1
        out, h = super().forward(x, h * (1.0 + 0.1 * self.calls))
        return out, h


class BatchMixingRNN(tg.RNNCell):
    """Mixes the sequences of a batch (a batch-statistics normalisation): a padded sequence
    no longer equals itself run alone."""

    def forward(self, x, h):
        h = h - h.mean(axis=0, keepdims=True)
        return super().forward(x, h)


# --- correct cells pass, broken cells fail on the right property -------------------------

def test_passes_a_correct_cell():
    check_cell(lambda: tg.LSTMCell(3, 4))


def test_detached_recurrence_fails_gradients():
    msg = fails(lambda: DetachedRNN(3, 4), 1)
    assert "gradcheck" in msg


def test_wrong_backward_inside_a_cell_fails_gradients():
    fails(lambda: SloppyRNN(3, 4), 1)


def test_wrong_init_state_structure_fails_structure():
    msg = fails(lambda: TupleInitLSTM(3, 4), 3)
    # the built-in LSTM equations now reject the malformed state themselves, naming it
    assert "the state must be a tuple (h, c)" in msg


def test_init_state_without_batch_axis_fails_structure():
    msg = fails(lambda: UnbatchedInitRNN(3, 4), 3)
    assert "batch" in msg


def test_state_dtype_change_fails_structure():
    msg = fails(lambda: Float32StateRNN(3, 4), 3)
    assert "float32" in msg


def test_cell_with_memory_between_calls_fails_unroll_vs_loop():
    fails(lambda: CountingRNN(3, 4), 2)


def test_batch_mixing_cell_fails_lengths():
    msg = fails(lambda: BatchMixingRNN(3, 4), 4)
    assert "alone" in msg


def test_broken_detach_fails_truncated_bptt(monkeypatch):
    # A truncated-BPTT loop that does not cut the graph between windows back-propagates
    # into a graph the previous window's backward already freed.
    monkeypatch.setattr(cells_module, "detach_state", lambda state: state)
    msg = fails(lambda: tg.GRUCell(2, 3), 5)
    assert "freed" in msg


def test_shrinks_to_a_small_example():
    msg = fails(lambda: DetachedRNN(2, 3), 1)
    # Shrinking leaves the simplest failing case: the first inputs hypothesis can find.
    assert "B=1" in msg and "weight_seed=0" in msg


# --- arguments, errors, and what check_cell leaves behind ----------------------------------

class NoSizeCell(tg.Cell):
    """A cell without an input_size attribute."""

    def __init__(self, hidden_size):
        self.hidden_size = hidden_size
        self.lin = tg.nn.Linear(2 + hidden_size, hidden_size)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        h = self.lin(tg.cat([x, h], axis=-1)).tanh()
        return h, h


def test_input_size_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="NoSizeCell has no input_size attribute"):
        check_cell(lambda: NoSizeCell(3))


def test_input_size_argument_is_used():
    check_cell(lambda: NoSizeCell(3), input_size=2, max_examples=5, gradcheck_examples=1)


def test_wrong_input_size_fails():
    with pytest.raises(AssertionError, match=r"property \(3\)[^\n]*\nShapeError: linear: input of shape"):
        check_cell(lambda: NoSizeCell(3), input_size=4, max_examples=5)


def test_factory_must_return_a_cell():
    with pytest.raises(TypeError, match="must return a cell"):
        check_cell(lambda: tg.nn.Linear(2, 3), input_size=2)


def test_float32_parameters_are_rejected():
    with pytest.raises(TypeError, match="float32"):
        check_cell(lambda: tg.RNNCell(2, 3, dtype=np.float32))


def test_factory_taking_dtype_gets_float64():
    seen = []

    def factory(dtype=np.float32):
        seen.append(np.dtype(dtype))
        return tg.GRUCell(2, 3, dtype=dtype)

    check_cell(factory, max_examples=3, gradcheck_examples=1)
    assert set(seen) == {np.dtype(np.float64)}
    check_cell(functools.partial(tg.LSTMCell, 2, 3), max_examples=3, gradcheck_examples=1)


def test_restores_default_dtype_and_weight_rng():
    tg.set_default_dtype(np.float32)
    tg.manual_seed(123)
    expected = np.random.default_rng(123).uniform(size=3)   # what the next draw must be
    check_cell(lambda: tg.RNNCell(2, 3), max_examples=3, gradcheck_examples=1)
    assert tg.get_default_dtype() == np.float32
    np.testing.assert_array_equal(init.rng().uniform(size=3), expected)
    with pytest.raises(AssertionError):
        check_cell(lambda: DetachedRNN(2, 3))
    assert tg.get_default_dtype() == np.float32


def test_builds_the_cell_in_float64_under_a_float32_default():
    tg.set_default_dtype(np.float32)
    check_cell(lambda: tg.LSTMCell(2, 3), max_examples=3, gradcheck_examples=1)


def test_dropout_is_off_during_the_check():
    # Dropout masks in training mode would turn finite differences into noise: check_cell
    # runs the cells it builds in eval mode (without that, this check fails).
    check_cell(lambda: tg.Stack([tg.GRUCell(2, 3), tg.GRUCell(3, 3)], dropout=0.5),
               max_examples=5, gradcheck_examples=1)


def test_falsifying_example_shows_the_values():
    msg = fails(lambda: SloppyRNN(2, 3), 1)
    assert "xs=[[[" in msg
    assert "state=" in msg


class TupleInitCustomCell(tg.Cell):
    """A user's cell (no built-in state check) whose init_state nests one level deeper than
    the state its forward returns."""

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = tg.nn.Linear(input_size + hidden_size, hidden_size)

    def init_state(self, batch_size):
        return (tg.zeros(batch_size, self.hidden_size),)

    def forward(self, x, state):
        h = state[0] if isinstance(state, tuple) else state
        h = self.W(tg.cat([x, h], axis=-1)).tanh()
        return h, h


def test_custom_cell_whose_state_changes_structure_fails_structure():
    msg = fails(lambda: TupleInitCustomCell(3, 4), 3)
    assert "came out as" in msg
