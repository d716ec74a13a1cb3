"""Unroll: apply a cell at every time step. BPTT is nothing more than backward on the result."""

import numpy as np

from .. import _malloc, autograd, ops
from ..autograd import ShapeError, no_grad
from ..nn.module import Module
from ..tensor import Tensor, stack, where
from .cell import describe_structure, same_structure, tree_map


def check_lengths(lengths, T, B, who):
    """``lengths`` as an int array of shape (B,) with every entry in [0, T]."""
    arr = np.asarray(lengths.data if isinstance(lengths, Tensor) else lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{who}: lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ShapeError(f"{who}: lengths must have shape (B,) = ({B},), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"{who}: lengths must lie in [0, T] = [0, {T}], got min {arr.min()} "
                         f"and max {arr.max()}")
    return arr


def _notify_step(unroll, t, out, state):
    # Observers that define on_step (the BPTT ledger) learn each step's output and state.
    for obs in list(autograd._observers):
        on_step = getattr(obs, "on_step", None)
        if on_step is not None:
            on_step(unroll, t, out, state)


class Unroll(Module):
    """Run ``cell`` over a sequence: ``(ys, final_state) = Unroll(cell)(xs, state, lengths)``.

    xs (T, B, I) (or (B, T, I) with ``batch_first``) -> ys (T, B, ·): every step's output
    (many-to-many); ``ys[-1]`` or the final state gives many-to-one. ``state`` defaults to
    ``cell.init_state(B)``. With ``lengths`` (B,), sequence b stops updating its state after
    ``lengths[b]`` steps, its outputs past that are exactly zero, and the final state is the
    state at its own last step (as PyTorch's packed sequences).

    A cell may also define ``forward_sequence(xs, state, lengths) -> (ys, final_state)``: the
    same recurrence over the whole sequence at once (xs (T, B, I), the initial state already
    made, lengths a checked int array (B,) or None), with exactly these semantics. Unroll
    calls it when present and no observer (trace, anomaly mode, ledger) is listening.
    """

    def __init__(self, cell, batch_first=False):
        self.cell = cell
        self.batch_first = batch_first

    def forward(self, xs, state=None, lengths=None):
        if not _malloc.state["done"]:
            _malloc.tune_malloc()       # once per process, also for forward-only use: _malloc.py
        xs = self._check_input(xs)
        if self.batch_first:
            xs = xs.transpose(1, 0, 2)
        T, B = xs.shape[0], xs.shape[1]
        if T == 0:
            raise ShapeError(f"Unroll({type(self.cell).__name__}): the sequence is empty (T = 0)")
        cell = self.cell
        state = self._initial_state(state, B)
        if lengths is not None:
            lengths = check_lengths(lengths, T, B, "Unroll")
        run_sequence = getattr(cell, "forward_sequence", None)
        if run_sequence is not None and not autograd.observing():
            # The cell runs the whole sequence itself (a scan, or a compiled loop): the same
            # numbers as stepping. Observers need the steps, so they get the loop below.
            ys, state = run_sequence(xs, state, lengths)
            if self.batch_first:
                ys = tree_map(lambda y: y.transpose(1, 0, *range(2, y.ndim)), ys)
            return ys, state
        if lengths is not None:
            masks = [(t < lengths)[:, None] for t in range(T)]
            full = [bool(m.all()) for m in masks]
        observing = autograd.observing()
        prev_step = autograd.scope.get("step")
        outputs = []
        # The tape grows by a dozen nodes a step: keep the cyclic GC from re-scanning it.
        # Every step multiplies by the same weights: transpose them once (see ops.py).
        with autograd.gc_paused(keep_new_objects=True), ops.reuse_transposed_weights():
            for t, x_t in enumerate(xs.unbind(0)):
                if observing:
                    autograd.scope["step"] = t
                out, new_state = cell(x_t, state)
                if lengths is not None and not full[t]:
                    # Finished sequences keep their state and emit zeros.
                    m = masks[t]
                    new_state = tree_map(lambda new, old, m=m: where(m, new, old), new_state, state)
                    out = tree_map(lambda o, m=m: where(m, o, np.zeros((), o.dtype)), out)
                state = new_state
                outputs.append(out)
                if observing:
                    _notify_step(self, t, out, state)
        if observing:
            autograd.scope.pop("step", None)
            if prev_step is not None:
                autograd.scope["step"] = prev_step
        ys = tree_map(lambda *outs: stack(outs), *outputs)
        if self.batch_first:
            ys = tree_map(lambda y: y.transpose(1, 0, *range(2, y.ndim)), ys)
        return ys, state

    def _check_input(self, xs):
        name = type(self.cell).__name__
        if not isinstance(xs, Tensor):
            if isinstance(xs, np.ndarray):
                xs = Tensor(xs)
            else:
                raise TypeError(f"Unroll({name}): xs must be a Tensor, got {type(xs).__name__}")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if xs.ndim != 3:
            raise ShapeError(f"Unroll({name}): expected xs of rank 3 {layout}, got shape "
                             f"{xs.shape}" + (" (for one sequence, add a batch axis)"
                                              if xs.ndim == 2 else ""))
        size = getattr(self.cell, "input_size", None)
        if isinstance(size, (int, np.integer)) and xs.shape[2] != size:
            raise ShapeError(f"Unroll({name}): expected input size I = {size}, got xs of shape "
                             f"{xs.shape} {layout}")
        return xs

    def _initial_state(self, state, B):
        if state is None:
            return self.cell.init_state(B)
        try:
            with no_grad():
                expected = self.cell.init_state(B)
        except (NotImplementedError, TypeError, ValueError, AttributeError):
            return state        # a cell that cannot build its own state: trust the caller
        if not same_structure(state, expected):
            raise ShapeError(f"Unroll({type(self.cell).__name__}): the state has structure "
                             f"{describe_structure(state)}, but the cell expects "
                             f"{describe_structure(expected)} for batch size {B}")
        return state

    def extra_repr(self):
        return f"batch_first={self.batch_first}"
