"""Only errors the inputs cause become a ShapeError; a bug inside an op surfaces as itself.

`Function.apply` asks an op's ``input_problem`` after its forward failed: a failure the
inputs explain is re-raised as a ShapeError naming the op and the shapes, chained to
numpy's own error; when the inputs are fine, the original exception propagates unchanged.
The fixed-arity fast paths of the Tensor methods (engine/fast_apply.py) behave the same.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, ops
from tinygrad_rnn.autograd import Function, ShapeError
from tinygrad_rnn.engine.fast_apply import apply_binary, apply_unary


class BuggyUnary(Function):
    """A forward with a bug unrelated to its input: indexes past a list's end."""

    def forward(self, a):
        return a * [1.0][3]

    def backward(self, g):
        return (g,)


class BuggyBinary(ops.Add):
    """An Add whose forward has a bug: it calls a method numpy arrays do not have. Its
    inputs broadcast fine, so Add's input check must not blame them."""

    def forward(self, a, b):
        return a.plus(b)


@pytest.mark.parametrize("call", [
    lambda x: BuggyUnary.apply(x),
    lambda x: apply_unary(BuggyUnary, x),
])
def test_a_bug_in_a_forward_raises_its_own_exception(call):
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(IndexError, match="list index out of range") as info:
        call(x)
    assert not isinstance(info.value, ShapeError)


@pytest.mark.parametrize("call", [
    lambda a, b: BuggyBinary.apply(a, b),
    lambda a, b: apply_binary(BuggyBinary, a, b),
])
def test_a_bug_in_a_checked_op_is_not_called_a_shape_error(call):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((1, 3)))
    with pytest.raises(AttributeError, match="plus") as info:
        call(a, b)
    assert not isinstance(info.value, ShapeError)


@given(st.sampled_from(["add", "sub", "mul", "div", "pow"]),
       st.integers(2, 4), st.integers(2, 4), st.integers(5, 7))
def test_bad_shapes_are_a_shape_error_chained_to_numpys(name, rows, cols, other):
    op = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "pow": lambda a, b: a ** b}[name]
    a, b = Tensor(np.ones((rows, cols))), Tensor(np.ones((other, cols + 1)))
    with pytest.raises(ShapeError, match=rf"^{name}: shapes \({rows}, {cols}\) and ") as info:
        op(a, b)
    assert isinstance(info.value.__cause__, ValueError)            # numpy's own message, kept
    assert not isinstance(info.value.__cause__, ShapeError)


def test_linear_checks_its_shapes_itself():
    x, w = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 3)))
    with pytest.raises(ShapeError, match=r"^linear: input of shape \(2, 3\) does not fit .* bias \(1,\)"):
        tg.linear(x, w, Tensor(np.ones(1)))     # numpy alone would broadcast this bias
    with pytest.raises(ShapeError, match=r"^linear: input of shape \(2, 5\)"):
        tg.linear(Tensor(np.ones((2, 5))), w)
    with pytest.raises(ShapeError, match=r"^linear:"):
        tg.nn.Linear(3, 4)(Tensor(np.ones((2, 5))))


@pytest.mark.parametrize("fn, inputs_fine", [
    (lambda x: x.reshape(3, -1), True),
    (lambda x: x.reshape(5, -1), False),
    (lambda x: x.reshape(0, -1), False),
    (lambda x: x.reshape(-1, -1), False),
    (lambda x: x.transpose(1, 0), True),
    (lambda x: x.transpose(1, 1), False),
    (lambda x: x.sum(axis=(0, 0)), False),
    (lambda x: x.max(axis=-3), False),
    (lambda x: x[1, 3], True),
    (lambda x: x[1, 4], False),
])
def test_input_checks_agree_with_numpy(fn, inputs_fine):
    """Each op's explicit check says the inputs are wrong exactly when numpy refuses them."""
    x = Tensor(np.arange(12.0).reshape(3, 4))
    if inputs_fine:
        fn(x)
    else:
        with pytest.raises(ShapeError) as info:
            fn(x)
        assert info.value.__cause__ is not None


def test_a_matmul_check_finds_each_kind_of_mismatch():
    assert ops.MatMul.input_problem(np.ones((3, 4)), np.ones((4, 2))) is None
    assert "not aligned" in ops.MatMul.input_problem(np.ones((3, 4)), np.ones((5, 2)))
    assert "at least 1-D" in ops.MatMul.input_problem(np.ones(()), np.ones((5, 2)))
    assert "batch" in ops.MatMul.input_problem(np.ones((2, 3, 4)), np.ones((3, 4, 5)))
