"""trace(): the tape, forward and backward, in order and with shapes."""

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import observers
from tinygrad_rnn.inspect import trace


def test_a_small_graph_reads_as_a_tape():
    w = tg.Tensor(np.ones((3, 2)), requires_grad=True, name="w")
    x = tg.Tensor(np.arange(6.0).reshape(2, 3))
    with trace() as t:
        h = (x @ w).tanh()
        loss = (h * 2.0).sum()
        loss.backward()
    assert [r.op for r in t.forward] == ["matmul", "tanh", "mul", "sum"]
    assert [(r.node, r.op) for r in t.backward] == [(4, "sum"), (3, "mul"), (2, "tanh"), (1, "matmul")]
    first = t.forward[0]
    assert first.inputs == [("in1", (2, 3)), ("w", (3, 2))]
    assert first.outputs == [("t1", (2, 2))]
    # The matmul's backward hands w its gradient (w is a leaf: .grad accumulates); x gets none.
    last = t.backward[-1]
    assert last.inputs == [("w", (3, 2))] and last.accumulates == ["w"]
    assert last.outputs == [("t1", (2, 2))]
    text = str(t).splitlines()
    assert text[0] == "forward: 4 ops, in the order they ran"
    assert text[1].split() == ["#1", "matmul", "in1", "(2,", "3),", "w", "(3,", "2)", "->", "t1", "(2,",
                               "2)", "float64"]
    assert text[3].split()[:6] == ["#3", "mul", "t2", "(2,", "2),", "2.0"]   # a scalar shows its value
    assert "w.grad += (3, 2)" in text[-1]


def test_backward_order_is_a_reverse_topological_order_of_the_forward():
    tg.manual_seed(0)
    cell = tg.LSTMCell(3, 4)
    xs = tg.randn(4, 2, 3, seed=1)
    with trace(names=cell) as t:
        ys, _ = tg.Unroll(cell)(xs)
        ys.sum().backward()
    on_tape = [r for r in t.forward if r.on_tape]
    numbers = [r.node for r in t.backward]
    assert sorted(numbers) == [r.node for r in on_tape]            # each recorded op once
    # An op's backward runs only after the backward of every op that consumed its outputs.
    made_by = {lab: r.node for r in t.forward for lab, _ in r.outputs}
    position = {n: i for i, n in enumerate(numbers)}
    for r in on_tape:
        for lab, _ in r.inputs:
            producer = made_by.get(lab)
            if producer in position:
                assert position[producer] > position[r.node], (producer, r.node)


def test_unroll_steps_and_parameter_names_appear():
    tg.manual_seed(0)
    rnn = tg.Unroll(tg.RNNCell(2, 3))
    with trace(names=rnn) as t:
        ys, _ = rnn(tg.randn(3, 1, 2, seed=0))
        ys[-1].sum().backward()
    tanhs = [r for r in t.forward if r.op == "tanh"]
    assert [r.step for r in tanhs] == [0, 1, 2]
    uses = [r for r in t.forward if ("cell.weight_hh", (3, 3)) in r.inputs]
    assert [r.step for r in uses] == [0, 1, 2]                     # one use of W_hh per step
    # Only the last output is in the loss, so W_hh's three terms all arrive through step 2's chain.
    accum = [r.step for r in t.backward if "cell.weight_hh" in r.accumulates]
    assert sorted(accum) == [0, 1, 2]
    assert "[time step 1]" in str(t)


def test_ops_without_grad_are_listed_as_off_the_tape_and_the_observer_goes_away():
    with trace() as t:
        y = tg.Tensor(np.ones(3)).exp()
    assert len(t) == 1 and not t.forward[0].on_tape
    assert "not on the tape" in str(t)
    assert y.data[0] == pytest.approx(np.e)
    assert not observers.observing()


def test_multi_output_ops_show_every_output():
    x = tg.Tensor(np.ones((2, 4)), requires_grad=True)
    with trace() as t:
        a, b = x.chunk(2)
        (a * 3.0).sum().backward()
    split = t.forward[0]
    assert split.op == "split" and [s for _, s in split.outputs] == [(2, 2), (2, 2)]
    back = [r for r in t.backward if r.op == "split"][0]
    assert back.outputs == [("t1", (2, 2))]           # only the used piece had a gradient
    assert back.inputs == [("in1", (2, 4))] and back.accumulates == ["in1"]
