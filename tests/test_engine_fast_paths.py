"""The eager engine's speed measures change no number and leave no trace behind them.

Unroll and backward pause Python's cyclic GC (and Unroll hands its new tape straight to the
oldest generation); inside an unroll, ``linear`` reuses one contiguous copy of each weight's
transpose. These tests pin down that the GC is left as it was found, that a program's own
frozen objects stay frozen, that the copies never outlive the unroll or go stale, and that
the multi-output bookkeeping of the walk (outputs nobody used) stays right; and that weight
gradients deferred into one matrix product (``engine.weight_grads.OuterProductSum``) are the same sums,
with only arrays ever seen by hooks, ``retain_grad`` and observers.
"""

import contextlib
import gc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import observers
from tinygrad_rnn.engine import transposed, weight_grads
from tinygrad_rnn.inspect import ledger


def _lstm_run(T=20, B=3, I=4, H=5, seed=0):
    tg.manual_seed(seed)
    cell = tg.LSTMCell(I, H)
    xs = tg.Tensor(np.random.default_rng(seed).standard_normal((T, B, I)))
    return cell, xs


@pytest.mark.parametrize("enabled", [True, False])
def test_unroll_and_backward_leave_the_gc_as_they_found_it(enabled):
    cell, xs = _lstm_run()
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        ys, _ = tg.Unroll(cell)(xs)
        assert gc.isenabled() is enabled
        ys.sum().backward()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_gc_is_restored_when_the_cell_raises():
    class Broken(tg.Cell):
        def init_state(self, batch_size):
            return tg.zeros(batch_size, 2)

        def forward(self, x, h):
            raise ValueError("broken cell")

    assert gc.isenabled()
    with pytest.raises(ValueError, match="broken cell"):
        tg.Unroll(Broken())(tg.zeros(3, 2, 2))
    assert gc.isenabled()
    assert getattr(transposed._state, "cache", None) is None      # no cache left behind


def test_the_new_tape_is_not_left_for_a_young_generation_scan():
    # Without the hand-over, the young generation's allocation count after the loop is the
    # size of the whole tape (thousands of objects here), and the next allocation starts a
    # collection that scans all of it.
    cell, xs = _lstm_run(T=200)
    collections = []

    def on_gc(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(on_gc)
    try:
        ys, _ = tg.Unroll(cell)(xs)
    finally:
        gc.callbacks.remove(on_gc)
    assert collections == []
    assert gc.get_count()[0] < gc.get_threshold()[0]
    ys.sum().backward()
    assert np.all(np.isfinite(cell.weight_hh.grad))


def test_objects_the_program_froze_stay_frozen():
    cell, xs = _lstm_run()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        ys, _ = tg.Unroll(cell)(xs)
        ys.sum().backward()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


# --- transposed weights inside an unroll ---------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_gives_the_same_numbers_inside_and_outside_the_block(dtype):
    rng = np.random.default_rng(1)
    x = tg.Tensor(rng.standard_normal((6, 7)).astype(dtype))
    W = tg.Tensor(rng.standard_normal((9, 7)).astype(dtype), requires_grad=True)
    b = tg.Tensor(rng.standard_normal(9).astype(dtype), requires_grad=True)
    outside = tg.linear(x, W, b).data
    with transposed.reuse_transposed_weights():
        first = tg.linear(x, W, b).data
        second = tg.linear(x, W, b).data           # the cached contiguous transpose
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(first, outside, rtol=rtol)
    np.testing.assert_allclose(second, outside, rtol=rtol)
    assert first.dtype == second.dtype == dtype


def test_the_copy_is_made_at_the_second_use_and_dropped_with_the_block():
    w = np.arange(12.0).reshape(3, 4)
    with transposed.reuse_transposed_weights():
        first = transposed.transposed(w)
        assert np.shares_memory(first, w)          # used once: no copy
        second = transposed.transposed(w)
        assert not np.shares_memory(second, w) and second.flags.c_contiguous
        np.testing.assert_array_equal(second, w.T)
        with transposed.reuse_transposed_weights():       # a nested unroll shares the outer copies
            assert transposed.transposed(w) is second
        assert transposed.transposed(w) is second        # ... and does not drop them on exit
    assert getattr(transposed._state, "cache", None) is None
    assert np.shares_memory(transposed.transposed(w), w)


def test_a_weight_changed_in_place_between_unrolls_is_seen():
    cell, xs = _lstm_run()
    rnn = tg.Unroll(cell)
    before = rnn(xs)[0].data
    cell.weight_ih.data *= 0.5                     # an optimizer step does this, in place
    cell.weight_hh.data -= 0.1
    after = rnn(xs)[0].data
    fresh, _ = _lstm_run()
    fresh.load_state_dict(cell.state_dict())
    np.testing.assert_allclose(after, tg.Unroll(fresh)(xs)[0].data, rtol=1e-12)
    assert not np.allclose(after, before)


def test_unroll_gradients_match_a_hand_loop():
    # The hand loop runs outside any unroll: plain W.T views, no GC pause.
    cell, xs = _lstm_run(T=6)
    xs.requires_grad_(True)
    ys, _ = tg.Unroll(cell)(xs)
    (ys * ys).sum().backward()
    unrolled = [p.grad.copy() for p in cell.parameters()] + [xs.grad.copy()]
    for p in cell.parameters():
        p.grad = None
    xs.grad = None
    state, outs = cell.init_state(xs.shape[1]), []
    for x_t in xs.unbind(0):
        out, state = cell(x_t, state)
        outs.append(out)
    (tg.stack(outs) ** 2).sum().backward()
    by_hand = [p.grad for p in cell.parameters()] + [xs.grad]
    for a, b in zip(unrolled, by_hand):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# --- multi-output nodes: outputs nobody used ---------------------------------------------------

def test_unbind_and_chunk_outputs_nobody_used_get_zero_gradient():
    rng = np.random.default_rng(2)
    x = tg.Tensor(rng.standard_normal((4, 3, 8)), requires_grad=True)
    steps = x.unbind(0)
    gates = steps[2].chunk(4, axis=-1)
    (gates[1] * gates[3]).sum().backward()
    expected = np.zeros_like(x.data)
    expected[2, :, 2:4] = x.data[2, :, 6:8]
    expected[2, :, 6:8] = x.data[2, :, 2:4]
    np.testing.assert_array_equal(x.grad, expected)


def test_observers_see_only_the_outputs_that_were_reached():
    seen = []

    class Recorder:
        def on_forward(self, ctx, inputs, out):
            pass

        def on_backward(self, ctx, out_grads, in_grads, outs):
            if ctx.n_outputs > 1:
                seen.append((len(out_grads), sorted(t._index for t in outs)))

    x = tg.Tensor(np.ones((2, 8)), requires_grad=True)
    rec = Recorder()
    observers.add_observer(rec)
    try:
        parts = x.chunk(4, axis=-1)
        (parts[0] + parts[2]).sum().backward()
    finally:
        observers.remove_observer(rec)
    assert seen == [(4, [0, 2])]


# --- deferred weight gradients: one GEMM over all the uses' rows -----------------------------

@contextlib.contextmanager
def _deferring(everything):
    """Defer every weight gradient (``everything``), or none: the tests' sizes are below the
    work threshold, and both ways must give the same numbers."""
    before = weight_grads.DEFER_WEIGHT_GRAD_MIN_WORK
    weight_grads.DEFER_WEIGHT_GRAD_MIN_WORK = 0 if everything else np.inf
    try:
        yield
    finally:
        weight_grads.DEFER_WEIGHT_GRAD_MIN_WORK = before


def _shared_weight_loss(T, B, I, H, seed, dtype=np.float64, matmuls=True):
    """W (H, I) used by T ``linear`` calls, once by an elementwise op and, if ``matmuls``, by
    T ``matmul``s through ``W.T`` (a non-leaf; its array gradients interleave with the
    deferred ones). The loss is linear in each use, so its exact gradient is a sum of per-use
    outer products, written out below in numpy."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((B, I)).astype(dtype) for _ in range(T)]
    Cs = [rng.standard_normal((B, H)).astype(dtype) for _ in range(T)]
    Es = [rng.standard_normal((B, H)).astype(dtype) for _ in range(T)]
    D = rng.standard_normal((H, I)).astype(dtype)
    W = tg.nn.Parameter(rng.standard_normal((H, I)).astype(dtype))
    b = tg.nn.Parameter(rng.standard_normal(H).astype(dtype))
    loss = (W * tg.Tensor(D)).sum()
    for x, C, E in zip(xs, Cs, Es):
        loss = loss + (tg.linear(tg.Tensor(x), W, b) * tg.Tensor(C)).sum()
        if matmuls:
            loss = loss + ((tg.Tensor(x) @ W.T) * tg.Tensor(E)).sum()
    dW = D + sum(C.T @ x for C, x in zip(Cs, xs))
    if matmuls:
        dW = dW + sum(E.T @ x for E, x in zip(Es, xs))
    db = sum(C.sum(axis=0) for C in Cs)
    return loss, W, b, dW, db


@given(T=st.integers(1, 12), B=st.integers(1, 5), I=st.integers(1, 6), H=st.integers(1, 6),
       seed=st.integers(0, 2**16), matmuls=st.booleans())
def test_deferred_weight_gradients_equal_the_per_use_sums(T, B, I, H, seed, matmuls):
    grads = []
    for deferred in (True, False):
        with _deferring(deferred):
            loss, W, b, dW, db = _shared_weight_loss(T, B, I, H, seed, matmuls=matmuls)
            loss.backward()
        assert type(W.grad) is np.ndarray and W.grad.shape == (H, I)
        np.testing.assert_allclose(W.grad, dW, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.grad, db, rtol=1e-12, atol=1e-12)
        grads.append(W.grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_only_products_above_the_work_threshold_are_deferred():
    small, big = np.ones((2, 3)), np.ones((64, 64))
    assert type(weight_grads.weight_grad(small, small)) is np.ndarray
    lazy = weight_grads.weight_grad(big, big)
    assert type(lazy) is weight_grads.OuterProductSum     # 64**3 multiply-adds: one stacked GEMM
    np.testing.assert_array_equal(lazy.materialize(), np.full((64, 64), 64.0))


@pytest.fixture
def defer_all():
    with _deferring(True):
        yield


def test_retain_graph_twice_accumulates_twice_and_float32_stays_float32(defer_all):
    loss, W, b, dW, db = _shared_weight_loss(8, 4, 3, 5, seed=3, dtype=np.float32)
    loss.backward(retain_graph=True)
    once = W.grad.copy()
    loss.backward()
    assert W.grad.dtype == b.grad.dtype == np.float32
    np.testing.assert_allclose(once, dW, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(W.grad, 2 * dW, rtol=1e-5, atol=1e-5)


def test_an_lstm_weight_gradient_is_the_sum_of_its_steps(defer_all):
    # Each step's contribution, taken by a hook on the weight seen by that step alone.
    cell, xs = _lstm_run(T=9)
    ys, _ = tg.Unroll(cell)(xs)
    (ys * ys).sum().backward()
    deferred = cell.weight_hh.grad.copy()

    # The BPTT ledger (an observer) must still see one array per step, not the deferred sum.
    cell.zero_grad()
    with ledger({"weight_hh": cell.weight_hh}) as led:
        ys, _ = tg.Unroll(cell)(xs)
        (ys * ys).sum().backward()
    np.testing.assert_allclose(cell.weight_hh.grad, deferred, rtol=1e-12, atol=1e-14)

    cell.zero_grad()
    state, outs, per_step = cell.init_state(xs.shape[1]), [], []
    for x_t in xs.unbind(0):                       # LSTMCell.forward, but with a W_hh per step
        w_t = cell.weight_hh * 1.0                 # a non-leaf copy: its hook sees one step
        w_t.register_hook(lambda g: per_step.append(g.copy()))
        h, c = state
        gates = tg.linear(x_t, cell.weight_ih, cell.bias_ih) + tg.linear(h, w_t, cell.bias_hh)
        i, f, g, o = gates.chunk(4, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        outs.append(h)
        state = (h, c)
    (tg.stack(outs) ** 2).sum().backward()
    np.testing.assert_allclose(cell.weight_hh.grad, deferred, rtol=1e-12, atol=1e-14)
    assert len(per_step) == 9 and all(type(g) is np.ndarray for g in per_step)
    np.testing.assert_allclose(deferred, sum(per_step), rtol=1e-12, atol=1e-14)
    for t in range(9):
        np.testing.assert_allclose(led.param_grad("weight_hh", t), per_step[8 - t], rtol=1e-10, atol=1e-14)


def test_hooks_retain_grad_and_observers_see_arrays(defer_all):
    rng = np.random.default_rng(4)
    V = tg.nn.Parameter(rng.standard_normal((3, 2)))
    W = V * 2.0                                    # a non-leaf weight
    W.retain_grad()
    hooked = []
    V.register_hook(lambda g: hooked.append(g))
    W.register_hook(lambda g: hooked.append(g))
    in_grads = []

    class Recorder:
        def on_forward(self, ctx, inputs, out):
            pass

        def on_backward(self, ctx, out_grads, in_grads_, outs):
            in_grads.extend(g for g in in_grads_ if g is not None)

    xs = [rng.standard_normal((4, 2)) for _ in range(3)]
    rec = Recorder()
    observers.add_observer(rec)
    try:
        loss = sum(tg.linear(tg.Tensor(x), W).sum() for x in xs)
        loss.backward()
    finally:
        observers.remove_observer(rec)
    expected_W = sum(np.ones((4, 3)).T @ x for x in xs)
    assert len(hooked) == 2 and all(type(g) is np.ndarray for g in hooked)
    assert all(type(g) is np.ndarray for g in in_grads)
    assert type(W.grad) is np.ndarray
    np.testing.assert_allclose(W.grad, expected_W, rtol=1e-13)
    np.testing.assert_allclose(V.grad, 2 * expected_W, rtol=1e-13)


def test_a_hook_on_a_shared_parameter_runs_once_on_the_full_sum_and_may_replace_it(defer_all):
    rng = np.random.default_rng(5)
    W = tg.nn.Parameter(rng.standard_normal((3, 2)))
    calls = []

    def hook(g):
        calls.append(g.copy())
        return 3 * g

    W.register_hook(hook)
    xs = [rng.standard_normal((4, 2)) for _ in range(5)]
    sum(tg.linear(tg.Tensor(x), W).sum() for x in xs).backward()
    expected = sum(np.ones((4, 3)).T @ x for x in xs)
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], expected, rtol=1e-13)
    np.testing.assert_allclose(W.grad, 3 * expected, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nd_inputs_no_bias_and_a_weight_that_needs_no_grad(dtype, defer_all):
    rng = np.random.default_rng(6)
    x = tg.Tensor(rng.standard_normal((5, 3, 4)).astype(dtype), requires_grad=True)
    W = tg.nn.Parameter(rng.standard_normal((2, 4)).astype(dtype))
    G = rng.standard_normal((5, 3, 2)).astype(dtype)
    (tg.linear(x, W) * tg.Tensor(G)).sum().backward()                 # one use, bias=None
    tol = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    assert W.grad.dtype == dtype
    np.testing.assert_allclose(W.grad, G.reshape(-1, 2).T @ x.data.reshape(-1, 4), **tol)
    np.testing.assert_allclose(x.grad, G @ W.data, **tol)

    x.grad = None
    frozen = tg.Tensor(W.data)                                         # needs no grad
    M = tg.Tensor(rng.standard_normal((4, 2)).astype(dtype), requires_grad=True)
    (tg.linear(x, frozen).sum() + (x @ M).sum()).backward()
    assert frozen.grad is None
    np.testing.assert_allclose(M.grad, x.data.reshape(-1, 4).T @ np.ones((15, 2)), **tol)


def test_outer_product_sum_adds_like_the_array_it_stands_for():
    rng = np.random.default_rng(7)
    terms = [(rng.standard_normal((3, 4)), rng.standard_normal((3, 2))) for _ in range(3000)]
    total = None
    for a, b in terms:                             # a 3000-deep tree: no recursion limit
        s = weight_grads.OuterProductSum(a, b)
        total = s if total is None else total + s
    expected = sum(a.T @ b for a, b in terms)
    assert total.shape == (4, 2) and total.dtype == np.float64
    np.testing.assert_allclose(total.materialize(), expected, rtol=1e-10)
    other = rng.standard_normal((4, 2))
    np.testing.assert_allclose(other + total, other + expected, rtol=1e-10)   # ndarray first
    np.testing.assert_allclose(total + other, other + expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(total), expected, rtol=1e-10)
    with pytest.raises(tg.ShapeError, match=r"\(4, 2\) and \(2, 4\)"):
        total + weight_grads.OuterProductSum(rng.standard_normal((3, 2)), rng.standard_normal((3, 4)))


# --- fast_apply and fast_sequence, alone ----------------------------------------------------

@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True), (False, False)])
@pytest.mark.parametrize("grad_on", [True, False])
def test_fast_apply_records_exactly_what_apply_records(needs, grad_on):
    from tinygrad_rnn import ops
    from tinygrad_rnn.engine.fast_apply import apply_binary, apply_unary
    rng = np.random.default_rng(8)
    a = tg.Tensor(rng.standard_normal((2, 3)), requires_grad=needs[0])
    b = tg.Tensor(rng.standard_normal((1, 3)), requires_grad=needs[1])
    mode = contextlib.nullcontext() if grad_on else tg.no_grad()
    with mode:
        pairs = [(apply_binary(ops.Mul, a, b), ops.Mul.apply(a, b)),
                 (apply_unary(ops.Tanh, a), ops.Tanh.apply(a))]
    for fast, slow in pairs:
        assert type(fast) is type(slow) is tg.Tensor
        np.testing.assert_array_equal(fast.data, slow.data)
        assert fast.requires_grad == slow.requires_grad
        assert (fast._ctx is None) == (slow._ctx is None)
        if fast._ctx is not None:
            assert fast._ctx.needs_input_grad == slow._ctx.needs_input_grad
            assert fast._ctx.parents == slow._ctx.parents
            assert fast._ctx.seq < slow._ctx.seq            # numbered in creation order


def test_fast_sequence_undoes_everything_when_the_block_raises():
    from tinygrad_rnn.engine import fast_sequence, malloc
    assert gc.isenabled()
    with pytest.raises(KeyError), fast_sequence():
        assert not gc.isenabled()
        assert getattr(transposed._state, "cache", None) == {}
        raise KeyError("inside")
    assert gc.isenabled()
    assert getattr(transposed._state, "cache", None) is None
    assert malloc.state["done"]
