"""Cells of the benchmarks: the MGU written as equations, and a wrapper that steps a cell.

``MGUCell`` is the minimal gated unit of README.md and DESIGN.md, the custom cell the compiled
path must make fast without asking anything of its writer: bench_rnn.py times it eager and
through ``tg.compile``, against torch.nn.GRU of the same size and the same equations in numpy
(``numpy_bptt.mgu_forward_backward``), torch and JAX.
"""

import tinygrad_rnn as tg
from tinygrad_rnn import nn


class MGUCell(tg.Cell):
    """``f = σ(W_f [x_t, h_{t-1}] + b_f)``, ``h~ = tanh(W_h [x_t, f h_{t-1}] + b_h)``,
    ``h_t = (1 - f) h_{t-1} + f h~``; x (B, I), h (B, H)."""

    def __init__(self, input_size, hidden_size, dtype=None):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size, dtype=dtype)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size, dtype=dtype)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size, dtype=self.W_f.weight.dtype)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


class Stepped(tg.Cell):
    """The same cell without its ``forward_sequence``: Unroll steps it op by op (minGRU's
    stepped baseline), on the same Parameters."""

    def __init__(self, cell):
        self.cell = cell
        self.input_size = cell.input_size

    def init_state(self, batch_size):
        return self.cell.init_state(batch_size)

    def forward(self, x, state):
        return self.cell(x, state)
