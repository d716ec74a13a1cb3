"""One-to-many and seq2seq. Generation is itself an unroll: a FeedbackCell keeps its last
prediction in its state and feeds it back as the next input."""

import numpy as np

from ..autograd import ShapeError
from ..factories import zeros
from ..functional import where
from ..nn.module import Module
from ..tensor import Tensor
from .cell import Cell
from .unroll import Unroll


def _identity(x):
    return x


class FeedbackCell(Cell):
    """Wraps a cell for autoregressive use: state ``(cell_state, x_prev)``.

    Each step runs ``out, s = cell(x_in, cell_state)``, emits ``y = readout(out)`` and keeps
    ``feedback(y)`` as the next input. ``x_in`` is the fed-back prediction, or, with
    probability ``teacher_prob`` per sequence and step, the step's external input (scheduled
    sampling: 1.0 is teacher forcing, 0.0 free running). Unroll it over inputs of width 0 to
    generate with no external input at all.
    """

    def __init__(self, cell, readout=None, feedback=None, teacher_prob=0.0, seed=None):
        self.cell = cell
        self.readout = readout if readout is not None else _identity
        self.feedback = feedback if feedback is not None else _identity
        self.teacher_prob = teacher_prob
        self._rng = np.random.default_rng(seed)

    def init_state(self, batch_size):
        size = getattr(self.cell, "input_size", None)
        if size is None:
            raise ValueError(f"FeedbackCell: {type(self.cell).__name__} has no input_size; pass "
                             "the first input explicitly as state=(cell_state, x0)")
        dtype = getattr(self.cell, "dtype", None)
        return (self.cell.init_state(batch_size), zeros(batch_size, size, dtype=dtype))

    def forward(self, x, state):
        cell_state, x_prev = state
        x_in = x_prev
        if x is not None and x.shape[-1] and self.teacher_prob > 0:
            if self.teacher_prob >= 1:
                x_in = x
            else:
                use_teacher = self._rng.random((x.shape[0], 1)) < self.teacher_prob
                x_in = where(use_teacher, x, x_prev)
        out, cell_state = self.cell(x_in, cell_state)
        y = self.readout(out)
        return y, (cell_state, self.feedback(y))


def generate(cell, x0, steps, state=None, readout=None, feedback=None):
    """Autoregressive one-to-many: ``(outputs, state) = generate(cell, x0, steps)``.

    x0 (B, I) is the first input; each step's ``readout(output)`` is collected into
    outputs (steps, B, ·) and ``feedback(readout(output))`` is the next input (both default
    to the identity). Differentiable end to end. ``state`` defaults to
    ``cell.init_state(B)``; the returned state is the wrapped cell's final state.
    """
    if not isinstance(x0, Tensor):
        raise TypeError(f"generate: x0 must be a Tensor (B, I), got {type(x0).__name__}")
    if x0.ndim != 2:
        raise ShapeError(f"generate: x0 must have shape (B, I), got {x0.shape}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"generate: steps must be a positive integer, got {steps!r}")
    B = x0.shape[0]
    cell_state = state if state is not None else cell.init_state(B)
    no_inputs = zeros(steps, B, 0, dtype=x0.dtype)
    ys, (cell_state, _) = Unroll(FeedbackCell(cell, readout, feedback))(no_inputs,
                                                                        state=(cell_state, x0))
    return ys, cell_state


class Seq2Seq(Module):
    """Encoder-decoder (the seed's seq2seq): a many-to-one encoder's final state becomes a
    one-to-many decoder's initial state (through ``bridge`` if given).

    ``model(src, tgt_in, src_lengths=None)`` -> decoder outputs (T_tgt, B, H) under teacher
    forcing; ``model.generate(src, x0, steps, readout, feedback)`` decodes autoregressively.
    """

    def __init__(self, encoder, decoder, bridge=None):
        self.encoder = encoder if isinstance(encoder, Unroll) else Unroll(encoder)
        self.decoder = decoder.cell if isinstance(decoder, Unroll) else decoder
        self.bridge = bridge

    def encode(self, src, src_lengths=None):
        _, state = self.encoder(src, lengths=src_lengths)
        return self.bridge(state) if self.bridge is not None else state

    def forward(self, src, tgt_in, src_lengths=None):
        ys, _ = Unroll(self.decoder)(tgt_in, state=self.encode(src, src_lengths))
        return ys

    def generate(self, src, x0, steps, readout=None, feedback=None, src_lengths=None):
        return generate(self.decoder, x0, steps, state=self.encode(src, src_lengths),
                        readout=readout, feedback=feedback)
