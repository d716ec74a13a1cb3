"""Unroll and the topologies built on it: lengths, batch_first, long sequences, Bidirectional,
generate, FeedbackCell, Seq2Seq, truncated BPTT; and the errors bad input gets."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn
from tinygrad_rnn.autograd import ShapeError
from tinygrad_rnn.rnn.cell import tree_leaves
from tinygrad_rnn.testing import check_vjp, gradcheck

CELLS = {
    "rnn": lambda I, H: tg.RNNCell(I, H),
    "lstm": lambda I, H: tg.LSTMCell(I, H),
    "gru": lambda I, H: tg.GRUCell(I, H),
    "stack": lambda I, H: tg.Stack([tg.LSTMCell(I, H), tg.GRUCell(H, H)]),
}


def _rows(state, b):
    """Sequence b's part of a (nested) state, keeping the batch axis."""
    return tg.rnn.tree_map(lambda s: s.data[b:b + 1], state)


def _assert_tree_close(a, b, **kw):
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        np.testing.assert_allclose(x.data if isinstance(x, Tensor) else x,
                                   y.data if isinstance(y, Tensor) else y, **kw)


# --- Unroll against numpy ---------------------------------------------------------------------

def _numpy_rnn(xs, h, W_ih, W_hh, b_ih, b_hh):
    hs = []
    for x in xs:
        h = np.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        hs.append(h)
    return np.stack(hs), h


def test_unroll_is_the_seed_recurrence(rng):
    cell = tg.RNNCell(3, 4)
    xs, h0 = rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 4))
    ys, hT = tg.Unroll(cell)(Tensor(xs), Tensor(h0))
    ref_ys, ref_h = _numpy_rnn(xs, h0, cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data,
                               cell.bias_hh.data)
    np.testing.assert_allclose(ys.data, ref_ys, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(hT.data, ref_h, rtol=1e-13, atol=1e-13)


def test_unroll_accepts_numpy_input(rng):
    cell = tg.GRUCell(2, 3)
    xs = rng.standard_normal((3, 2, 2))
    ys, _ = tg.Unroll(cell)(xs)
    ys2, _ = tg.Unroll(cell)(Tensor(xs))
    np.testing.assert_array_equal(ys.data, ys2.data)


def test_ten_thousand_steps_backpropagate(rng):
    """An iterative backward walk: no RecursionError, and the gradients are exactly BPTT's
    (a hand-written numpy BPTT of the vanilla RNN)."""
    T, B, I, H = 10_000, 1, 2, 3
    cell = tg.RNNCell(I, H)
    xs = rng.standard_normal((T, B, I))
    v = rng.standard_normal((T, B, H))
    xs_t = Tensor(xs, requires_grad=True)
    ys, _ = tg.Unroll(cell)(xs_t)
    (ys * Tensor(v)).sum().backward()

    W_ih, W_hh = cell.weight_ih.data, cell.weight_hh.data
    hs, _ = _numpy_rnn(xs, np.zeros((B, H)), W_ih, W_hh, cell.bias_ih.data, cell.bias_hh.data)
    g = {"weight_ih": np.zeros_like(W_ih), "weight_hh": np.zeros_like(W_hh),
         "bias_ih": np.zeros(H), "bias_hh": np.zeros(H)}
    gx = np.zeros_like(xs)
    dh = np.zeros((B, H))
    for t in reversed(range(T)):
        dh = dh + v[t]
        da = dh * (1 - hs[t] ** 2)
        h_prev = hs[t - 1] if t else np.zeros((B, H))
        g["weight_ih"] += da.T @ xs[t]
        g["weight_hh"] += da.T @ h_prev
        g["bias_ih"] += da.sum(0)
        g["bias_hh"] += da.sum(0)
        gx[t] = da @ W_ih
        dh = da @ W_hh
    for name, p in cell.named_parameters():
        np.testing.assert_allclose(p.grad, g[name], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xs_t.grad, gx, rtol=1e-10, atol=1e-12)


# --- lengths --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CELLS))
@given(data=st.data())
def test_lengths_semantics(kind, data):
    T = data.draw(st.integers(1, 5), label="T")
    B = data.draw(st.integers(1, 4), label="B")
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B), label="lengths"))
    tg.manual_seed(data.draw(st.integers(0, 100), label="seed"))
    cell = CELLS[kind](2, 3)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, B, 2))
    s0 = tg.rnn.tree_map(lambda s: Tensor(rng.standard_normal(s.shape)), cell.init_state(B))
    ys, final = tg.Unroll(cell)(Tensor(xs), s0, lengths=lengths)
    for b, n in enumerate(lengths):
        assert np.all(ys.data[n:, b] == 0), "outputs past the length must be exactly zero"
        if n == 0:
            _assert_tree_close(_rows(final, b), _rows(s0, b), rtol=0, atol=0)
            continue
        alone_ys, alone_final = tg.Unroll(cell)(Tensor(xs[:n, b:b + 1]),
                                               tg.rnn.tree_map(Tensor, _rows(s0, b)))
        np.testing.assert_allclose(ys.data[:n, b:b + 1], alone_ys.data, rtol=1e-12, atol=1e-14)
        _assert_tree_close(_rows(final, b), alone_final, rtol=1e-12, atol=1e-14)


def test_lengths_gradients_are_zero_past_the_end(rng):
    cell = tg.LSTMCell(2, 3)
    xs = Tensor(rng.standard_normal((4, 3, 2)), requires_grad=True)
    ys, (h, c) = tg.Unroll(cell)(xs, lengths=[4, 1, 0])
    (ys.sum() + h.sum() + c.sum()).backward()
    assert np.all(xs.grad[1:, 1] == 0) and np.all(xs.grad[:, 2] == 0)
    assert np.all(xs.grad[:, 0] != 0) and np.all(xs.grad[0, 1] != 0)


def test_lengths_gradcheck(rng):
    cell = tg.GRUCell(2, 3)
    xs = Tensor(rng.standard_normal((4, 3, 2)), requires_grad=True)
    h0 = Tensor(rng.standard_normal((3, 3)), requires_grad=True)
    gradcheck(lambda xs, h0: tg.Unroll(cell)(xs, h0, lengths=np.array([2, 4, 0])), xs, h0,
              params=cell.parameters())


# --- batch_first --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CELLS))
def test_batch_first_equals_transposed(kind, rng):
    cell = CELLS[kind](2, 3)
    xs = rng.standard_normal((4, 3, 2))
    lengths = np.array([4, 2, 3])
    ys, s = tg.Unroll(cell)(Tensor(xs), lengths=lengths)
    ys_bf, s_bf = tg.Unroll(cell, batch_first=True)(Tensor(xs.transpose(1, 0, 2)), lengths=lengths)
    assert ys_bf.shape == (3, 4, 3)
    np.testing.assert_array_equal(ys_bf.data, ys.data.transpose(1, 0, 2))
    _assert_tree_close(s_bf, s, rtol=0, atol=0)


# --- Bidirectional --------------------------------------------------------------------------------

def _bidirectional_reference(fwd, bwd, xs, lengths):
    """Each sequence alone: forward over its prefix, backward over the reversed prefix."""
    T, B, _ = xs.shape
    ys = np.zeros((T, B, fwd.hidden_size + bwd.hidden_size))
    finals = []
    for b, n in enumerate(lengths):
        seq = xs[:n, b:b + 1]
        yf, sf = tg.Unroll(fwd)(Tensor(seq))
        yb, sb = tg.Unroll(bwd)(Tensor(seq[::-1].copy()))
        ys[:n, b] = np.concatenate([yf.data[:, 0], yb.data[::-1, 0]], axis=-1)
        finals.append((sf, sb))
    return ys, finals


@pytest.mark.parametrize("with_lengths", [False, True])
def test_bidirectional_matches_per_sequence_reference(with_lengths, rng):
    fwd, bwd = tg.LSTMCell(2, 3), tg.GRUCell(2, 4)
    bi = tg.Bidirectional(fwd, bwd)
    xs = rng.standard_normal((5, 3, 2))
    lengths = np.array([5, 2, 3]) if with_lengths else np.array([5, 5, 5])
    ys, (s_f, s_b) = bi(Tensor(xs), lengths=lengths if with_lengths else None)
    ref, finals = _bidirectional_reference(fwd, bwd, xs, lengths)
    np.testing.assert_allclose(ys.data, ref, rtol=1e-12, atol=1e-14)
    for b, (sf, sb) in enumerate(finals):
        _assert_tree_close(_rows(s_f, b), sf, rtol=1e-12, atol=1e-14)
        _assert_tree_close(_rows(s_b, b), sb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lengths", [None, [3, 1]])
def test_bidirectional_gradcheck(lengths, rng):
    bi = tg.Bidirectional(tg.RNNCell(2, 3), tg.LSTMCell(2, 2))
    xs = Tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    gradcheck(lambda xs: bi(xs, lengths=lengths), xs, params=bi.parameters())


def test_bidirectional_batch_first(rng):
    bi = tg.Bidirectional(tg.GRUCell(2, 3), tg.GRUCell(2, 3))
    xs = rng.standard_normal((4, 2, 2))
    ys, _ = bi(Tensor(xs), lengths=[4, 2])
    bi.batch_first = True
    ys_bf, _ = bi(Tensor(xs.transpose(1, 0, 2)), lengths=[4, 2])
    np.testing.assert_array_equal(ys_bf.data, ys.data.transpose(1, 0, 2))


# --- generate, FeedbackCell, Seq2Seq ----------------------------------------------------------

def test_generate_equals_a_hand_loop(rng):
    cell, readout = tg.LSTMCell(3, 4), nn.Linear(4, 3)
    x0 = Tensor(rng.standard_normal((2, 3)))
    ys, state = tg.generate(cell, x0, 5, readout=readout)
    x, s, outs = x0, cell.init_state(2), []
    for _ in range(5):
        out, s = cell(x, s)
        x = readout(out)
        outs.append(x.data)
    np.testing.assert_allclose(ys.data, np.stack(outs), rtol=1e-13, atol=1e-14)
    _assert_tree_close(state, s, rtol=1e-13, atol=1e-14)


def test_generate_gradcheck_with_softmax_feedback(rng):
    """One-to-many with a readout to logits and the softmax fed back: differentiable end to
    end, through the fed-back predictions."""
    V, H = 3, 4
    cell, readout = tg.GRUCell(V, H), nn.Linear(H, V)
    x0 = Tensor(rng.standard_normal((2, V)), requires_grad=True)
    h0 = Tensor(rng.standard_normal((2, H)), requires_grad=True)

    def fn(x0, h0):
        return tg.generate(cell, x0, 4, state=h0, readout=readout, feedback=lambda y: y.softmax(-1))

    gradcheck(fn, x0, h0, params=cell.parameters() + readout.parameters())
    check_vjp(fn, x0, h0, params=cell.parameters() + readout.parameters())


def test_feedback_cell_teacher_forcing_equals_unroll(rng):
    cell, readout = tg.LSTMCell(3, 4), nn.Linear(4, 3)
    xs = Tensor(rng.standard_normal((5, 2, 3)))
    teacher = tg.FeedbackCell(cell, readout=readout, teacher_prob=1.0)
    ys, _ = tg.Unroll(teacher)(xs)
    hs, _ = tg.Unroll(cell)(xs)
    np.testing.assert_allclose(ys.data, readout(hs).data, rtol=1e-13, atol=1e-14)


def test_feedback_cell_free_running_equals_generate(rng):
    cell, readout = tg.GRUCell(3, 4), nn.Linear(4, 3)
    x0 = Tensor(rng.standard_normal((2, 3)))
    ys_gen, _ = tg.generate(cell, x0, 4, readout=readout)
    free = tg.FeedbackCell(cell, readout=readout, teacher_prob=0.0)
    ignored = Tensor(rng.standard_normal((4, 2, 3)))     # inputs a free-running cell never reads
    ys, _ = tg.Unroll(free)(ignored, state=(cell.init_state(2), x0))
    np.testing.assert_allclose(ys.data, ys_gen.data, rtol=1e-13, atol=1e-14)


def test_seq2seq_is_encoder_state_into_decoder(rng):
    enc, dec = tg.LSTMCell(2, 3), tg.LSTMCell(4, 3)
    model = tg.Seq2Seq(enc, dec)
    src, tgt = Tensor(rng.standard_normal((5, 2, 2))), Tensor(rng.standard_normal((3, 2, 4)))
    _, state = tg.Unroll(enc)(src, lengths=[5, 2])
    expected, _ = tg.Unroll(dec)(tgt, state)
    np.testing.assert_allclose(model(src, tgt, src_lengths=[5, 2]).data, expected.data, rtol=1e-14)


def test_seq2seq_gradcheck_with_lengths_and_bridge(rng):
    enc, dec = tg.GRUCell(2, 3), tg.GRUCell(2, 2)
    bridge = nn.Linear(3, 2)
    model = tg.Seq2Seq(enc, dec, bridge=lambda h: bridge(h).tanh())
    src = Tensor(rng.standard_normal((4, 2, 2)), requires_grad=True)
    tgt = Tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    params = enc.parameters() + dec.parameters() + bridge.parameters()
    gradcheck(lambda s, t: model(s, t, src_lengths=[4, 2]), src, tgt, params=params)


def test_seq2seq_generate_gradcheck(rng):
    enc, dec, readout = tg.LSTMCell(2, 3), tg.LSTMCell(2, 3), nn.Linear(3, 2)
    model = tg.Seq2Seq(enc, dec)
    src = Tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    x0 = Tensor(rng.standard_normal((2, 2)), requires_grad=True)
    params = enc.parameters() + dec.parameters() + readout.parameters()
    gradcheck(lambda s, x0: model.generate(s, x0, 3, readout=readout, src_lengths=[3, 1]), src, x0,
              params=params)


# --- truncated BPTT ---------------------------------------------------------------------------

def test_truncated_bptt_windows_and_freed_graph_error(rng):
    cell = tg.RNNCell(2, 3)
    xs = Tensor(rng.standard_normal((6, 1, 2)))
    state = None
    for start in (0, 3):
        ys, state = tg.Unroll(cell)(xs[start:start + 3], state)
        ys.sum().backward()
        state = tg.detach_state(state)
    assert cell.weight_hh.grad is not None

    # Without detaching, the second window back-propagates into the first window's graph,
    # which its backward already freed: a clear error, not silent wrong gradients.
    ys, state = tg.Unroll(cell)(xs[:3])
    ys.sum().backward()
    ys2, _ = tg.Unroll(cell)(xs[3:], state)
    with pytest.raises(RuntimeError, match="already freed.*detach the state"):
        ys2.sum().backward()


# --- errors -------------------------------------------------------------------------------------

def test_error_wrong_input_rank():
    with pytest.raises(ShapeError, match=r"Unroll\(LSTMCell\): expected xs of rank 3 \(T, B, I\), got "
                                         r"shape \(5, 3\) \(for one sequence, add a batch axis\)"):
        tg.Unroll(tg.LSTMCell(3, 4))(Tensor(np.zeros((5, 3))))


def test_error_wrong_input_size():
    with pytest.raises(ShapeError, match=r"Unroll\(GRUCell\): expected input size I = 3, got xs of "
                                         r"shape \(5, 2, 4\) \(T, B, I\)"):
        tg.Unroll(tg.GRUCell(3, 4))(Tensor(np.zeros((5, 2, 4))))
    with pytest.raises(ShapeError, match=r"\(B, T, I\)"):
        tg.Unroll(tg.GRUCell(3, 4), batch_first=True)(Tensor(np.zeros((5, 2, 4))))


def test_error_input_not_a_tensor():
    with pytest.raises(TypeError, match=r"Unroll\(RNNCell\): xs must be a Tensor, got list"):
        tg.Unroll(tg.RNNCell(1, 2))([[[1.0]]])


def test_error_empty_sequence():
    with pytest.raises(ShapeError, match=r"Unroll\(RNNCell\): the sequence is empty \(T = 0\)"):
        tg.Unroll(tg.RNNCell(3, 4))(Tensor(np.zeros((0, 2, 3))))


def test_error_state_of_wrong_structure():
    cell = tg.LSTMCell(3, 4)
    xs = Tensor(np.zeros((2, 2, 3)))
    with pytest.raises(ShapeError, match=r"the state has structure Tensor\(2, 4\), but the cell "
                                         r"expects \(Tensor\(2, 4\), Tensor\(2, 4\)\) for batch size 2"):
        tg.Unroll(cell)(xs, tg.zeros(2, 4))
    with pytest.raises(ShapeError, match=r"structure \(Tensor\(3, 4\), Tensor\(3, 4\)\)"):
        tg.Unroll(cell)(xs, cell.init_state(3))


@pytest.mark.parametrize("lengths, error, match", [
    ([3, 1], ValueError, r"lengths must lie in \[0, T\] = \[0, 2\], got min 1 and max 3"),
    ([-1, 1], ValueError, r"got min -1"),
    ([1, 1, 1], ShapeError, r"lengths must have shape \(B,\) = \(2,\), got \(3,\)"),
    ([[1, 1]], ShapeError, r"got \(1, 2\)"),
    ([1.0, 2.0], TypeError, r"lengths must be integers, got dtype float64"),
])
def test_error_bad_lengths(lengths, error, match):
    with pytest.raises(error, match=match):
        tg.Unroll(tg.GRUCell(3, 4))(Tensor(np.zeros((2, 2, 3))), lengths=lengths)
    with pytest.raises(error, match=match):
        tg.Bidirectional(tg.GRUCell(3, 4), tg.GRUCell(3, 4))(Tensor(np.zeros((2, 2, 3))), lengths=lengths)


def test_error_bidirectional_rank():
    with pytest.raises(ShapeError, match=r"Bidirectional: expected xs of rank 3, got shape \(2, 3\)"):
        tg.Bidirectional(tg.GRUCell(3, 4), tg.GRUCell(3, 4))(Tensor(np.zeros((2, 3))))


def test_error_generate_arguments():
    cell = tg.GRUCell(3, 4)
    with pytest.raises(ShapeError, match=r"generate: x0 must have shape \(B, I\), got \(3,\)"):
        tg.generate(cell, Tensor(np.zeros(3)), 2)
    with pytest.raises(ValueError, match="generate: steps must be a positive integer, got 0"):
        tg.generate(cell, Tensor(np.zeros((1, 3))), 0)


class _CountingSequenceCell(tg.RNNCell):
    """An RNN cell whose forward_sequence is a Python loop of forward, counting its calls."""

    sequence_calls = 0

    def forward_sequence(self, xs, state, lengths):
        type(self).sequence_calls += 1
        self.seen_lengths = lengths
        outs, h = [], state
        for t, x_t in enumerate(xs.unbind(0)):
            y, new_h = self.forward(x_t, h)
            if lengths is not None:
                m = (t < lengths)[:, None]
                new_h, y = tg.where(m, new_h, h), tg.where(m, y, np.zeros((), y.dtype))
            h = new_h
            outs.append(y)
        return tg.stack(outs), h


def test_unroll_uses_forward_sequence_unless_observed(rng):
    cell = _CountingSequenceCell(3, 4)
    plain = tg.RNNCell(3, 4)
    plain.load_state_dict(cell.state_dict())
    xs = Tensor(rng.standard_normal((6, 2, 3)))
    lengths = np.array([6, 3])
    before = _CountingSequenceCell.sequence_calls
    ys, h = tg.Unroll(cell)(xs, lengths=lengths)
    assert _CountingSequenceCell.sequence_calls == before + 1
    np.testing.assert_array_equal(cell.seen_lengths, lengths)    # checked and passed through
    ys_ref, h_ref = tg.Unroll(plain)(xs, lengths=lengths)
    np.testing.assert_allclose(ys.data, ys_ref.data, rtol=1e-12)
    np.testing.assert_allclose(h.data, h_ref.data, rtol=1e-12)
    with tg.inspect.trace():                                      # an observer: stepped instead
        ys_obs, _ = tg.Unroll(cell)(xs, lengths=lengths)
    assert _CountingSequenceCell.sequence_calls == before + 1
    np.testing.assert_allclose(ys_obs.data, ys.data, rtol=1e-12)
    ys_bf, _ = tg.Unroll(cell, batch_first=True)(xs.transpose(1, 0, 2))
    assert ys_bf.shape == (2, 6, 4)


def test_same_structure_compares_shapes_unless_told_not_to():
    from tinygrad_rnn.rnn.cell import same_structure
    lstm = tg.LSTMCell(2, 3)
    assert same_structure(lstm.init_state(2), lstm.init_state(2))
    assert not same_structure(lstm.init_state(2), lstm.init_state(3))
    assert same_structure(lstm.init_state(2), lstm.init_state(3), shapes=False)
    assert not same_structure(lstm.init_state(2), tg.RNNCell(2, 3).init_state(2), shapes=False)
    assert not same_structure((tg.zeros(1),), (np.zeros(1),), shapes=False)
