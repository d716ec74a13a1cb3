"""nn: Module discovery and state, Parameter, Linear, Embedding, Dropout, init."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn
from tinygrad_rnn.nn import init
from tinygrad_rnn.testing import check_vjp, gradcheck
from tinygrad_rnn.testing import strategies as S

# --- Module: parameters are found by looking at attributes -------------------------------


class Block(nn.Module):
    def __init__(self):
        self.lin = nn.Linear(2, 3)
        self.scale = nn.Parameter(np.ones(3))


class Model(nn.Module):
    def __init__(self):
        self.first = Block()
        self.layers = [nn.Linear(3, 3), nn.Linear(3, 2, bias=False)]
        self.pair = (nn.Parameter(np.zeros(2)), Block())
        self.named = {"a": nn.Linear(2, 2), "b": nn.Parameter(np.zeros((1, 2)))}
        self.not_a_param = Tensor(np.zeros(4), requires_grad=True)   # plain tensors are data
        self.number = 3


def test_named_parameters_walks_attributes_lists_tuples_dicts_nested():
    names = [n for n, _ in Model().named_parameters()]
    assert names == [
        "first.lin.weight", "first.lin.bias", "first.scale",
        "layers.0.weight", "layers.0.bias", "layers.1.weight",
        "pair.0", "pair.1.lin.weight", "pair.1.lin.bias", "pair.1.scale",
        "named.a.weight", "named.a.bias", "named.b",
    ]
    m = Model()
    assert m.num_parameters() == sum(p.size for p in m.parameters())
    assert [n for n, _ in m.named_modules()][:3] == ["", "first", "first.lin"]


def test_shared_parameter_counted_once():
    m = Model()
    m.layers.append(m.first.lin)        # the same Linear reached twice
    m.tied = m.first.scale
    params = m.parameters()
    assert len(params) == len({id(p) for p in params}) == 13
    assert [n for n, p in m.named_parameters() if p is m.first.scale] == ["first.scale"]


def test_zero_grad():
    m = Model()
    x = Tensor(np.ones((1, 2)))
    m.first.lin(x).sum().backward()
    assert m.first.lin.weight.grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_train_eval_propagate_to_every_submodule():
    m = Model()
    m.drop = nn.Dropout(0.5)
    assert m.eval() is m
    assert all(not sub.training for sub in m.modules())
    m.train()
    assert all(sub.training for sub in m.modules())
    # Cells nested in combinators too.
    stack = tg.Stack([tg.LSTMCell(2, 3), tg.LSTMCell(3, 3)], dropout=0.3)
    tg.Unroll(stack).eval()
    assert not stack.dropout.training and not stack.cells[1].training


def test_state_dict_round_trip():
    tg.manual_seed(0)
    a = tg.Stack([tg.LSTMCell(2, 3), tg.GRUCell(3, 4)])
    tg.manual_seed(1)
    b = tg.Stack([tg.LSTMCell(2, 3), tg.GRUCell(3, 4)])
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    state["cells.0.weight_ih"][...] = 7.0          # a copy: the model is untouched
    assert not np.any(a.cells[0].weight_ih.data == 7.0)
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
        assert pa.data is not pb.data
    xs = Tensor(np.random.default_rng(0).standard_normal((3, 2, 2)))
    np.testing.assert_array_equal(tg.Unroll(a)(xs)[0].data, tg.Unroll(b)(xs)[0].data)


def test_load_state_dict_errors_name_the_entry_and_change_nothing():
    m = tg.LSTMCell(2, 3)
    before = m.state_dict()
    state = m.state_dict()
    del state["bias_hh"]
    with pytest.raises(KeyError, match=r"missing parameters \['bias_hh'\]"):
        m.load_state_dict(state)
    state = m.state_dict()
    state["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"unexpected parameters \['extra'\]"):
        m.load_state_dict(state)
    state = {k: v + 1 for k, v in m.state_dict().items()}
    state["weight_hh"] = np.zeros((3, 3))
    with pytest.raises(ValueError,
                       match=r"parameter 'weight_hh' has shape \(12, 3\) but the state holds \(3, 3\)"):
        m.load_state_dict(state)
    for k, v in m.state_dict().items():        # the valid entries were not half-loaded
        np.testing.assert_array_equal(v, before[k])
    # strict=False loads what matches.
    partial = {"bias_ih": np.ones(12)}
    m.load_state_dict(partial, strict=False)
    np.testing.assert_array_equal(m.bias_ih.data, np.ones(12))


def test_parameter_data_is_assignable_and_always_requires_grad():
    p = nn.Parameter(np.zeros(3))
    assert p.requires_grad and p.is_leaf
    p.data = np.arange(3.0)
    (p * p).sum().backward()
    np.testing.assert_array_equal(p.grad, 2 * np.arange(3.0))
    with pytest.raises(TypeError, match="Parameter: needs floating data"):
        nn.Parameter(np.arange(3))
    q = nn.Parameter(np.zeros(2, np.float32))
    assert q.dtype == np.float32


# --- Linear, Embedding -------------------------------------------------------------------------

@given(batch=S.shapes(min_dims=0, max_dims=2, max_side=3),
       sizes=st.tuples(st.integers(1, 4), st.integers(1, 4)), bias=st.booleans(), data=st.data())
def test_linear_gradcheck(batch, sizes, bias, data):
    I, O = sizes
    lin = nn.Linear(I, O, bias=bias)
    x = data.draw(S.tensors(batch + (I,)))
    out = lin(x)
    ref = x.data @ lin.weight.data.T + (lin.bias.data if bias else 0)
    np.testing.assert_allclose(out.data, ref, rtol=1e-13, atol=1e-13)
    gradcheck(lin, x, params=lin.parameters())
    check_vjp(lin, x, params=lin.parameters())


def test_linear_init_bounds():
    lin = nn.Linear(16, 200)
    bound = 1 / np.sqrt(16)
    for p in (lin.weight, lin.bias):
        assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.9 * bound


@given(data=st.data())
def test_embedding_gradcheck_with_repeated_indices(data):
    emb = nn.Embedding(4, 3)
    idx = data.draw(hnp.arrays(np.int64, S.shapes(min_dims=1, max_dims=2, max_side=5),
                                 elements=st.integers(0, 3)))
    out = emb(idx)
    np.testing.assert_array_equal(out.data, emb.weight.data[idx])
    gradcheck(lambda: emb(idx), params=[emb.weight])


def test_embedding_gradient_adds_up_repeated_rows():
    emb = nn.Embedding(3, 2)
    emb(np.array([[0, 2], [0, 0]])).sum().backward()
    np.testing.assert_array_equal(emb.weight.grad, [[3, 3], [0, 0], [1, 1]])


def test_embedding_errors():
    emb = nn.Embedding(4, 3)
    with pytest.raises(IndexError, match="Embedding: index 4 is out of range for 4 embeddings"):
        emb(np.array([1, 4]))
    with pytest.raises(IndexError, match="index -1 is out of range"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match="Embedding: indices must be integers, got dtype float64"):
        emb(np.array([1.0]))


# --- Dropout -----------------------------------------------------------------------------------

def test_dropout_eval_is_identity():
    drop = nn.Dropout(0.7).eval()
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)))
    assert drop(x) is x


def test_dropout_train_masks_and_scales():
    tg.manual_seed(0)
    drop = nn.Dropout(0.25)
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = drop(x)
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.75)          # survivors scaled by 1/(1-p)
    assert abs(kept.mean() - 0.75) < 0.02                        # 10,000 draws: p within 2%
    # The gradient is the same mask and scale.
    g = np.random.default_rng(1).standard_normal(x.shape)
    y.backward(g)
    np.testing.assert_allclose(x.grad, g * kept / 0.75, rtol=1e-15)


def test_dropout_keeps_float32_and_rejects_bad_p():
    x = Tensor(np.ones((3, 3), np.float32))
    assert nn.Dropout(0.5)(x).dtype == np.float32
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\)"):
            nn.Dropout(p)


# --- init ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 4), (3, 6), (6, 3)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal(shape, gain):
    W = init.orthogonal_(nn.Parameter(np.empty(shape)), gain=gain).data
    rows, cols = shape
    if rows <= cols:
        np.testing.assert_allclose(W @ W.T, gain ** 2 * np.eye(rows), atol=1e-12)
    else:
        np.testing.assert_allclose(W.T @ W, gain ** 2 * np.eye(cols), atol=1e-12)


def test_xavier_uniform_bound():
    W = init.xavier_uniform_(nn.Parameter(np.empty((300, 100))), gain=2.0).data
    bound = 2.0 * np.sqrt(6.0 / 400)
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.95 * bound
    with pytest.raises(ValueError,
                       match=r"init: fan in/out need a tensor of at least 2 dims, got shape \(3,\)"):
        init.xavier_uniform_(nn.Parameter(np.empty(3)))


def test_uniform_normal_zeros():
    p = init.uniform_(nn.Parameter(np.empty((100, 100))), -0.3, 0.2).data
    assert p.min() >= -0.3 and p.max() < 0.2 and p.min() < -0.29 and p.max() > 0.19
    q = init.normal_(nn.Parameter(np.empty((200, 200))), mean=1.0, std=0.5).data
    assert abs(q.mean() - 1.0) < 0.01 and abs(q.std() - 0.5) < 0.01
    assert not np.any(init.zeros_(nn.Parameter(np.ones(3))).data)


def test_manual_seed_makes_models_reproducible():
    tg.manual_seed(5)
    a = tg.LSTMCell(3, 4)
    tg.manual_seed(5)
    b = tg.LSTMCell(3, 4)
    tg.manual_seed(6)
    c = tg.LSTMCell(3, 4)
    np.testing.assert_array_equal(a.weight_hh.data, b.weight_hh.data)
    assert not np.array_equal(a.weight_hh.data, c.weight_hh.data)


@pytest.mark.parametrize("cell_cls, gates", [(tg.RNNCell, 1), (tg.LSTMCell, 4), (tg.GRUCell, 3)])
def test_cells_use_pytorch_init(cell_cls, gates):
    """Every weight and bias uniform in ±1/sqrt(H), PyTorch's shapes, initial state zeros."""
    H, I = 64, 5
    cell = cell_cls(I, H)
    k = 1 / np.sqrt(H)
    shapes = {"weight_ih": (gates * H, I), "weight_hh": (gates * H, H), "bias_ih": (gates * H,),
              "bias_hh": (gates * H,)}
    assert {n: p.shape for n, p in cell.named_parameters()} == shapes
    for _, p in cell.named_parameters():
        assert np.abs(p.data).max() <= k
        assert np.abs(p.data).max() > 0.9 * k            # fills the range, not a narrower one
        assert abs(p.data.mean()) < 0.2 * k
    assert all(np.all(s.data == 0) for s in tg.rnn.cell.tree_leaves(cell.init_state(2)))


def test_fork_rng_draws_from_its_seed_and_leaves_the_outer_stream_untouched():
    tg.manual_seed(7)
    expected_outer = np.random.default_rng(7).uniform(size=3)
    with nn.init.fork_rng(1):
        inside = nn.init.rng().uniform(size=3)
    np.testing.assert_array_equal(inside, np.random.default_rng(1).uniform(size=3))
    with pytest.raises(RuntimeError), nn.init.fork_rng(2):
        raise RuntimeError("the generator comes back on errors too")
    np.testing.assert_array_equal(nn.init.rng().uniform(size=3), expected_outer)
