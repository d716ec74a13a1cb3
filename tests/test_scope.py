"""Where the forward is (time step, layer) for observers: set by Unroll and Stack as a
context manager, so an exception never leaves a stale step behind; per thread."""

import threading

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import observers


class ScopeRecorder:
    """An observer that notes the scope each recorded op was made in."""

    def __init__(self):
        self.scopes = []

    def on_forward(self, ctx, inputs, out):
        self.scopes.append(dict(observers.current_scope()))

    def on_backward(self, ctx, out_grads, in_grads, outs):
        pass


class FailsAt(tg.Cell):
    """An RNN cell that raises at step ``t_fail``."""

    def __init__(self, size, t_fail):
        self.inner, self.t_fail, self.t = tg.RNNCell(size, size), t_fail, 0
        self.input_size, self.hidden_size = size, size

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def forward(self, x, h):
        if self.t == self.t_fail:
            raise RuntimeError("cell fails")
        self.t += 1
        return self.inner(x, h)


@pytest.fixture
def recorder():
    rec = ScopeRecorder()
    observers.add_observer(rec)
    yield rec
    observers.remove_observer(rec)


def test_ops_are_tagged_with_their_step_and_layer(recorder):
    stack = tg.Stack([tg.RNNCell(2, 3), tg.RNNCell(3, 3)])
    tg.Unroll(stack)(tg.zeros(4, 1, 2))
    tagged = {(s.get("step"), s.get("layer")) for s in recorder.scopes if s}
    assert tagged == {(t, k) for t in range(4) for k in range(2)}
    assert observers.current_scope() == {}


@pytest.mark.parametrize("layered", [False, True])
def test_an_exception_mid_unroll_restores_the_scope(recorder, layered):
    cell = FailsAt(2, t_fail=2)
    if layered:
        cell = tg.Stack([tg.RNNCell(2, 2), cell])
    with observers.scope(step=9):                  # an outer unroll's step comes back
        with pytest.raises(RuntimeError, match="cell fails"):
            tg.Unroll(cell)(tg.zeros(5, 1, 2))
        assert observers.current_scope() == {"step": 9}
    assert observers.current_scope() == {}
    # Inside, each step's ops carried the step (the outer 9 shadowed), up to the failing one.
    inner_steps = {s["step"] for s in recorder.scopes if s["step"] != 9}
    assert inner_steps == ({0, 1, 2} if layered else {0, 1})


def test_the_scope_is_per_thread(recorder):
    seen = []
    with observers.scope(step=5):
        worker = threading.Thread(target=lambda: seen.append(dict(observers.current_scope())))
        worker.start()
        worker.join()
        assert observers.current_scope() == {"step": 5}
    assert seen == [{}]


def test_no_scope_is_kept_while_nobody_listens():
    assert not observers.observing()
    with observers.scope(step=3):
        assert observers.current_scope() == {}
    ys, _ = tg.Unroll(tg.RNNCell(2, 2))(tg.Tensor(np.ones((3, 1, 2))))
    assert ys.shape == (3, 1, 2)
