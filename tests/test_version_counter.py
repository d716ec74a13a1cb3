"""Version counters: an in-place change of a tensor a backward still needs is an error naming
the op, the shape and both versions, never a silently wrong gradient."""

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn

MODIFIED = (r"one of the tensors needed for gradient computation has been modified in place: "
            r"input 1 of 'linear' \(shape \(2, 3\)\) is at version 2; expected version 1, the "
            r"version its forward saved\. .*optimizer\.step\(\) after backward")


def _model_and_loss():
    tg.manual_seed(0)
    lin = nn.Linear(3, 2)                  # init functions: version 1
    x = tg.randn(4, 3, seed=1)
    return lin, lin(x).tanh().sum()


def test_backward_after_an_optimizer_step_is_an_error_with_both_versions():
    """Today's silent wrong gradient: weights changed between a forward and a retained backward."""
    lin, loss = _model_and_loss()
    assert lin.weight.version == 1
    loss.backward(retain_graph=True)
    opt = tg.optim.SGD(lin.parameters(), lr=0.1)
    opt.step()
    assert lin.weight.version == 2 and lin.bias.version == 2
    with pytest.raises(RuntimeError, match=MODIFIED):
        loss.backward()


@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "AdamW"])
def test_every_optimizer_bumps_the_version(optimizer):
    lin, loss = _model_and_loss()
    loss.backward(retain_graph=True)
    kwargs = {"lr": 0.01, "momentum": 0.9} if optimizer == "SGD" else {"lr": 0.01}
    getattr(tg.optim, optimizer)(lin.parameters(), **kwargs).step()
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_the_error_is_raised_before_a_wrong_gradient_reaches_grad():
    lin, loss = _model_and_loss()
    with tg.no_grad():
        lin.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()
    assert lin.weight.grad is None


def test_public_updates_bump_the_version():
    lin, _ = _model_and_loss()
    w = lin.weight
    before = w.version
    nn.init.zeros_(w)
    lin.load_state_dict({k: v.data.copy() for k, v in lin.named_parameters()})
    with tg.no_grad():
        w.copy_(np.ones((2, 3)))
        w.zero_()
        w.add_(Tensor(np.ones((2, 3))), alpha=0.5)
        w.mul_(2.0)
    assert w.version == before + 6
    np.testing.assert_allclose(w.data, np.ones((2, 3)))


def test_load_state_dict_and_init_after_a_forward_are_caught():
    lin, loss = _model_and_loss()
    lin.load_state_dict({k: v.data.copy() for k, v in lin.named_parameters()})
    with pytest.raises(RuntimeError, match="input 1 of 'linear'"):
        loss.backward()


def test_a_changed_output_that_the_backward_reads_is_caught():
    x = Tensor(np.array([0.5, -0.2]), requires_grad=True)
    y = x.tanh()                                     # tanh's backward reads its output
    loss = (y + 3).sum()                             # add reads no values
    with tg.no_grad():
        y.copy_(np.zeros(2))
    with pytest.raises(RuntimeError, match=r"output 0 of 'tanh' \(shape \(2,\)\) is at version 1; "
                                           "expected version 0"):
        loss.backward()


def test_a_change_the_backward_does_not_read_is_not_an_error():
    # add's and sum's backward read only shapes: changing an input after them is harmless
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 4.0]))
    loss = (a + b).sum()
    with tg.no_grad():
        b.copy_(np.zeros(2))
        a.add_(1.0)
    loss.backward()
    np.testing.assert_allclose(a.grad, [1.0, 1.0])


def test_a_forward_after_the_change_is_fine():
    lin, loss = _model_and_loss()
    loss.backward()
    tg.optim.SGD(lin.parameters(), lr=0.1).step()
    loss2 = lin(tg.randn(4, 3, seed=1)).tanh().sum()
    lin.weight.grad = None
    loss2.backward()                             # the new forward saved the new version
    assert lin.weight.grad is not None


def test_constant_inputs_are_checked_too():
    x = Tensor(np.array([[1.0, 2.0]]))          # a constant, not requiring grad
    w = Tensor(np.array([[0.5], [0.1]]), requires_grad=True)
    loss = (x @ w).sum()                         # matmul's weight gradient reads x
    with tg.no_grad():
        x.mul_(3.0)
    with pytest.raises(RuntimeError, match=r"input 0 of 'matmul' \(shape \(1, 2\)\) is at version 1"):
        loss.backward()


def test_in_place_methods_refuse_tensors_that_require_grad_outside_no_grad():
    w = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"add_: an in-place change of a tensor that requires "
                                           r"grad \(shape \(2,\)\) is not recorded"):
        w.add_(1.0)
    with pytest.raises(tg.ShapeError, match=r"copy_: cannot copy shape \(3,\)"):
        with tg.no_grad():
            w.copy_(np.ones(3))


class _Square(tg.autograd.Function):
    """A user's op that does not say what it saves: every input counts as read."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (2 * g * self.x,)


def test_a_users_function_that_names_no_saved_inputs_is_checked_on_every_input():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = _Square.apply(x).sum()
    with tg.no_grad():
        x.mul_(2.0)
    with pytest.raises(RuntimeError, match=r"input 0 of '_square' \(shape \(2,\)\) is at version 1"):
        loss.backward()

