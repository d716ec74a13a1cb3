"""Cells built from cells: Stack (multi-layer) and Bidirectional."""

import numpy as np

from .. import observers
from ..autograd import ShapeError
from ..functional import cat
from ..nn.layers import Dropout
from ..nn.module import Module
from ..tensor import Tensor
from .cell import Cell
from .unroll import Unroll, check_lengths


class Stack(Cell):
    """A multi-layer cell: layer k's output is layer k+1's input (with dropout between
    layers in training mode). Itself a Cell, so it unrolls, stacks and generates like any
    other; its state is the tuple of the layers' states.

    ``Stack([LSTMCell(8, 32), LSTMCell(32, 32)])``: x (B, 8) -> output (B, 32).

    When every layer defines ``forward_sequence`` (MinGRUCell, MinLSTMCell), the stack has
    one too: layer by layer over the whole sequence, the same numbers as stepping (dropout
    draws its masks per step there and per sequence here: the same distribution).
    """

    def __init__(self, cells, dropout=0.0):
        cells = list(cells)
        if not cells:
            raise ValueError("Stack: needs at least one cell")
        for k, (below, above) in enumerate(zip(cells, cells[1:])):
            out, inp = getattr(below, "hidden_size", None), getattr(above, "input_size", None)
            if out is not None and inp is not None and out != inp:
                raise ShapeError(f"Stack: layer {k} outputs size {out} but layer {k + 1} expects "
                                 f"input size {inp}")
        self.cells = cells
        self.dropout = Dropout(dropout)
        self.input_size = getattr(cells[0], "input_size", None)
        self.hidden_size = getattr(cells[-1], "hidden_size", None)
        if all(getattr(c, "forward_sequence", None) is not None for c in cells):
            # Every layer runs its whole sequence at once: so does the stack, layer by layer.
            self.forward_sequence = self._layer_by_layer

    def _layer_by_layer(self, xs, states, lengths=None):
        """The stack's forward_sequence: layer k runs all T steps, then layer k+1 on its
        outputs (dropout between layers, on the whole sequence of outputs)."""
        new_states = []
        for k, (cell, state) in enumerate(zip(self.cells, states)):
            if k > 0:
                xs = self.dropout(xs)
            xs, state = cell.forward_sequence(xs, state, lengths)
            new_states.append(state)
        return xs, tuple(new_states)

    def init_state(self, batch_size):
        return tuple(c.init_state(batch_size) for c in self.cells)

    def forward(self, x, states):
        new_states = []
        for k, (cell, state) in enumerate(zip(self.cells, states)):
            with observers.scope(layer=k):       # observers tag the layer's ops
                if k > 0:
                    x = self.dropout(x)
                x, state = cell(x, state)
            new_states.append(state)
        return x, tuple(new_states)


def _reverse_index(lengths, T):
    """idx[t, b] = the step of sequence b that lands at t when its first lengths[b] steps are
    reversed and its padding stays put. The map is its own inverse."""
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


class Bidirectional(Module):
    """Run one cell forward in time and another backward; concatenate their outputs.

    ``(ys, (state_fwd, state_bwd)) = Bidirectional(fwd, bwd)(xs, lengths=None)``; ys is
    (T, B, H_fwd + H_bwd), forward first (as PyTorch). With ``lengths``, the backward cell
    reads each sequence reversed within its own length.
    """

    def __init__(self, cell_fwd, cell_bwd, batch_first=False):
        self.forward_rnn = Unroll(cell_fwd)
        self.backward_rnn = Unroll(cell_bwd)
        self.batch_first = batch_first
        self.input_size = getattr(cell_fwd, "input_size", None)

    def forward(self, xs, state=None, lengths=None):
        if not isinstance(xs, Tensor):
            raise TypeError(f"Bidirectional: xs must be a Tensor, got {type(xs).__name__}")
        if xs.ndim != 3:
            raise ShapeError(f"Bidirectional: expected xs of rank 3, got shape {xs.shape}")
        if self.batch_first:
            xs = xs.transpose(1, 0, 2)
        T, B = xs.shape[0], xs.shape[1]
        state_f, state_b = (None, None) if state is None else state
        if lengths is None:
            lengths_arr = np.full(B, T)
        else:
            lengths_arr = check_lengths(lengths, T, B, "Bidirectional")
        ys_f, s_f = self.forward_rnn(xs, state_f, lengths)
        if lengths is None:
            rev_t, rev_b = np.arange(T)[::-1].copy(), slice(None)
            xs_rev = xs[rev_t]
        else:
            rev_t, rev_b = _reverse_index(lengths_arr, T), np.arange(B)[None, :]
            xs_rev = xs[rev_t, rev_b]
        ys_b_rev, s_b = self.backward_rnn(xs_rev, state_b, lengths)
        ys_b = ys_b_rev[rev_t] if lengths is None else ys_b_rev[rev_t, rev_b]
        ys = cat([ys_f, ys_b], axis=-1)
        if self.batch_first:
            ys = ys.transpose(1, 0, 2)
        return ys, (s_f, s_b)
