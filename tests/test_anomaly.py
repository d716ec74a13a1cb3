"""detect_anomaly: the first op whose output or gradient is NaN/inf, with its site and step."""

import os
import warnings

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import observers
from tinygrad_rnn.inspect import AnomalyError

HERE = os.path.basename(__file__)


def line_of(marker):
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if marker in line and "line_of(" not in line:
                return i
    raise AssertionError(marker)


class LogCell(tg.Cell):
    """An RNN cell that also emits log(x[:, 0]): NaN at any step whose input is negative."""

    def __init__(self, input_size=2, hidden_size=3):
        self.inner = tg.RNNCell(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def forward(self, x, h):
        out, h = self.inner(x, h)
        y = x[:, :1].log()                                     # PLANTED-LOG
        return out + y, h


def sequence(T=10, B=2, I=2, bad_step=None):
    xs = np.abs(np.random.default_rng(0).standard_normal((T, B, I))) + 0.5
    if bad_step is not None:
        xs[bad_step, 1, 0] = -1.0
    return tg.Tensor(xs, requires_grad=True)


def test_forward_nan_names_the_op_shapes_site_and_time_step():
    tg.manual_seed(0)
    rnn = tg.Unroll(LogCell())
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # numpy's RuntimeWarning must not escape instead
        with pytest.raises(AnomalyError) as info:
            with tg.detect_anomaly():
                rnn(sequence(bad_step=7))
    e = info.value
    assert (e.op, e.phase, e.step, e.layer) == ("log", "forward", 7, None)
    assert e.input_shapes == [(2, 1)]
    assert f"{HERE}:{line_of('PLANTED-LOG')} in forward" in e.site
    msg = str(e)
    assert "'log'" in msg and "time step 7" in msg and "NaN" in msg and "(2, 1)" in msg
    assert f"{HERE}:{line_of('PLANTED-LOG')}" in msg
    assert isinstance(e, RuntimeError) and isinstance(e, FloatingPointError)
    # The error escaped mid-unroll; the step it was at must not leak into later code.
    assert observers.current_scope() == {} and not observers.observing()


class SignFlipCell(tg.Cell):
    """Passes |x| through, negated at one step: the layer above then reads a negative input."""

    def __init__(self, size, flip_step):
        self.input_size = self.hidden_size = size
        self.flip_step, self.t = flip_step, 0

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        sign = -1.0 if self.t == self.flip_step else 1.0
        self.t += 1
        y = x.abs() * sign + 0.5 * sign
        return y, h


def test_inside_a_stack_the_layer_is_named_too():
    tg.manual_seed(0)
    stack = tg.Stack([SignFlipCell(2, flip_step=3), LogCell(2, 3)])
    with pytest.raises(AnomalyError) as info:
        with tg.detect_anomaly():
            tg.Unroll(stack)(sequence(T=6))
    e = info.value
    assert (e.op, e.step, e.layer) == ("log", 3, 1)
    assert "time step 3, layer 1 of a Stack" in str(e)


class SqrtCell(tg.Cell):
    """sqrt(h - h + c) with c = 0 at one step: a finite forward whose backward is inf."""

    def __init__(self, zero_step):
        self.inner = tg.RNNCell(2, 3)
        self.zero_step, self.t = zero_step, 0
        self.input_size = 2

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def forward(self, x, h):
        out, h = self.inner(x, h)
        c = 0.0 if self.t == self.zero_step else 1.0
        self.t += 1
        return out + (out * 0.0 + c).sqrt(), h                 # PLANTED-SQRT


def test_backward_inf_names_the_op_and_step_recorded_in_forward():
    tg.manual_seed(0)
    with pytest.raises(AnomalyError) as info:
        with tg.detect_anomaly():
            ys, _ = tg.Unroll(SqrtCell(zero_step=4))(sequence(T=6))
            ys.sum().backward()
    e = info.value
    assert (e.op, e.phase, e.step) == ("sqrt", "backward", 4)
    assert e.input_shapes == [(2, 3)]
    assert f"{HERE}:{line_of('PLANTED-SQRT')} in forward" in e.site
    assert "gradient of input 0" in str(e) and "inf" in str(e)


def test_check_forward_false_checks_only_gradients():
    x = tg.Tensor(np.array([0.0, 4.0]), requires_grad=True)
    with tg.detect_anomaly(check_forward=False):
        y = x.log()                          # -inf in forward: not checked
        assert np.isneginf(y.data[0])
        with pytest.raises(AnomalyError, match="'log' \\(backward\\).*inf in the gradient of input 0"):
            y.sum().backward()               # d log(x)/dx = 1/0


def test_non_finite_data_entering_from_outside_is_reported_as_such():
    x = tg.Tensor(np.array([np.inf, 1.0]), requires_grad=True)
    with pytest.raises(AnomalyError, match="input 0 already held non-finite values"):
        with tg.detect_anomaly():
            x * 2.0


def test_off_by_default_and_usable_as_a_decorator():
    assert not observers.observing()
    with np.errstate(invalid="ignore"):
        y = tg.Tensor(np.array([-1.0])).log()            # no anomaly mode: plain NaN
    assert np.isnan(y.data[0])

    @tg.detect_anomaly()
    def f(v):
        return tg.Tensor(np.array([v]), requires_grad=True).sqrt()

    assert f(4.0).data[0] == 2.0
    with pytest.raises(AnomalyError, match="'sqrt' \\(forward\\)"):
        f(-1.0)
    assert not observers.observing()


def test_nested_blocks_and_finite_graphs_pass_untouched():
    tg.manual_seed(0)
    rnn = tg.Unroll(tg.LSTMCell(2, 3))
    xs = sequence(T=5)
    with tg.detect_anomaly():
        with tg.detect_anomaly():
            ys, _ = rnn(xs)
        ys.sum().backward()
    expected = xs.grad.copy()
    xs.grad = None
    ys, _ = rnn(xs)
    ys.sum().backward()
    np.testing.assert_array_equal(xs.grad, expected)     # observing changes no number
    assert not observers.observing()
