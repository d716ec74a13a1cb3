"""Unroll: apply a cell at every time step. BPTT is nothing more than backward on the result."""

import numpy as np

from .. import observers
from ..autograd import ShapeError
from ..engine import fast_sequence
from ..functional import stack, where
from ..grad_mode import no_grad
from ..nn.module import Module
from ..tensor import Tensor
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
        xs = self._check_input(xs)
        if self.batch_first:
            xs = xs.transpose(1, 0, 2)
        T, B = xs.shape[0], xs.shape[1]
        if T == 0:
            raise ShapeError(f"Unroll({type(self.cell).__name__}): the sequence is empty (T = 0)")
        state = self._initial_state(state, B)
        if lengths is not None:
            lengths = check_lengths(lengths, T, B, "Unroll")
        # One call sets up the sequence for speed (GC, malloc, transposed weights): engine/.
        with fast_sequence():
            run_sequence = getattr(self.cell, "forward_sequence", None)
            if run_sequence is not None and not observers.observing():
                # The cell runs the whole sequence itself (a scan, or a compiled loop): the
                # same numbers as stepping. Observers need the steps, so they get the loop.
                ys, state = run_sequence(xs, state, lengths)
            else:
                ys, state = self._step_loop(xs, state, lengths)
        if self.batch_first:
            ys = tree_map(lambda y: y.transpose(1, 0, *range(2, y.ndim)), ys)
        return ys, state

    def _step_loop(self, xs, state, lengths):
        """The recurrence: ``output_t, state_t = cell(x_t, state_{t-1})`` for t = 0 .. T-1."""
        outputs = []
        for t, x_t in enumerate(xs.unbind(0)):
            with observers.scope(step=t):        # observers tag the step's ops (trace, ledger)
                out, new_state = self.cell(x_t, state)
                if lengths is not None:
                    out, new_state = _stop_finished(t, lengths, out, new_state, state)
                state = new_state
                outputs.append(out)
                observers.notify_step(self, t, out, state)
        ys = tree_map(lambda *outs: stack(outs), *outputs)
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


def _stop_finished(t, lengths, out, new_state, state):
    """Sequences already past their length keep their state and emit zeros at step t."""
    running = (t < lengths)[:, None]
    if running.all():
        return out, new_state
    new_state = tree_map(lambda new, old: where(running, new, old), new_state, state)
    out = tree_map(lambda o: where(running, o, np.zeros((), o.dtype)), out)
    return out, new_state
