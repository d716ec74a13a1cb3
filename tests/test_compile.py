"""The compiled path equals eager: outputs, every parameter gradient, dx, the initial-state
gradient; for the built-in cells, custom cells, lengths, Stack, Bidirectional, float32.

Sizes are fixed per cell (I=3, H=4) so that each cell compiles once per dtype: hypothesis
varies T, B, values, lengths and the initial state (every batch size shares one source).
"""

import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn
from tinygrad_rnn.compile import CompiledCell, CompileError, CompileWarning, blas
from tinygrad_rnn.dtypes import default_dtype
from tinygrad_rnn.rnn.cell import tree_leaves, tree_map

I, H = 3, 4


# --- custom cells: equations only ----------------------------------------------------------

class MGUCell(tg.Cell):
    """DESIGN.md's minimal gated unit: linear of cat([x, h])."""

    def __init__(self, input_size=I, hidden_size=H):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


class TupleStateCell(tg.Cell):
    """A tuple state (h, m); exp, abs, relu, division, subtraction, negation, a mask."""

    def __init__(self, input_size=I, hidden_size=H):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = nn.Parameter(np.random.default_rng(1).uniform(-0.5, 0.5, (2 * H, input_size)))
        self.U = nn.Parameter(np.random.default_rng(2).uniform(-0.5, 0.5, (H, 2 * H)))
        self.scale = nn.Parameter(np.array(0.7))
        self.mask = np.arange(H) % 2 == 0          # a constant mask over the features

    def init_state(self, batch_size):
        return (tg.zeros(batch_size, self.hidden_size), tg.zeros(batch_size, self.hidden_size))

    def forward(self, x, state):
        h, m = state
        a, b = tg.linear(x, self.W).chunk(2, axis=-1)
        z = (a + h @ self.U[:, :H]).tanh()               # indexing a parameter
        gate = (b - m).abs().exp().relu() + 1.0
        m_new = tg.where(self.mask, m * self.scale - z, -(z / gate))
        h_new = z * (1 - (m_new * 0.5).sigmoid())
        return h_new, (h_new, m_new)


class ReadoutCell(tg.Cell):
    """The output differs from the state: a readout with a feature-axis sum and max, a
    tuple output, a column slice, and a cat that is not fed to a linear."""

    def __init__(self, input_size=I, hidden_size=H):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = tg.RNNCell(input_size, hidden_size)
        self.W_y = nn.Linear(2 * hidden_size, 2)

    def init_state(self, batch_size):
        return self.cell.init_state(batch_size)

    def forward(self, x, h):
        _, h = self.cell(x, h)
        peak = h.max(axis=-1, keepdims=True)
        total = (h * h).sum(axis=-1, keepdims=True)
        feats = tg.cat([h, h[:, 1:] - peak, total], axis=-1)
        y = self.W_y(feats)
        return (y, total), h


def rnn_tanh():
    return tg.RNNCell(I, H)


def rnn_relu():
    return tg.RNNCell(I, H, nonlinearity="relu")


def lstm():
    return tg.LSTMCell(I, H)


def gru():
    return tg.GRUCell(I, H)


BUILTIN = {"rnn_tanh": rnn_tanh, "rnn_relu": rnn_relu, "lstm": lstm, "gru": gru}
CUSTOM = {"mgu": MGUCell, "tuple_state": TupleStateCell, "readout": ReadoutCell}
ALL = {**BUILTIN, **CUSTOM}


# --- the comparison -------------------------------------------------------------------------

def _cells(name, seed=0, dtype=np.float64):
    with default_dtype(dtype):
        tg.manual_seed(seed)
        cell = ALL[name]()
    for p in cell.parameters():
        p.data = p.data.astype(dtype)
    return cell, tg.compile(cell, fallback=False)


def _run(cell, xs, state=None, lengths=None, batch_first=False):
    """Outputs, final state and every gradient of a fixed random loss."""
    for p in cell.parameters():
        p.grad = None
    xs_t = Tensor(xs, requires_grad=True)
    state_t = None if state is None else tree_map(lambda a: Tensor(a, requires_grad=True), state)
    ys, final = tg.Unroll(cell, batch_first=batch_first)(xs_t, state_t, lengths)
    leaves = tree_leaves(ys) + tree_leaves(final)
    rng = np.random.default_rng(7)
    loss = sum((leaf * rng.standard_normal(leaf.shape).astype(leaf.dtype)).sum() for leaf in leaves)
    loss.backward()
    got = {"out": [leaf.data.copy() for leaf in leaves], "dx": xs_t.grad}
    got["params"] = [p.grad for p in cell.parameters()]
    if state_t is not None:
        got["dstate"] = [s.grad for s in tree_leaves(state_t)]
    return got


def _assert_same(compiled, eager, rtol):
    assert compiled.keys() == eager.keys()
    for key in eager:
        for i, (a, b) in enumerate(zip(compiled[key], eager[key])):
            assert a is not None and b is not None, f"{key}[{i}] missing"
            scale = max(np.max(np.abs(b)), 1e-300)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{key}[{i}] differs")


@st.composite
def sequences(draw, batch_first=False, state=True):
    T = draw(st.integers(1, 5))
    B = draw(st.integers(1, 3))
    shape = (B, T, I) if batch_first else (T, B, I)
    xs = draw(hnp.arrays(np.float64, shape, elements=st.floats(-2, 2)))
    lengths = None
    if draw(st.booleans()):
        lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    h0 = draw(st.booleans()) if state else False
    return xs, lengths, (B if h0 else None)


def _initial_state(cell, B, seed):
    if B is None:
        return None
    rng = np.random.default_rng(seed)
    with tg.no_grad():
        template = cell.init_state(B)
    return tree_map(lambda s: rng.uniform(-1, 1, s.shape), template)


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=12)
@given(case=sequences(), seed=st.integers(0, 100))
def test_compiled_equals_eager_float64(name, case, seed):
    xs, lengths, B = case
    cell, compiled = _cells(name, seed)
    state = _initial_state(cell, B, seed)
    _assert_same(_run(compiled, xs, state, lengths), _run(cell, xs, state, lengths), 1e-10)


@pytest.mark.parametrize("name", ["lstm", "gru", "mgu"])
@settings(max_examples=5)
@given(case=sequences(batch_first=True))
def test_batch_first(name, case):
    xs, lengths, B = case
    cell, compiled = _cells(name)
    state = _initial_state(cell, B, 0)
    _assert_same(_run(compiled, xs, state, lengths, batch_first=True),
                 _run(cell, xs, state, lengths, batch_first=True), 1e-10)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru", "mgu"])
def test_float32_close(name):
    cell, compiled = _cells(name, dtype=np.float32)
    rng = np.random.default_rng(3)
    xs = rng.uniform(-2, 2, (6, 3, I)).astype(np.float32)
    with default_dtype(np.float32):             # the custom cells' zero states
        got = _run(compiled, xs, lengths=np.array([6, 2, 4]))
        want = _run(cell, xs, lengths=np.array([6, 2, 4]))
    assert got["out"][0].dtype == np.float32 and got["params"][0].dtype == np.float32
    _assert_same(got, want, 2e-5)


def test_learn_init_gradient_reaches_the_initial_state_parameters():
    tg.manual_seed(0)
    cell = tg.LSTMCell(I, H, learn_init=True)
    xs = np.random.default_rng(0).standard_normal((4, 2, I))
    got, want = _run(tg.compile(cell), xs), _run(cell, xs)
    _assert_same(got, want, 1e-10)
    assert all(np.any(p.grad != 0) for p in cell.initial_state)


def test_no_grad_gives_the_same_outputs_and_no_graph():
    cell, compiled = _cells("lstm")
    xs = Tensor(np.random.default_rng(0).standard_normal((5, 2, I)))
    with tg.no_grad():
        ys, (h, c) = tg.Unroll(compiled)(xs, lengths=np.array([5, 3]))
        ys_e, (h_e, c_e) = tg.Unroll(cell)(xs, lengths=np.array([5, 3]))
    assert not ys.requires_grad and ys._ctx is None
    for a, b in ((ys, ys_e), (h, h_e), (c, c_e)):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_stack_compiles_layer_by_layer():
    tg.manual_seed(0)
    stack = tg.Stack([tg.LSTMCell(I, H), tg.GRUCell(H, H), MGUCell(H, H)], dropout=0.5)
    stack.eval()
    compiled = tg.compile(stack)
    assert isinstance(compiled, tg.Stack)
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in stack.parameters()]
    xs = np.random.default_rng(1).standard_normal((5, 3, I))
    state = _initial_state(stack, 3, 1)
    for lengths in (None, np.array([5, 1, 3])):
        _assert_same(_run(compiled, xs, state, lengths), _run(stack, xs, state, lengths), 1e-10)


def test_stack_dropout_applies_in_training_mode():
    tg.manual_seed(0)
    stack = tg.Stack([tg.RNNCell(I, H), tg.RNNCell(H, H, bias=False)], dropout=0.5)
    compiled = tg.compile(stack)
    xs = Tensor(np.random.default_rng(1).standard_normal((4, 2, I)))
    stack.eval()
    ys_eval = tg.Unroll(compiled)(xs)[0].data
    stack.train()                                   # the compiled stack shares the Dropout
    ys_train = tg.Unroll(compiled)(xs)[0].data
    assert not np.allclose(ys_train, ys_eval)


def test_bidirectional_with_compiled_cells():
    tg.manual_seed(0)
    fwd, bwd = tg.LSTMCell(I, H), tg.GRUCell(I, H)
    eager = tg.Bidirectional(fwd, bwd)
    compiled = tg.compile(eager)
    xs = np.random.default_rng(2).standard_normal((5, 3, I))
    for lengths in (None, np.array([5, 2, 4])):
        got = _bidir_run(compiled, xs, lengths, fwd, bwd)
        want = _bidir_run(eager, xs, lengths, fwd, bwd)
        _assert_same(got, want, 1e-10)


def _bidir_run(model, xs, lengths, *cells):
    params = [p for c in cells for p in c.parameters()]
    for p in params:
        p.grad = None
    xs_t = Tensor(xs, requires_grad=True)
    ys, _ = model(xs_t, lengths=lengths)
    (ys * ys).sum().backward()
    return {"out": [ys.data], "dx": [xs_t.grad], "params": [p.grad for p in params]}


def test_weights_updated_in_place_are_seen():
    cell, compiled = _cells("gru")
    xs = Tensor(np.random.default_rng(0).standard_normal((3, 2, I)))
    before = tg.Unroll(compiled)(xs)[0].data.copy()
    opt = tg.optim.SGD(cell.parameters(), lr=0.5)
    for p in cell.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    after = tg.Unroll(compiled)(xs)[0].data
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, tg.Unroll(cell)(xs)[0].data, rtol=1e-12)


def test_observers_run_eager_with_the_same_numbers():
    cell, compiled = _cells("lstm")
    xs = np.random.default_rng(0).standard_normal((4, 2, I))
    fast = _run(compiled, xs)
    with tg.inspect.trace() as tape:
        observed = _run(compiled, xs)
    assert any(r.op == "sigmoid" for r in tape.forward)            # it stepped, op by op
    _assert_same(observed, fast, 1e-10)


def test_compiled_cell_shares_parameters_and_steps_eager():
    cell, compiled = _cells("lstm")
    assert isinstance(compiled, CompiledCell) and compiled.eager is cell
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in cell.parameters()]
    assert list(compiled.state_dict()) == list(cell.state_dict())
    assert compiled.weight_ih is cell.weight_ih and compiled.input_size == I
    x = Tensor(np.ones((2, I)))
    out, (h, c) = compiled(x, compiled.init_state(2))
    out_e, _ = cell(x, cell.init_state(2))
    np.testing.assert_array_equal(out.data, out_e.data)
    assert tg.compile(compiled) is compiled


# --- fallback ----------------------------------------------------------------------------

class SoftmaxCell(tg.Cell):
    input_size, hidden_size = I, H

    def __init__(self):
        self.W = nn.Linear(I + H, H)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, H)

    def forward(self, x, h):
        h = self.W(tg.cat([x, h], axis=-1)).softmax(axis=-1)   # softmax: not in the loop
        return h, h


class DataMaskCell(tg.Cell):
    input_size, hidden_size = I, H

    def __init__(self):
        self.W = nn.Linear(I, H)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, H)

    def forward(self, x, h):
        a = self.W(x) + h
        return tg.where(a > 0, a, 0.1 * a), a           # the mask is computed from the data


def test_unknown_op_falls_back_with_one_warning_naming_the_op_and_line():
    tg.manual_seed(0)
    cell = SoftmaxCell()
    compiled = tg.compile(cell)
    xs = np.random.default_rng(0).standard_normal((3, 2, I))
    with pytest.warns(CompileWarning) as record:
        got = _run(compiled, xs)
    message = str(record[0].message)
    assert "softmax" in message and "test_compile.py" in message and "in forward" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # the second call warns no more
        again = _run(compiled, xs)
    _assert_same(got, _run(cell, xs), 1e-12)
    _assert_same(again, got, 1e-12)


def test_fallback_false_raises():
    tg.manual_seed(0)
    compiled = tg.compile(SoftmaxCell(), fallback=False)
    with pytest.raises(CompileError, match="softmax"):
        tg.Unroll(compiled)(Tensor(np.zeros((2, 1, I))))


def test_a_mask_computed_from_the_data_is_refused():
    compiled = tg.compile(DataMaskCell(), fallback=False)
    with pytest.raises(CompileError, match="changes with the input data"):
        tg.Unroll(compiled)(Tensor(np.zeros((2, 1, I))))


def test_compile_rejects_what_is_not_a_cell():
    with pytest.raises(TypeError, match="expected a Cell"):
        tg.compile(nn.Linear(2, 3))


# --- the generated source ----------------------------------------------------------------

def test_source_has_the_time_loop_inside_and_no_unrolling():
    source = tg.compile(tg.LSTMCell(I, H)).source(batch=2)
    assert "def forward_train(" in source and "def backward(" in source
    assert "for t in range(T):" in source and "for t in range(T - 1, -1, -1):" in source
    # one GEMM a step: forward_train, forward_infer, and backward's dh = dG @ W_hh added in place
    assert source.count("gemm(") == 2 and source.count("gemm_acc(") == 1
    assert "sigmoid(" in source and "tanh(" in source


def test_the_docs_show_the_generated_lstm_source():
    import pathlib
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "compile.md").read_text()
    block = doc.split("<!-- generated: LSTMCell(3, 4) -->")[1].split("```python")[1].split("```")[0]
    tg.manual_seed(0)
    source = tg.compile(tg.LSTMCell(3, 4)).source(batch=2)
    # the BLAS in use is named in a comment (blas.KIND): the docs show numpy's own
    source = source.replace(f"# {blas.KIND}", "# numpy-cblas")
    assert block.strip() == source.strip(), "docs/compile.md: regenerate the LSTM source"


def test_a_frozen_weight_gets_no_gradient_and_the_rest_match():
    cell, compiled = _cells("lstm")
    cell.weight_hh.requires_grad_(False)
    xs = np.random.default_rng(4).standard_normal((4, 2, I))
    got, want = _run(compiled, xs), _run(cell, xs)
    assert cell.weight_hh.grad is None
    got["params"] = [g for g in got["params"] if g is not None]
    want["params"] = [g for g in want["params"] if g is not None]
    assert len(got["params"]) == len(cell.parameters()) - 1
    _assert_same(got, want, 1e-10)


def test_single_writes_are_assigned_only_when_each_element_is_written_once():
    from tinygrad_rnn.compile.codegen import _assign_single_writes

    def run(lines, width=8):
        assigned = set()
        out = _assign_single_writes(["        G4[:] = fl(0.0)"] + lines, {"G4": width}, assigned)
        return out, assigned

    halves = ["            for j in range(4):", "                G4[b, j] += g1",
              "            for j in range(4):", "                G4[b, 4 + j] += g2"]
    out, assigned = run(halves)
    assert assigned == {"G4"} and "G4[:] = fl(0.0)" not in "\n".join(out)
    assert "G4[b, j] = g1" in out[1] and "G4[b, 4 + j] = g2" in out[3]
    # overlapping columns (a value with two consumers): both must add
    out, assigned = run(halves[:2] + ["            for j in range(5):", "                G4[b, 3 + j] += g2"])
    assert not assigned and out[0].strip() == "G4[:] = fl(0.0)"
    # half the buffer never written: the zeros are needed
    out, assigned = run(halves[:2])
    assert not assigned
    # BLAS adds into it, or a broadcast column: keep the zeros and +=
    assert not run(halves + ["        gemm_acc(DG2[t], WB0, G4)"])[1]
    assert not run(halves + ["            G4[b, 0] += g3"])[1]
