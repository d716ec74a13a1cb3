"""The BPTT ledger: a shared weight's gradient split exactly by time step."""

import copy

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import observers
from tinygrad_rnn.inspect import ledger

CELLS = {
    "rnn": lambda: tg.RNNCell(3, 4),
    "lstm": lambda: tg.LSTMCell(3, 4),
    "gru": lambda: tg.GRUCell(3, 4),
    "stack": lambda: tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)]),
}
T, B = 6, 2


def model(kind, seed=0):
    tg.manual_seed(seed)
    return tg.Unroll(CELLS[kind]()), tg.nn.Linear(4, 2)


def loss_of(ys, readout, targets):
    return ((readout(ys) - targets) ** 2).mean()


def data():
    rng = np.random.default_rng(1)
    xs = tg.Tensor(rng.standard_normal((T, B, 3)))
    targets = rng.standard_normal((T, B, 2))
    return xs, targets


def params_of(rnn, readout):
    return {**dict(rnn.named_parameters()), "readout.weight": readout.weight,
            "readout.bias": readout.bias}


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("lengths", [None, [T, 3]])
def test_the_steps_add_up_to_grad_and_each_term_is_that_steps_use(kind, lengths):
    rnn, readout = model(kind)
    xs, targets = data()
    params = params_of(rnn, readout)
    with ledger(params) as led:
        ys, _ = rnn(xs, lengths=lengths)
        loss_of(ys, readout, targets).backward()
    assert led.steps == list(range(T))

    # Independent reference: a hand loop in which step t uses its own copy of the cell, so
    # each copy's .grad is exactly step t's term (and no sharing adds them up).
    copies = [copy.deepcopy(rnn.cell) for _ in range(T)]
    for c in copies:
        c.zero_grad()
    state, outs = rnn.cell.init_state(B), []
    steps = xs.unbind(0)
    for t in range(T):
        out, new_state = copies[t](steps[t], state)
        if lengths is not None and t >= min(lengths):
            mask = (t < np.array(lengths))[:, None]
            new_state = tg.rnn.tree_map(lambda n, o, mask=mask: tg.where(mask, n, o), new_state, state)
            out = tg.where(mask, out, np.zeros(()))
        state = new_state
        outs.append(out)
    ref_readout = copy.deepcopy(readout)
    ref_readout.zero_grad()
    loss_of(tg.stack(outs), ref_readout, targets).backward()

    for name, p in rnn.named_parameters():
        np.testing.assert_allclose(led.total(name), p.grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(led.param_grad(name, "outside"), np.zeros(p.shape))
        for t in range(T):
            ref = dict(copies[t].named_parameters())[name.removeprefix("cell.")].grad
            ref = np.zeros(p.shape) if ref is None else ref
            np.testing.assert_allclose(led.param_grad(name, t), ref, rtol=1e-10, atol=1e-14,
                                       err_msg=f"{name} at step {t}")
        np.testing.assert_allclose(led.param_grad_norms(name),
                                   [np.linalg.norm(led.param_grad(name, t)) for t in range(T)])
    # The readout runs after the Unroll: all of its gradient is "outside".
    np.testing.assert_allclose(led.param_grad("readout.weight", "outside"), readout.weight.grad,
                               rtol=1e-12)
    np.testing.assert_allclose(led.param_grad("readout.weight", "outside"), ref_readout.weight.grad,
                               rtol=1e-10)
    assert not np.any(led.param_grads("readout.weight"))


def test_state_gradient_norms_match_retained_gradients():
    rnn, readout = model("lstm")
    xs, targets = data()
    with ledger(rnn) as led:
        ys, _ = rnn(xs)
        loss_of(ys, readout, targets).backward()
    assert led.h_name == "h" and set(led.state_names) == {"h", "c"}

    # Reference: the same unroll by hand with retained state gradients.
    state, hs, cs = rnn.cell.init_state(B), [], []
    outs = []
    for x in xs.unbind(0):
        out, state = rnn.cell(x, state)
        hs.append(state[0].retain_grad())
        cs.append(state[1].retain_grad())
        outs.append(out)
    loss_of(tg.stack(outs), readout, targets).backward()
    np.testing.assert_allclose(led.state_grad_norms(), [np.linalg.norm(h.grad) for h in hs], rtol=1e-12)
    np.testing.assert_allclose(led.state_grad_norms("c"), [np.linalg.norm(c.grad) for c in cs],
                               rtol=1e-12)
    table = str(led).splitlines()
    assert "|dL/dh_t|" in table[0] and "cell.weight_hh" in table[0]
    assert table[1].split()[0] == "0" and table[-1].split()[0] == "sum=.grad"


def test_stack_states_are_named_per_layer_and_h_is_the_top_layer():
    rnn, readout = model("stack")
    xs, targets = data()
    with ledger(rnn) as led:
        ys, _ = rnn(xs)
        loss_of(ys, readout, targets).backward()
    assert set(led.state_names) == {"layer0.h", "layer0.c", "layer1.h"}
    assert led.h_name == "layer1.h"


def test_saturation_counts_the_saturated_tanh_and_sigmoid_units():
    tg.manual_seed(0)
    cell = tg.RNNCell(3, 50)
    rnn = tg.Unroll(cell)
    xs, _ = data()
    with ledger(rnn) as led:
        ys, _ = rnn(xs)
        ys.sum().backward()
    expected = (np.abs(ys.data) > 0.99).mean(axis=(1, 2))
    np.testing.assert_allclose(led.saturation_fraction(), expected)

    cell.weight_ih.data *= 50                       # drive the units into saturation
    with ledger(rnn) as led_big:
        ys, _ = rnn(xs)
        ys.sum().backward()
    assert led_big.saturation_fraction().mean() > 0.5 > led.saturation_fraction().mean()

    # Sigmoid units: saturated outside [0.01, 0.99].
    x = tg.Tensor(np.array([[-10.0, -1.0, 0.0, 4.0]]), requires_grad=True)
    with ledger() as led_sig:
        x.sigmoid().sum().backward()
    assert led_sig.saturation_fraction("outside") == 0.25       # only sigmoid(-10) < 0.01


def test_without_params_every_leaf_is_tracked_and_misuse_is_explained():
    w = tg.Tensor(np.ones((2, 2)), requires_grad=True, name="w")
    with ledger() as led:
        (tg.Tensor(np.ones((3, 2))) @ w).sum().backward()
    np.testing.assert_allclose(led.total("w"), w.grad)
    with pytest.raises(KeyError, match="no gradient reached parameter 'v'"):
        led.param_grad("v", 0)

    rnn, _ = model("rnn")
    with ledger(rnn) as led:
        ys, _ = rnn(data()[0])
    ys.sum().backward()                       # backward outside the block: nothing recorded
    with pytest.raises(RuntimeError, match="no backward ran inside"):
        led.total("cell.weight_hh")
    with pytest.raises(ValueError, match="saturation"):
        ledger(saturation=1.5)


def test_unroll_tells_nobody_about_steps_when_nobody_listens(monkeypatch):
    def fail(*args):
        raise AssertionError("on_step called outside a ledger block")
    monkeypatch.setattr(ledger, "on_step", fail)
    rnn, _ = model("stack")
    led = ledger(rnn)                           # made, but not entered: nobody listens
    ys, _ = rnn(data()[0])
    ys.sum().backward()
    assert observers.current_scope() == {} and not observers.observing()
    with pytest.raises(AssertionError, match="outside a ledger block"), led:
        rnn(data()[0])                        # with a listener, the notification does happen
