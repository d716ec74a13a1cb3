"""The eager engine's speed measures change no number and leave no trace behind them.

Unroll and backward pause Python's cyclic GC (and Unroll hands its new tape straight to the
oldest generation); inside an unroll, ``linear`` reuses one contiguous copy of each weight's
transpose. These tests pin down that the GC is left as it was found, that a program's own
frozen objects stay frozen, that the copies never outlive the unroll or go stale, and that
the multi-output bookkeeping of the walk (outputs nobody used) stays right.
"""

import gc

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import autograd, ops


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
    assert getattr(ops._unroll, "transposed", None) is None      # no cache left behind


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
    with ops.reuse_transposed_weights():
        first = tg.linear(x, W, b).data
        second = tg.linear(x, W, b).data           # the cached contiguous transpose
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(first, outside, rtol=rtol)
    np.testing.assert_allclose(second, outside, rtol=rtol)
    assert first.dtype == second.dtype == dtype


def test_the_copy_is_made_at_the_second_use_and_dropped_with_the_block():
    w = np.arange(12.0).reshape(3, 4)
    with ops.reuse_transposed_weights():
        first = ops._transposed(w)
        assert np.shares_memory(first, w)          # used once: no copy
        second = ops._transposed(w)
        assert not np.shares_memory(second, w) and second.flags.c_contiguous
        np.testing.assert_array_equal(second, w.T)
        with ops.reuse_transposed_weights():       # a nested unroll shares the outer copies
            assert ops._transposed(w) is second
        assert ops._transposed(w) is second        # ... and does not drop them on exit
    assert getattr(ops._unroll, "transposed", None) is None
    assert np.shares_memory(ops._transposed(w), w)


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
    autograd.add_observer(rec)
    try:
        parts = x.chunk(4, axis=-1)
        (parts[0] + parts[2]).sum().backward()
    finally:
        autograd.remove_observer(rec)
    assert seen == [(4, [0, 2])]
