"""Optimizers against closed-form updates and a hand-written Adam, PyTorch where installed;
gradient clipping; optimizer state round trips."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor, nn, optim


def param(values):
    return nn.Parameter(np.array(values, dtype=np.float64))


def step_with(opt, p, grad):
    p.grad = np.array(grad, dtype=np.float64)
    opt.step()


# --- SGD -----------------------------------------------------------------------------------

def test_sgd_on_a_quadratic_is_geometric():
    """loss = a/2 * p^2 has gradient a*p, so plain SGD gives p_k = (1 - lr*a)^k p_0."""
    p = param([1.0, -2.0, 0.5])
    a, lr = 3.0, 0.1
    opt = optim.SGD([p], lr=lr)
    for _ in range(7):
        opt.zero_grad()
        loss = (p * p * (a / 2)).sum()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(p.data, (1 - lr * a) ** 7 * np.array([1.0, -2.0, 0.5]), rtol=1e-13)


@given(st.floats(0.05, 0.95), st.integers(1, 8), st.booleans())
def test_sgd_momentum_closed_form(mu, k, nesterov):
    """A constant gradient g: the buffer after j steps is g (1 - mu^j) / (1 - mu); the update
    is lr times that (heavy ball) or lr g (1 + mu (1 - mu^j) / (1 - mu)) (Nesterov)."""
    g = np.array([0.5, -1.0])
    lr = 0.1
    p = param([1.0, 2.0])
    opt = optim.SGD([p], lr=lr, momentum=mu, nesterov=nesterov)
    for _ in range(k):
        step_with(opt, p, g)
    bufs = [(1 - mu ** j) / (1 - mu) for j in range(1, k + 1)]
    factor = sum(1 + mu * b for b in bufs) if nesterov else sum(bufs)
    np.testing.assert_allclose(p.data, np.array([1.0, 2.0]) - lr * factor * g, rtol=1e-12)


def test_sgd_weight_decay_closed_form():
    """Zero gradient: only the decay acts, p_k = (1 - lr*wd)^k p_0; with momentum the decayed
    gradient wd*p feeds the buffer like any other gradient."""
    p = param([2.0, -4.0])
    opt = optim.SGD([p], lr=0.1, weight_decay=0.5)
    for _ in range(5):
        step_with(opt, p, [0.0, 0.0])
    np.testing.assert_allclose(p.data, 0.95 ** 5 * np.array([2.0, -4.0]), rtol=1e-13)
    q = param([1.0])
    opt = optim.SGD([q], lr=0.1, momentum=0.9, weight_decay=0.5)
    step_with(opt, q, [0.2])            # g = 0.2 + 0.5 * 1.0 = 0.7; buf = 0.7
    assert q.data[0] == pytest.approx(1.0 - 0.07)
    step_with(opt, q, [0.2])            # g = 0.2 + 0.5 * 0.93; buf = 0.9*0.7 + g
    g2 = 0.2 + 0.5 * 0.93
    assert q.data[0] == pytest.approx(0.93 - 0.1 * (0.9 * 0.7 + g2), rel=1e-14)


def test_sgd_argument_errors():
    p = param([1.0])
    with pytest.raises(ValueError, match="nesterov=True needs a positive momentum"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"SGD: lr must lie in \[0.0, inf\), got -0.1"):
        optim.SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="got a single Tensor"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="not a leaf"):
        optim.SGD([p * 2], lr=0.1)


# --- Adam ----------------------------------------------------------------------------------

def adam_by_hand(p0, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    """Kingma & Ba, Algorithm 1, written out with bias-corrected moments (plus L2 or
    decoupled decay): the trajectory of p."""
    p = np.array(p0, dtype=np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p.copy())
    return out


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_follows_the_hand_written_trajectory(wd, decoupled):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(12)]
    p = param(p0)
    opt = optim.Adam([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd,
                     decoupled_weight_decay=decoupled)
    expected = adam_by_hand(p0, grads, 0.01, 0.8, 0.99, 1e-6, wd, decoupled)
    for g, want in zip(grads, expected):
        step_with(opt, p, g)
        np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-15)


def test_adam_first_step_moves_every_weight_by_lr():
    """After one step m_hat = g and v_hat = g^2: the update is lr * g / (|g| + eps)."""
    p = param([1.0, 1.0, 1.0])
    opt = optim.Adam([p], lr=0.1, eps=1e-8)
    g = np.array([1e-3, -5.0, 200.0])
    step_with(opt, p, g)
    np.testing.assert_allclose(p.data, 1.0 - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)
    np.testing.assert_allclose(p.data, [0.9, 1.1, 0.9], rtol=2e-6)   # ~lr, whatever |g|


def test_adamw_is_adam_with_decoupled_decay():
    a, b = param([1.0, -1.0]), param([1.0, -1.0])
    oa = optim.AdamW([a], lr=0.1)
    ob = optim.Adam([b], lr=0.1, weight_decay=0.01, decoupled_weight_decay=True)
    assert oa.weight_decay == 0.01
    for g in ([0.3, 0.1], [-0.2, 0.4]):
        step_with(oa, a, g)
        step_with(ob, b, g)
    np.testing.assert_array_equal(a.data, b.data)


def test_params_without_grad_are_skipped():
    """An unused parameter keeps its value and its Adam state (its own step count), so its
    bias correction starts at 1 when it is first used."""
    used, unused = param([1.0]), param([2.0])
    opt = optim.Adam([used, unused], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        used.grad = np.array([0.5])
        opt.step()
    assert unused.data[0] == 2.0 and opt.state[1] == {}
    unused.grad = np.array([4.0])
    opt.step()
    assert unused.data[0] == pytest.approx(2.0 - 0.1, rel=1e-6)   # a first step: lr * sign(g)


def test_zero_grad_forgets_gradients():
    p = param([1.0])
    opt = optim.SGD([p], lr=1.0)
    (p * 3).sum().backward()
    opt.zero_grad()
    assert p.grad is None


def test_float32_parameters_stay_float32():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    for opt in (optim.Adam([p], lr=0.1), optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)):
        p.grad = np.ones(3, dtype=np.float32)
        opt.step()
        assert p.data.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[0].values() if v.ndim)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw", "adam_l2"])
def test_against_pytorch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(10)]
    ours = param(p0)
    theirs = torch.tensor(p0, requires_grad=True)
    if kind == "sgd":
        o = optim.SGD([ours], lr=0.05, momentum=0.9, weight_decay=0.01)
        t = torch.optim.SGD([theirs], lr=0.05, momentum=0.9, weight_decay=0.01)
    elif kind == "nesterov":
        o = optim.SGD([ours], lr=0.05, momentum=0.8, nesterov=True)
        t = torch.optim.SGD([theirs], lr=0.05, momentum=0.8, nesterov=True)
    elif kind == "adam":
        o = optim.Adam([ours], lr=0.01, betas=(0.85, 0.995), eps=1e-7)
        t = torch.optim.Adam([theirs], lr=0.01, betas=(0.85, 0.995), eps=1e-7)
    elif kind == "adamw":
        o = optim.AdamW([ours], lr=0.01, weight_decay=0.1)
        t = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.1)
    else:
        o = optim.Adam([ours], lr=0.01, weight_decay=0.1)
        t = torch.optim.Adam([theirs], lr=0.01, weight_decay=0.1)
    for g in grads:
        step_with(o, ours, g)
        theirs.grad = torch.tensor(g)
        t.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)


# --- state ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.05),
                                  lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)])
def test_state_dict_round_trip_continues_identically(make, tmp_path):
    """Optimizer A runs 3 steps; B starts from A's state (through tg.save / tg.load) and the
    same weights; the next steps of A and B agree bit for bit."""
    rng = np.random.default_rng(2)
    pa = [param(rng.standard_normal((2, 3))), param(rng.standard_normal(3))]
    a = make(pa)
    for _ in range(3):
        for p in pa:
            p.grad = rng.standard_normal(p.shape)
        a.step()
    tg.save({"opt": a.state_dict()}, tmp_path / "o.safetensors")
    pb = [param(p.data) for p in pa]
    b = make(pb)
    b.lr = 123.0                         # the saved hyperparameters win
    b.load_state_dict(tg.load(tmp_path / "o.safetensors")["opt"])
    assert b.lr == 0.05 and b.step_count == 3
    for _ in range(2):
        grads = [rng.standard_normal(p.shape) for p in pa]
        for p, q, g in zip(pa, pb, grads):
            p.grad, q.grad = g, g.copy()
        a.step()
        b.step()
    for p, q in zip(pa, pb):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_mismatches_are_clear_and_change_nothing():
    a = optim.Adam([param([1.0, 2.0])], lr=0.1)
    step_with(a, a.params[0], [1.0, 1.0])
    state = a.state_dict()
    b = optim.Adam([param([1.0, 2.0, 3.0])], lr=0.1)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of params\[0\] has shape \(2,\), but the "
                                         r"parameter has shape \(3,\)"):
        b.load_state_dict(state)
    assert b.state == [{}] and b.step_count == 0
    c = optim.Adam([param([1.0, 2.0]), param([3.0])], lr=0.1)
    with pytest.raises(ValueError, match="holds 1 parameters, this optimizer has 2"):
        c.load_state_dict(state)
    with pytest.raises(ValueError, match="saved by a Adam optimizer"):
        optim.SGD([param([1.0, 2.0])], lr=0.1).load_state_dict(state)


# --- clipping ------------------------------------------------------------------------------

def test_clip_returns_the_total_norm_and_scales_to_max_norm():
    a, b = param(np.zeros(3)), param(np.zeros((2, 2)))
    a.grad = np.array([3.0, 0.0, 4.0])
    b.grad = np.array([[12.0, 0.0], [0.0, 0.0]])
    before = [a.grad.copy(), b.grad.copy()]
    norm = optim.clip_grad_norm([a, b], max_norm=2.6)
    assert norm == pytest.approx(13.0)           # sqrt(9 + 16 + 144)
    total = math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum())
    assert total == pytest.approx(2.6, rel=1e-6)
    # same direction: every gradient scaled by the same factor
    np.testing.assert_allclose(a.grad, before[0] * 2.6 / 13.0, rtol=1e-6)
    np.testing.assert_allclose(b.grad, before[1] * 2.6 / 13.0, rtol=1e-6)


def test_clip_below_threshold_leaves_gradients_untouched():
    p = param(np.zeros(2))
    p.grad = np.array([0.3, 0.4])
    original = p.grad
    assert optim.clip_grad_norm([p], 1.0) == pytest.approx(0.5)
    assert p.grad is original and np.array_equal(p.grad, [0.3, 0.4])


def test_clip_skips_parameters_without_gradient():
    a, b = param([1.0]), param([1.0])
    a.grad = np.array([10.0])
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(10.0)
    assert b.grad is None


def test_clip_non_finite_norm():
    a, b = param([1.0, 1.0]), param([1.0])
    a.grad = np.array([1.0, np.nan])
    b.grad = np.array([1.0])
    a.name = "W_hh"
    with pytest.raises(FloatingPointError, match=r"non-finite gradients in params\[0\] \(2,\) 'W_hh'"):
        optim.clip_grad_norm([a, b], 1.0)
    norm = optim.clip_grad_norm([a, b], 1.0, error_if_nonfinite=False)
    assert math.isnan(norm)
    assert b.grad[0] == 1.0                       # left for the caller to skip the step


def test_clip_catches_the_exploding_gradient_of_a_vanilla_rnn():
    """The seed's story: dL/dW_hh holds W_hh^(t-1). A relu RNN with W_hh = 1.5 I over 40 steps
    has a gradient norm in the millions; clipping returns that norm and scales it down."""
    tg.manual_seed(0)
    cell = tg.RNNCell(2, 4, nonlinearity="relu")
    cell.weight_hh.data[...] = 1.5 * np.eye(4)
    cell.bias_hh.data[...] = 0.1
    cell.bias_ih.data[...] = 0.1
    xs = Tensor(np.full((40, 1, 2), 0.01))
    ys, _ = tg.Unroll(cell)(xs)
    ys[-1].sum().backward()
    norm = optim.clip_grad_norm(cell.parameters(), 5.0)
    assert norm > 1e6
    after = math.sqrt(sum((p.grad ** 2).sum() for p in cell.parameters()))
    assert after == pytest.approx(5.0, rel=1e-6)


def test_clip_against_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((3, 2)) * 4, rng.standard_normal(5)]
    ours = [param(np.zeros(g.shape)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, t, g in zip(ours, theirs, grads):
        p.grad, t.grad = g.copy(), torch.tensor(g)
    n1 = optim.clip_grad_norm(ours, 1.5)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.5)
    assert n1 == pytest.approx(n2.item(), rel=1e-12)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


# --- CosineAnnealingLR ----------------------------------------------------------------------

@given(T_max=st.integers(1, 60), frac=st.floats(0, 1), lr=st.floats(1e-5, 1.0))
def test_cosine_schedule_closed_form_and_steps(T_max, frac, lr):
    p = param([1.0])
    opt = optim.SGD([p], lr=lr)
    eta_min = frac * lr
    sched = optim.CosineAnnealingLR(opt, T_max=T_max, eta_min=eta_min)
    assert sched.lr_at(0) == pytest.approx(lr, rel=1e-12)
    assert sched.lr_at(T_max) == pytest.approx(eta_min, rel=1e-12, abs=1e-18)
    assert sched.lr_at(T_max + 5) == sched.lr_at(T_max)           # held at the floor
    seen = []
    for _ in range(T_max):
        sched.step()
        seen.append(opt.lr)
    want = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2
            for t in range(1, T_max + 1)]
    np.testing.assert_allclose(seen, want, rtol=1e-12, atol=1e-18)
    assert all(a >= b - 1e-18 for a, b in zip(seen, seen[1:]))      # never rises


def test_cosine_schedule_state_round_trip_and_errors():
    opt = optim.Adam([param([1.0, 2.0])], lr=0.1)
    sched = optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    opt2 = optim.Adam([param([1.0, 2.0])], lr=0.1)
    sched2 = optim.CosineAnnealingLR(opt2, T_max=3)
    sched2.load_state_dict(state)
    assert opt2.lr == opt.lr and sched2.lr_at(7) == sched.lr_at(7)
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        optim.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="eta_min must"):
        optim.CosineAnnealingLR(opt, T_max=5, eta_min=-1.0)
    with pytest.raises(TypeError, match="expected an optimizer"):
        optim.CosineAnnealingLR([1.0], T_max=5)


def test_cosine_schedule_matches_pytorch_up_to_T_max():
    torch = pytest.importorskip("torch")
    w = torch.zeros(1, requires_grad=True)
    t_opt = torch.optim.SGD([w], lr=0.3)
    t_sched = torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=12, eta_min=0.02)
    opt = optim.SGD([param([0.0])], lr=0.3)
    sched = optim.CosineAnnealingLR(opt, T_max=12, eta_min=0.02)
    for _ in range(12):
        t_opt.step()
        t_sched.step()
        sched.step()
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)
