"""PyTorch parity by weight copy: from_torch gives the same outputs, final states and
gradients (inputs and every weight) as torch in float64, over the whole configuration matrix
of torch.nn.RNN/LSTM/GRU, with and without packed variable lengths; cells likewise."""

import itertools
import json
import zlib

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.autograd import ShapeError

torch = pytest.importorskip("torch")
interop = pytest.importorskip("tinygrad_rnn.interop")

TOL = dict(rtol=1e-10, atol=1e-10)
MODES = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(**kw),
    "gru": lambda **kw: torch.nn.GRU(**kw),
}


def _torch_run(m, x, hx, lengths, batch_first):
    """torch's output (padded with zeros past each length) and final state."""
    if lengths is None:
        return m(x, hx)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
    out, state = m(packed, hx)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                    total_length=x.shape[1 if batch_first else 0])
    return out, state


def _as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.mark.parametrize("mode, num_layers, bidirectional, with_lengths, batch_first",
                         list(itertools.product(sorted(MODES), [1, 2], [False, True], [False, True],
                                                [False, True])))
def test_layer_parity(mode, num_layers, bidirectional, with_lengths, batch_first):
    seed = zlib.crc32(repr((mode, num_layers, bidirectional, with_lengths, batch_first)).encode())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    T, B, I, H = 4, 3, 3, 4
    m = MODES[mode](input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=batch_first).double()
    model = interop.from_torch(m)
    assert isinstance(model, interop.TorchRNN)
    D = 2 if bidirectional else 1

    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    lengths = [4, 1, 3] if with_lengths else None
    # A non-zero initial state, given to both in their own layouts.
    h0 = [rng.standard_normal((num_layers * D, B, H)) for _ in range(2 if mode == "lstm" else 1)]

    xt = torch.tensor(x, requires_grad=True)
    hx_t = tuple(torch.tensor(h, requires_grad=True) for h in h0)
    hx_torch = hx_t if mode == "lstm" else hx_t[0]
    out_t, state_t = _torch_run(m, xt, hx_torch, lengths, batch_first)

    xs = Tensor(x, requires_grad=True)
    hx = tuple(Tensor(h, requires_grad=True) for h in h0)
    state0 = model.from_torch_state(hx if mode == "lstm" else hx[0])
    ys, state = model(xs, state0, lengths=lengths)
    final = _as_tuple(model.to_torch_state(state))

    assert ys.shape == tuple(out_t.shape)
    np.testing.assert_allclose(ys.data, out_t.detach().numpy(), **TOL)
    if with_lengths:
        for b, n in enumerate(lengths):
            past = ys.data[b, n:] if batch_first else ys.data[n:, b]
            assert np.all(past == 0)
    for ours, theirs in zip(final, _as_tuple(state_t)):
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), **TOL)

    # Gradients of one random projection of (output, final state).
    v = rng.standard_normal(ys.shape)
    ws = [rng.standard_normal(s.shape) for s in final]
    loss_t = (out_t * torch.tensor(v)).sum() + sum((s * torch.tensor(w)).sum()
                                                   for s, w in zip(_as_tuple(state_t), ws))
    loss_t.backward()
    loss = (ys * Tensor(v)).sum()
    for s, w in zip(final, ws):
        loss = loss + (s * Tensor(w)).sum()
    loss.backward()
    np.testing.assert_allclose(xs.grad, xt.grad.numpy(), **TOL)
    for ours, theirs in zip(hx, hx_t):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), **TOL)
    names = model.torch_parameters()
    assert list(names) == [n for n, _ in m.named_parameters()]
    for name, p in names.items():
        np.testing.assert_allclose(p.grad, getattr(m, name).grad.numpy(), err_msg=name, **TOL)


def test_layer_parity_default_state_and_no_bias():
    torch.manual_seed(0)
    m = torch.nn.GRU(3, 4, num_layers=2, bias=False).double()
    model = interop.from_torch(m)
    assert all("bias" not in n for n in model.torch_parameters())
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out_t, h_t = m(torch.tensor(x))
    ys, state = model(Tensor(x))
    np.testing.assert_allclose(ys.data, out_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(model.to_torch_state(state).data, h_t.detach().numpy(), **TOL)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_parity(kind, bias):
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    B, I, H = 3, 2, 4
    m = {"rnn_tanh": lambda: torch.nn.RNNCell(I, H, bias=bias),
         "rnn_relu": lambda: torch.nn.RNNCell(I, H, bias=bias, nonlinearity="relu"),
         "lstm": lambda: torch.nn.LSTMCell(I, H, bias=bias),
         "gru": lambda: torch.nn.GRUCell(I, H, bias=bias)}[kind]().double()
    cell = interop.from_torch(m)
    assert type(cell) is {"rnn_tanh": tg.RNNCell, "rnn_relu": tg.RNNCell, "lstm": tg.LSTMCell,
                          "gru": tg.GRUCell}[kind]
    x = rng.standard_normal((B, I))
    s0 = [rng.standard_normal((B, H)) for _ in range(2 if kind == "lstm" else 1)]
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in s0]
    xs = Tensor(x, requires_grad=True)
    ss = [Tensor(s, requires_grad=True) for s in s0]
    if kind == "lstm":
        out_t = m(xt, tuple(st))
        _, (h, c) = cell(xs, tuple(ss))
        outs = (h, c)
    else:
        out_t = (m(xt, st[0]),)
        out, _ = cell(xs, ss[0])
        outs = (out,)
    vs = [rng.standard_normal((B, H)) for _ in outs]
    for o, ot in zip(outs, out_t):
        np.testing.assert_allclose(o.data, ot.detach().numpy(), **TOL)
    sum((ot * torch.tensor(v)).sum() for ot, v in zip(out_t, vs)).backward()
    total = None
    for o, v in zip(outs, vs):
        term = (o * Tensor(v)).sum()
        total = term if total is None else total + term
    total.backward()
    np.testing.assert_allclose(xs.grad, xt.grad.numpy(), **TOL)
    for a, b in zip(ss, st):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), **TOL)
    for name, p in cell.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(m, name).grad.numpy(), err_msg=name, **TOL)


def test_from_torch_copies_weights_and_dtype():
    m = torch.nn.LSTM(2, 3)
    model = interop.from_torch(m)
    p = model.torch_parameters()["weight_hh_l0"]
    assert p.dtype == np.float64
    np.testing.assert_array_equal(p.data, m.weight_hh_l0.detach().numpy().astype(np.float64))
    with torch.no_grad():
        m.weight_hh_l0.zero_()
    assert np.any(p.data != 0)                      # a copy, not a view of torch's memory
    model32 = interop.from_torch(m, dtype=np.float32)
    assert all(q.dtype == np.float32 for q in model32.parameters())
    ys, _ = model32(Tensor(np.zeros((2, 1, 2), np.float32)))
    assert ys.dtype == np.float32


def test_from_torch_follows_eval_mode_and_dropout():
    m = torch.nn.GRU(2, 3, num_layers=2, dropout=0.5).double().eval()
    model = interop.from_torch(m)
    assert not model.training and not model.rnn.cell.dropout.training
    assert model.rnn.cell.dropout.p == 0.5
    x = np.random.default_rng(2).standard_normal((4, 2, 2))
    np.testing.assert_allclose(model(Tensor(x))[0].data, m(torch.tensor(x))[0].detach().numpy(), **TOL)


def test_to_torch_round_trip():
    tg.manual_seed(3)
    cell = tg.GRUCell(2, 3)
    m = interop.to_torch(cell)
    assert isinstance(m, torch.nn.GRUCell) and m.weight_ih.dtype == torch.float64
    x, h = np.ones((1, 2)), np.zeros((1, 3))
    np.testing.assert_allclose(cell(Tensor(x), Tensor(h))[0].data,
                               m(torch.tensor(x), torch.tensor(h)).detach().numpy(), **TOL)
    model = interop.from_torch(torch.nn.LSTM(2, 3, num_layers=2, bidirectional=True, batch_first=True))
    back = interop.to_torch(model)
    assert isinstance(back, torch.nn.LSTM) and back.bidirectional and back.batch_first
    for name, p in model.torch_parameters().items():
        np.testing.assert_array_equal(getattr(back, name).detach().numpy(), p.data)
    with pytest.raises(ValueError, match="learned initial state"):
        interop.to_torch(tg.LSTMCell(2, 3, learn_init=True))


def test_state_layout_helpers():
    model = interop.TorchRNN("LSTM", 2, 3, num_layers=2, bidirectional=True)
    state = model(Tensor(np.ones((2, 5, 2))))[1]
    assert len(state) == 2 and len(state[0]) == 2           # layers, then directions
    h, c = interop.to_torch_state(model, state)
    assert h.shape == c.shape == (4, 5, 3)
    np.testing.assert_array_equal(h.data[3], state[1][1][0].data)    # l1_reverse's h
    back = interop.from_torch_state(model, (h, c))
    for a, b in zip(tg.rnn.cell.tree_leaves(back), tg.rnn.cell.tree_leaves(state)):
        np.testing.assert_array_equal(a.data, b.data)
    # torch tensors are accepted as they are.
    back_t = model.from_torch_state((torch.tensor(h.data), torch.tensor(c.data)))
    np.testing.assert_array_equal(back_t[0][1][1].data, state[0][1][1].data)


def test_interop_errors():
    with pytest.raises(TypeError, match="from_torch: expected torch.nn.RNN/LSTM/GRU or "
                                        "RNNCell/LSTMCell/GRUCell, got Linear"):
        interop.from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(NotImplementedError, match="proj_size"):
        interop.from_torch(torch.nn.LSTM(2, 4, proj_size=2))
    model = interop.TorchRNN("GRU", 2, 3, num_layers=2)
    with pytest.raises(ShapeError, match=r"TorchRNN\(GRU\): expected xs of shape \(T, B, I\) with I = 2, "
                                         r"got \(4, 1, 3\)"):
        model(Tensor(np.zeros((4, 1, 3))))
    with pytest.raises(ShapeError, match="a tuple of 2 per-layer states"):
        model(Tensor(np.zeros((4, 1, 2))), tg.zeros(1, 3))
    with pytest.raises(ShapeError, match=r"expected shape \(num_layers \* num_directions, B, H\) = "
                                         r"\(2, B, 3\), got \(1, 1, 3\)"):
        model.from_torch_state(np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="TorchRNN: mode must be one of"):
        interop.TorchRNN("SRU", 2, 3)


def test_interop_lazily_reachable_from_package():
    assert tg.interop.from_torch is interop.from_torch


# --- files torch loads directly (state_dict_for_torch / save_for_torch) -------------------------

TORCH_LAYERS = {"lstm": (tg.LSTMCell, {}, "LSTM"), "gru": (tg.GRUCell, {}, "GRU"),
                "rnn_tanh": (tg.RNNCell, {"nonlinearity": "tanh"}, "RNN"),
                "rnn_relu": (tg.RNNCell, {"nonlinearity": "relu"}, "RNN")}


def _our_model(mode, num_layers, wrap, bias, dtype):
    cls, extra, _ = TORCH_LAYERS[mode]
    cells = [cls(3 if k == 0 else 5, 5, bias=bias, dtype=dtype, **extra) for k in range(num_layers)]
    if wrap == "stack":
        return tg.Unroll(tg.Stack(cells))
    assert num_layers == 1
    return tg.Unroll(cells[0])


@pytest.mark.parametrize("mode, num_layers, wrap, bias, dtype", [
    ("lstm", 1, "cell", True, np.float64), ("lstm", 2, "stack", True, np.float64),
    ("lstm", 1, "stack", False, np.float32), ("gru", 1, "cell", True, np.float64),
    ("gru", 2, "stack", True, np.float32), ("rnn_tanh", 1, "cell", True, np.float64),
    ("rnn_tanh", 2, "stack", False, np.float64), ("rnn_relu", 2, "stack", True, np.float64)])
def test_torch_loads_our_file_into_its_layer_with_the_same_outputs(tmp_path, mode, num_layers, wrap,
                                                                     bias, dtype):
    st_torch = pytest.importorskip("safetensors.torch")
    tg.manual_seed(num_layers)
    ours = _our_model(mode, num_layers, wrap, bias, dtype)
    path = interop.save_for_torch(ours, tmp_path / "weights.safetensors")
    name, kwargs = interop.torch_config(ours)
    assert name == TORCH_LAYERS[mode][2] and kwargs["num_layers"] == num_layers
    theirs = getattr(torch.nn, name)(**kwargs, dtype=getattr(torch, np.dtype(dtype).name))
    theirs.load_state_dict(st_torch.load_file(str(path)))           # strict: every name matches

    xs = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(dtype)
    ys, state = ours(Tensor(xs))
    with torch.no_grad():
        y_torch, h_torch = theirs(torch.from_numpy(xs))
    tol = TOL if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys.data, y_torch.numpy(), **tol)
    layer_states = state if wrap == "stack" else (state,)
    h_last = [s[0] if mode == "lstm" else s for s in layer_states]
    h_torch = h_torch[0] if mode == "lstm" else h_torch
    np.testing.assert_allclose(np.stack([h.data for h in h_last]), h_torch.numpy(), **tol)


def test_the_file_carries_torch_names_dtypes_and_its_config(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    ours = tg.Unroll(tg.Stack([tg.GRUCell(3, 4, dtype=np.float32), tg.GRUCell(4, 4, dtype=np.float32)],
                              dropout=0.25))
    path = interop.save_for_torch(ours, tmp_path / "gru.safetensors")
    tensors = st_numpy.load_file(str(path))
    assert list(tensors) == sorted(interop.state_dict_for_torch(ours))
    assert all(a.dtype == np.float32 for a in tensors.values())
    np.testing.assert_array_equal(tensors["weight_hh_l1"], ours.cell.cells[1].weight_hh.data)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    assert meta["torch_module"] == "torch.nn.GRU"
    assert json.loads(meta["torch_kwargs"]) == {"input_size": 3, "hidden_size": 4, "num_layers": 2,
                                                "dropout": 0.25, "bias": True}
    flat = tg.load(path)                                  # tg.load reads it too, as a flat dict
    np.testing.assert_array_equal(flat["bias_ih_l0"], ours.cell.cells[0].bias_ih.data)


def test_a_bare_cell_and_a_torch_rnn_map_to_torch_names(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    cell = tg.LSTMCell(3, 4)
    path = interop.save_for_torch(cell, tmp_path / "cell.safetensors")
    theirs = torch.nn.LSTMCell(3, 4, dtype=torch.float64)
    theirs.load_state_dict(st_torch.load_file(str(path)))
    x = np.random.default_rng(1).standard_normal((2, 3))
    h, (h2, c2) = cell(Tensor(x), cell.init_state(2))
    with torch.no_grad():
        h_t, c_t = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(h.data, h_t.numpy(), **TOL)
    np.testing.assert_allclose(c2.data, c_t.numpy(), **TOL)

    bi = interop.from_torch(torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64))
    names = list(interop.state_dict_for_torch(bi))
    assert names == list(interop.to_torch(bi).state_dict())      # weight_ih_l0, ..._l1_reverse
    assert interop.torch_config(bi) == ("GRU", {"input_size": 3, "hidden_size": 4, "num_layers": 2,
                                                "bias": True, "batch_first": False,
                                                "bidirectional": True})


class LeakyCell(tg.Cell):
    """h_t = h_{t-1} / 2 + x_t: a cell torch has no layer for."""

    input_size = hidden_size = 4

    def init_state(self, batch_size):
        return tg.zeros(batch_size, 4)

    def forward(self, x, h):
        h = h * 0.5 + x
        return h, h


def test_models_torch_cannot_express_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"layer 1 \(GRUCell.*differs from layer 0 \(LSTMCell"):
        interop.state_dict_for_torch(tg.Unroll(tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)])))
    with pytest.raises(ValueError, match="layer 1 .*relu.*differs"):
        interop.state_dict_for_torch(tg.Stack([tg.RNNCell(3, 4), tg.RNNCell(4, 4, nonlinearity="relu")]))
    with pytest.raises(ValueError, match="learned initial state"):
        interop.state_dict_for_torch(tg.Unroll(tg.GRUCell(3, 4, learn_init=True)))
    with pytest.raises(TypeError, match="layer 1 is a LeakyCell"):
        interop.state_dict_for_torch(tg.Unroll(tg.Stack([tg.GRUCell(3, 4), LeakyCell()])))
    with pytest.raises(TypeError, match="got Unroll of LeakyCell"):
        interop.save_for_torch(tg.Unroll(LeakyCell()), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
