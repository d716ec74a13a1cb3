"""MinGRUCell and MinLSTMCell: the paper's equations (numpy reference), the sequence form
(one linear_scan) against the stepped form, BPTT against finite differences, check_cell, and
their use in Stack, generate, Seq2Seq, Bidirectional; bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import ShapeError, Tensor
from tinygrad_rnn.testing import check_cell, gradcheck
from tinygrad_rnn.testing import strategies as S
from tinygrad_rnn.testing.cells import Case, _Stepped, _Suite

CELLS = [tg.MinGRUCell, tg.MinLSTMCell]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(cell, xs, h0, lengths=None):
    """Feng et al.'s equations in numpy, one step at a time; finished sequences keep h."""
    W, b = cell.weight_ih.data, cell.bias_ih.data
    H = cell.hidden_size
    h, ys = h0.copy(), []
    for t, x in enumerate(xs):
        pre = x @ W.T + b
        if isinstance(cell, tg.MinGRUCell):
            z, h_tilde = sigmoid(pre[:, :H]), pre[:, H:]
            new = (1 - z) * h + z * h_tilde
        else:
            f, i, h_tilde = sigmoid(pre[:, :H]), sigmoid(pre[:, H:2 * H]), pre[:, 2 * H:]
            new = f / (f + i) * h + i / (f + i) * h_tilde
        alive = np.ones((len(x), 1), bool) if lengths is None else (t < lengths)[:, None]
        h = np.where(alive, new, h)
        ys.append(np.where(alive, new, 0.0))
    return np.stack(ys), h


@st.composite
def sequences(draw):
    T, B, I, H = (draw(st.integers(1, n)) for n in (6, 3, 3, 4))
    xs = draw(S.arrays((T, B, I)))
    h0 = draw(S.arrays((B, H)))
    lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    return xs, h0, lengths, draw(st.integers(0, 1000))


@pytest.mark.parametrize("cls", CELLS)
@settings(max_examples=25)
@given(problem=sequences())
def test_sequence_form_is_the_papers_equations(cls, problem):
    xs, h0, lengths, seed = problem
    tg.manual_seed(seed)
    cell = cls(xs.shape[2], h0.shape[1])
    for lens in (None, lengths):
        ys, h = tg.Unroll(cell)(Tensor(xs), Tensor(h0), lengths=lens)
        ys_ref, h_ref = reference(cell, xs, h0, lens)
        np.testing.assert_allclose(ys.data, ys_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h.data, h_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", CELLS)
@settings(max_examples=15)
@given(problem=sequences())
def test_sequence_form_equals_stepping_in_values_and_gradients(cls, problem):
    xs, h0, lengths, seed = problem
    tg.manual_seed(seed)
    cell = cls(xs.shape[2], h0.shape[1])
    g = np.random.default_rng(seed).standard_normal((xs.shape[0], xs.shape[1], h0.shape[1]))
    results = []
    for runner in (cell, _Stepped(cell)):
        for p in cell.parameters():
            p.grad = None
        x, s = Tensor(xs, requires_grad=True), Tensor(h0, requires_grad=True)
        ys, h = tg.Unroll(runner)(x, s, lengths=lengths)
        ((ys * Tensor(g)).sum() + (h * h).sum()).backward()
        results.append([ys.data, h.data, x.grad, s.grad] + [p.grad for p in cell.parameters()])
    for ours, stepped in zip(*results):
        np.testing.assert_allclose(ours, stepped, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", CELLS)
def test_bptt_gradients_equal_finite_differences_with_lengths(cls):
    rng = np.random.default_rng(0)
    tg.manual_seed(1)
    cell = cls(2, 3, learn_init=True)
    xs = Tensor(rng.standard_normal((5, 3, 2)), requires_grad=True, name="xs")
    h0 = Tensor(rng.standard_normal((3, 3)), requires_grad=True, name="h0")
    lengths = np.array([5, 2, 0])
    assert gradcheck(lambda x, h: tg.Unroll(cell)(x, h, lengths=lengths), xs, h0,
                     params=cell.parameters())
    assert gradcheck(lambda x: tg.Unroll(cell)(x, lengths=lengths), xs, params=cell.parameters())


@pytest.mark.parametrize("factory", [
    lambda dtype=None: tg.MinGRUCell(3, 4, dtype=dtype),
    lambda dtype=None: tg.MinLSTMCell(3, 4, dtype=dtype),
    lambda dtype=None: tg.MinGRUCell(2, 3, bias=False, learn_init=True, dtype=dtype),
    lambda dtype=None: tg.MinLSTMCell(2, 3, learn_init=True, forget_bias=3.0, dtype=dtype),
], ids=["mingru", "minlstm", "mingru-nobias-learninit", "minlstm-learninit"])
def test_check_cell_passes(factory):
    check_cell(factory)


def test_check_cell_stack_of_min_cells_with_dropout():
    check_cell(lambda: tg.Stack([tg.MinGRUCell(3, 4), tg.MinLSTMCell(4, 2)], dropout=0.5))


class _BrokenSequence(tg.MinGRUCell):
    """forward_sequence forgets to hold finished sequences' state (a_t = 1, b_t = 0)."""

    def forward_sequence(self, xs, h0, lengths=None):
        return super().forward_sequence(xs, h0, None)


def test_check_cell_property_6_catches_a_sequence_form_that_ignores_lengths():
    suite = _Suite(lambda: _BrokenSequence(2, 3), 2, _BrokenSequence(2, 3), "_BrokenSequence",
                   3, 2, 1e-6, 1e-5)
    xs = np.random.default_rng(0).standard_normal((3, 2, 2))
    suite.sequence_matches_steps(Case(3, 2, 0, xs, lengths=np.array([3, 3])))   # no padding: fine
    with pytest.raises(AssertionError, match="forward_sequence vs stepping, with lengths"):
        suite.sequence_matches_steps(Case(3, 2, 0, xs, lengths=np.array([3, 1])))
    with pytest.raises(AssertionError, match=r"property \((4|6)\)"):
        check_cell(lambda: _BrokenSequence(2, 3))


# --- combinators -----------------------------------------------------------------------------

def test_stack_of_min_cells_runs_layer_by_layer_and_equals_stepping():
    rng = np.random.default_rng(4)
    tg.manual_seed(4)
    stack = tg.Stack([tg.MinGRUCell(3, 5), tg.MinLSTMCell(5, 4), tg.MinGRUCell(4, 4)], dropout=0.3)
    stack.eval()
    assert stack.forward_sequence is not None
    xs = rng.standard_normal((7, 3, 3))
    lengths = np.array([7, 4, 1])
    results = []
    for runner in (stack, _Stepped(stack)):
        for p in stack.parameters():
            p.grad = None
        x = Tensor(xs, requires_grad=True)
        ys, states = tg.Unroll(runner)(x, lengths=lengths)
        (ys.sum() + sum((s * s).sum() for s in states)).backward()
        results.append([ys.data, *(s.data for s in states), x.grad] + [p.grad for p in stack.parameters()])
    for ours, stepped in zip(*results):
        np.testing.assert_allclose(ours, stepped, rtol=1e-10, atol=1e-12)


def test_stack_steps_when_some_layer_cannot_run_a_sequence():
    assert getattr(tg.Stack([tg.MinGRUCell(3, 4), tg.GRUCell(4, 4)]), "forward_sequence", None) is None


def test_stack_dropout_in_training_mode_masks_the_whole_sequence_between_layers():
    tg.manual_seed(0)
    stack = tg.Stack([tg.MinGRUCell(3, 4), tg.MinGRUCell(4, 4)], dropout=0.5)
    xs = Tensor(np.random.default_rng(0).standard_normal((5, 2, 3)))
    train_ys, _ = tg.Unroll(stack)(xs)
    stack.eval()
    eval_ys, _ = tg.Unroll(stack)(xs)
    assert not np.allclose(train_ys.data, eval_ys.data)


@pytest.mark.parametrize("cls", CELLS)
def test_generate_steps_the_cell(cls):
    tg.manual_seed(2)
    cell = cls(3, 3)
    x0 = Tensor(np.random.default_rng(2).standard_normal((2, 3)))
    outs, h = tg.generate(cell, x0, 4)
    x, state, expected = x0, cell.init_state(2), []
    for _ in range(4):
        x, state = cell(x, state)
        expected.append(x.data)
    np.testing.assert_allclose(outs.data, np.stack(expected), rtol=1e-12)
    np.testing.assert_allclose(h.data, state.data, rtol=1e-12)


def test_seq2seq_with_min_cells_matches_the_two_unrolls_and_its_gradients():
    rng = np.random.default_rng(5)
    tg.manual_seed(5)
    model = tg.Seq2Seq(tg.MinGRUCell(2, 3), tg.MinLSTMCell(2, 3))
    src = Tensor(rng.standard_normal((4, 2, 2)), requires_grad=True, name="src")
    tgt = Tensor(rng.standard_normal((3, 2, 2)), requires_grad=True, name="tgt")
    lengths = np.array([4, 2])
    ys = model(src, tgt, src_lengths=lengths)
    _, h_enc = tg.Unroll(model.encoder.cell)(src, lengths=lengths)
    ys_ref, _ = tg.Unroll(model.decoder)(tgt, h_enc)
    np.testing.assert_allclose(ys.data, ys_ref.data, rtol=1e-12)
    assert gradcheck(lambda s, t: model(s, t, src_lengths=lengths), src, tgt, params=model.parameters())
    readout = tg.nn.Linear(3, 2)
    outs, _ = model.generate(src, Tensor(np.zeros((2, 2))), 3, readout=readout, src_lengths=lengths)
    x, state, expected = Tensor(np.zeros((2, 2))), h_enc, []
    for _ in range(3):
        out, state = model.decoder(x, state)
        x = readout(out)
        expected.append(x.data)
    np.testing.assert_allclose(outs.data, np.stack(expected), rtol=1e-12)


def test_bidirectional_min_cells_with_lengths_equal_stepping():
    rng = np.random.default_rng(6)
    tg.manual_seed(6)
    fwd, bwd = tg.MinGRUCell(2, 3), tg.MinLSTMCell(2, 2)
    xs = rng.standard_normal((5, 3, 2))
    lengths = np.array([5, 3, 1])
    results = []
    for pair in ((fwd, bwd), (_Stepped(fwd), _Stepped(bwd))):
        for p in fwd.parameters() + bwd.parameters():
            p.grad = None
        x = Tensor(xs, requires_grad=True)
        ys, (h_f, h_b) = tg.Bidirectional(*pair)(x, lengths=lengths)
        assert ys.shape == (5, 3, 5)
        (ys * ys).sum().backward()
        results.append([ys.data, h_f.data, h_b.data, x.grad]
                       + [p.grad for p in fwd.parameters() + bwd.parameters()])
    for ours, stepped in zip(*results):
        np.testing.assert_allclose(ours, stepped, rtol=1e-10, atol=1e-12)
    assert np.all(results[0][0][3:, 1] == 0) and np.all(results[0][0][1:, 2] == 0)


# --- construction and bad input ----------------------------------------------------------------

def test_parameters_and_initialization():
    gru, lstm = tg.MinGRUCell(8, 32), tg.MinLSTMCell(8, 32, forget_bias=2.0)
    assert [n for n, _ in gru.named_parameters()] == ["weight_ih", "bias_ih"]
    assert gru.weight_ih.shape == (64, 8) and lstm.weight_ih.shape == (96, 8)
    assert gru.num_parameters() == 2 * 32 * (8 + 1)
    assert np.all(lstm.bias_ih.data[:32] == 2.0)
    assert np.all(np.abs(lstm.bias_ih.data[32:]) <= 1 / np.sqrt(32))
    assert np.all(np.abs(gru.weight_ih.data) <= 1 / np.sqrt(32))
    assert tg.MinGRUCell(2, 3, dtype=np.float32).weight_ih.dtype == np.float32


@pytest.mark.parametrize("cls", CELLS)
def test_float32_sequence_stays_float32(cls):
    cell = cls(3, 4, dtype=np.float32)
    ys, h = tg.Unroll(cell)(Tensor(np.ones((5, 2, 3), np.float32)), lengths=np.array([5, 2]))
    assert ys.dtype == h.dtype == np.float32


def test_minlstm_gates_are_a_convex_combination():
    # With h̃ = 0 (no bias, zero weights on its block), h_t = f'_t h_{t-1} shrinks and stays
    # between 0 and h_{t-1}: f' lies in (0, 1).
    cell = tg.MinLSTMCell(2, 3, bias=False)
    cell.weight_ih.data[6:] = 0
    h0 = Tensor(np.ones((1, 3)))
    ys, _ = tg.Unroll(cell)(Tensor(np.random.default_rng(0).standard_normal((4, 1, 2))), h0)
    steps = np.concatenate([np.ones((1, 1, 3)), ys.data])
    assert np.all((steps[1:] > 0) & (steps[1:] < steps[:-1]))


@pytest.mark.parametrize("cls", CELLS)
def test_bad_input_is_named(cls):
    cell = cls(3, 4)
    name = cls.__name__
    with pytest.raises(ShapeError, match=rf"{name}: the state must be a Tensor h of shape \(B, 4\), "
                                         r"got \(Tensor\(2, 4\), Tensor\(2, 4\)\)"):
        cell(Tensor(np.zeros((2, 3))), (Tensor(np.zeros((2, 4))), Tensor(np.zeros((2, 4)))))
    with pytest.raises(ShapeError, match=rf"Unroll\({name}\): expected input size I = 3"):
        tg.Unroll(cell)(Tensor(np.zeros((5, 2, 2))))
    with pytest.raises(ShapeError, match=rf"{name}.forward_sequence: expected xs \(T, B, 3\), got "
                                         r"shape \(5, 2\)"):
        cell.forward_sequence(Tensor(np.zeros((5, 2))), cell.init_state(2))
    with pytest.raises(ValueError, match=rf"{name}: input_size and hidden_size must be positive"):
        cls(0, 4)
