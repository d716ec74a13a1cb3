"""Losses in tinygrad_rnn.nn.functional: values against numpy, gradients against finite
differences (float64, hypothesis-drawn shapes, masks and ignored positions), PyTorch where
installed, and the errors for bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.nn import functional as F
from tinygrad_rnn.testing import check_vjp, gradcheck
from tinygrad_rnn.testing import strategies as S


def reference_ce(logits, targets, counts):
    """Cross-entropy by the textbook formula, in float64: mean over counted positions of
    logsumexp(z) - z[target]."""
    z = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    c = counts.reshape(-1)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    per = lse - z[np.arange(len(t)), np.where(c, t, 0)]
    return per[c].mean(), np.where(c, per, 0.0).reshape(targets.shape)


@st.composite
def ce_problem(draw, leading=None):
    """Logits (leading..., V), in-range integer targets and a mask with at least one True."""
    if leading is None:                  # (N,) or (T, B)
        lead = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.sampled_from([1, 2]))))
    else:
        lead = leading
    V = draw(st.integers(2, 5))
    logits = draw(S.tensors(lead + (V,), low=-3.0, high=3.0))
    targets = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, V - 1)))
    mask = draw(hnp.arrays(np.bool_, lead))
    mask.reshape(-1)[draw(st.integers(0, mask.size - 1))] = True
    return logits, targets, mask


@given(ce_problem())
def test_cross_entropy_matches_formula_and_gradcheck(problem):
    logits, targets, _ = problem
    expected, _ = reference_ce(logits.data, targets, np.ones(targets.shape, bool))
    out = F.cross_entropy(logits, targets)
    assert out.shape == ()
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda z: F.cross_entropy(z, targets), logits)
    check_vjp(lambda z: F.cross_entropy(z, targets), logits)


@given(ce_problem(), st.booleans())
def test_cross_entropy_mask_and_ignore_index(problem, use_ignore_index):
    """Masked-out (or ignored) positions contribute nothing: neither to the value nor to the
    gradient, and the mean is over the counted positions only."""
    logits, targets, mask = problem
    if use_ignore_index:
        targets = np.where(mask, targets, -100)      # out of range, but ignored
        kwargs = {"ignore_index": -100}
    else:
        kwargs = {"mask": mask}
    expected, per = reference_ce(logits.data, targets, mask)
    out = F.cross_entropy(logits, targets, **kwargs)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda z: F.cross_entropy(z, targets, **kwargs), logits)
    out.backward()
    assert np.all(logits.grad[~mask] == 0)
    none = F.cross_entropy(logits, targets, reduction="none", **kwargs)
    assert none.shape == targets.shape
    np.testing.assert_allclose(none.data, per, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda z: F.cross_entropy(z, targets, reduction="none", **kwargs), logits)
    total = F.cross_entropy(logits, targets, reduction="sum", **kwargs)
    np.testing.assert_allclose(total.data, per.sum(), rtol=1e-12, atol=1e-12)


def test_cross_entropy_sequence_shape_equals_flattened():
    """(T, B, V) with (T, B) targets is the same loss as the (T*B, V) flattening."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 3, 6))
    t = rng.integers(0, 6, (4, 3))
    mask = rng.random((4, 3)) < 0.6
    mask[0, 0] = True
    a = F.cross_entropy(Tensor(z), t, mask=mask)
    b = F.cross_entropy(Tensor(z.reshape(12, 6)), t.reshape(12), mask=mask.reshape(12))
    assert a.data == pytest.approx(b.data, rel=1e-14)


def test_cross_entropy_mask_accepts_zero_one_arrays():
    z = Tensor(np.random.default_rng(2).standard_normal((5, 4)))
    t = np.array([0, 1, 2, 3, 0])
    m = np.array([1, 0, 1, 1, 0])
    assert F.cross_entropy(z, t, mask=m).data == F.cross_entropy(z, t, mask=m.astype(bool)).data


def test_cross_entropy_is_stable_for_huge_logits():
    z = Tensor(np.array([[1e4, 0.0, -1e4], [0.0, 3e4, 0.0]]), requires_grad=True)
    loss = F.cross_entropy(z, np.array([1, 1]))
    loss.backward()
    # Row 1 is certain and right (loss 0); row 0 puts the target 1e4 below the winner.
    assert loss.data == pytest.approx(1e4 / 2)
    assert np.isfinite(z.grad).all()
    np.testing.assert_allclose(z.grad, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-12)


def test_cross_entropy_float32_stays_float32():
    z = Tensor(np.random.default_rng(3).standard_normal((3, 2, 5)).astype(np.float32),
               requires_grad=True)
    loss = F.cross_entropy(z, np.zeros((3, 2), dtype=np.int32))
    assert loss.dtype == np.float32
    loss.backward()
    assert z.grad.dtype == np.float32


@given(ce_problem(leading=(3,)))
def test_nll_loss_is_cross_entropy_of_log_softmax(problem):
    logits, targets, mask = problem
    a = F.nll_loss(logits.log_softmax(axis=-1), targets, mask=mask)
    b = F.cross_entropy(logits, targets, mask=mask)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-14)
    assert gradcheck(lambda z: F.nll_loss(z, targets, mask=mask), logits)


# --- errors ------------------------------------------------------------------------------

def test_cross_entropy_errors_name_the_problem():
    z = Tensor(np.zeros((4, 3)))
    with pytest.raises(TypeError, match=r"targets must be integers \(class indices"):
        F.cross_entropy(z, np.zeros(4))
    with pytest.raises(tg.ShapeError, match=r"targets have shape \(3,\), expected .*\(4,\)"):
        F.cross_entropy(z, np.zeros(3, dtype=int))
    with pytest.raises(IndexError, match=r"target 3 at position \(2,\) is out of range for 3 classes"):
        F.cross_entropy(z, np.array([0, 1, 3, 2]))
    with pytest.raises(IndexError, match=r"target -1 at position \(0,\)"):
        F.cross_entropy(z, np.array([-1, 1, 2, 2]))
    with pytest.raises(tg.ShapeError, match=r"expected logits of shape \(N, V\)"):
        F.cross_entropy(Tensor(np.zeros(3)), np.array(1))
    with pytest.raises(TypeError, match="logits must be floating point"):
        F.cross_entropy(Tensor(np.zeros((2, 3), dtype=np.int64)), np.array([0, 1]))
    with pytest.raises(tg.ShapeError, match=r"mask has shape \(2,\)"):
        F.cross_entropy(z, np.array([0, 1, 2, 0]), mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="mask must be boolean or hold only 0 and 1"):
        F.cross_entropy(z, np.array([0, 1, 2, 0]), mask=np.array([0, 2, 1, 1]))
    with pytest.raises(ValueError, match="every one of the 4 positions is masked or ignored"):
        F.cross_entropy(z, np.array([0, 1, 2, 0]), mask=np.zeros(4, bool))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(z, np.array([0, 1, 2, 0]), reduction="avg")


def test_out_of_range_target_is_fine_where_masked():
    z = Tensor(np.zeros((3, 2)))
    loss = F.cross_entropy(z, np.array([0, 7, 1]), mask=np.array([True, False, True]))
    assert loss.data == pytest.approx(np.log(2))


# --- mse ---------------------------------------------------------------------------------

@given(st.data())
def test_mse_value_and_gradients(data):
    shape = data.draw(S.shapes(min_dims=1))
    pred = data.draw(S.tensors(shape))
    target = data.draw(S.tensors(shape))
    out = F.mse(pred, target)
    np.testing.assert_allclose(out.data, np.mean((pred.data - target.data) ** 2), rtol=1e-12)
    assert gradcheck(F.mse, pred, target)
    check_vjp(lambda a, b: F.mse(a, b, reduction="none"), pred, target)
    np.testing.assert_allclose(F.mse(pred, target, reduction="sum").data,
                               np.sum((pred.data - target.data) ** 2), rtol=1e-12)


def test_mse_refuses_silent_broadcasting():
    with pytest.raises(tg.ShapeError, match=r"pred has shape \(4, 1\) but target has shape \(4,\)"):
        F.mse(Tensor(np.zeros((4, 1))), Tensor(np.zeros(4)))


def test_mse_scalar_target():
    assert F.mse(Tensor(np.array([1.0, 3.0])), 1.0).data == pytest.approx(2.0)


# --- PyTorch -----------------------------------------------------------------------------

def test_cross_entropy_against_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    T, B, V = 5, 3, 7
    z = rng.standard_normal((T, B, V))
    t = rng.integers(0, V, (T, B))
    t[1, 2] = t[3, 0] = -100
    ours = Tensor(z, requires_grad=True)
    loss = F.cross_entropy(ours, t, ignore_index=-100)
    loss.backward()
    zt = torch.tensor(z, requires_grad=True)
    # torch puts the classes on axis 1: (B, V, T) against (B, T) targets
    ref = torch.nn.functional.cross_entropy(zt.permute(1, 2, 0), torch.tensor(t.T), ignore_index=-100)
    ref.backward()
    assert loss.data == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(ours.grad, zt.grad.numpy(), rtol=1e-10, atol=1e-14)
    # (N, V) with reduction="sum"
    flat = Tensor(z.reshape(-1, V), requires_grad=True)
    s = F.cross_entropy(flat, t.reshape(-1), ignore_index=-100, reduction="sum")
    s.backward()
    ft = torch.tensor(z.reshape(-1, V), requires_grad=True)
    r = torch.nn.functional.cross_entropy(ft, torch.tensor(t.reshape(-1)), ignore_index=-100,
                                          reduction="sum")
    r.backward()
    assert s.data == pytest.approx(r.item(), rel=1e-12)
    np.testing.assert_allclose(flat.grad, ft.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_mse_against_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    ours = Tensor(a, requires_grad=True)
    F.mse(ours, Tensor(b)).backward()
    at = torch.tensor(a, requires_grad=True)
    ref = torch.nn.functional.mse_loss(at, torch.tensor(b))
    ref.backward()
    assert F.mse(Tensor(a), Tensor(b)).data == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(ours.grad, at.grad.numpy(), rtol=1e-12)
