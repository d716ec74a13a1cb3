"""The hand-written numpy BPTT baseline of benchmarks/ computes what our tape computes.

A benchmark ratio means something only if both sides do the same arithmetic: the baseline's
outputs and gradients must equal the tape's (float64) for every cell, with and without an
initial state.
"""

import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import numpy_bptt  # noqa: E402

CELLS = {"rnn": tg.RNNCell, "lstm": tg.LSTMCell, "gru": tg.GRUCell}


def _ours(kind, cell, xs, dys, state0):
    xs_t = tg.Tensor(xs, requires_grad=True)
    state = None
    if state0 is not None:
        state = tuple(tg.Tensor(s) for s in state0) if kind == "lstm" else tg.Tensor(state0)
    ys, _ = tg.Unroll(cell)(xs_t, state)
    ys.backward(dys)
    grads = {name: p.grad for name, p in cell.named_parameters()}
    grads["xs"] = xs_t.grad
    return ys.data, grads


@pytest.mark.parametrize("kind", sorted(CELLS))
@given(T=st.integers(1, 5), B=st.integers(1, 3), I=st.integers(1, 4), H=st.integers(1, 4),
       with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_baseline_matches_the_tape(kind, T, B, I, H, with_state, seed):
    rng = np.random.default_rng(seed)
    tg.manual_seed(seed)
    cell = CELLS[kind](I, H, dtype=np.float64)
    xs = rng.standard_normal((T, B, I))
    dys = rng.standard_normal((T, B, H))
    state0 = None
    if with_state:
        state0 = (tuple(rng.standard_normal((B, H)) for _ in range(2)) if kind == "lstm"
                  else rng.standard_normal((B, H)))
    params = [cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data, cell.bias_hh.data]

    ys, grads = numpy_bptt.FORWARD_BACKWARD[kind](xs, dys, *params, state0, need_dx=True)
    ys_ref, grads_ref = _ours(kind, cell, xs, dys, state0)

    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-12)
    assert sorted(grads) == sorted(grads_ref)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{kind}: gradient of {name}")


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_baseline_keeps_float32(kind):
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 4, 5
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    params = [rng.standard_normal(s).astype(np.float32) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    dys = rng.standard_normal((T, B, H)).astype(np.float32)
    ys, grads = numpy_bptt.FORWARD_BACKWARD[kind](xs, dys, *params)
    assert ys.dtype == np.float32 and ys.shape == (T, B, H)
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_torch_equations_match_the_baseline(kind):
    """The PyTorch eager equations timed by bench_rnn.py compute what the baseline computes."""
    torch = pytest.importorskip("torch")
    import torch_eager

    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 5, 6
    G = torch_eager.GATES[kind]
    params = [rng.standard_normal(s) * 0.5 for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    xs = rng.standard_normal((T, B, I))
    dys = rng.standard_normal((T, B, H))
    ys, grads = numpy_bptt.FORWARD_BACKWARD[kind](xs, dys, *params)

    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    tys = torch_eager.EQUATIONS[kind](torch.tensor(xs), *tparams)
    tys.backward(torch.tensor(dys))
    np.testing.assert_allclose(tys.detach().numpy(), ys, rtol=1e-12, atol=1e-12)
    for name, p in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), tparams):
        np.testing.assert_allclose(p.grad.numpy(), grads[name], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{kind}: gradient of {name}")
