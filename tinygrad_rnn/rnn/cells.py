"""The built-in cells, each its equations and nothing else.

Parameter names, shapes and gate orders are PyTorch's (``weight_ih`` (G·H, I),
``weight_hh`` (G·H, H), ``bias_ih``, ``bias_hh``; LSTM gates i, f, g, o; GRU r, z, n), so
weights copy across both ways (``tinygrad_rnn.interop``). In the seed's notation
``W_xh`` = ``weight_ih`` and ``W_hh`` = ``weight_hh``.
"""

import numpy as np

from ..autograd import ShapeError
from ..dtypes import resolve_dtype
from ..factories import zeros
from ..functional import linear
from ..nn import init
from ..nn.module import Parameter
from ..tensor import Tensor
from .cell import Cell, describe_structure


class _GatedCell(Cell):
    """Shared construction: ``gates`` stacked weight blocks, PyTorch's uniform(±1/√H) init,
    and an optional learned initial state (``learn_init=True``: a Parameter per state
    tensor, broadcast over the batch)."""

    gates = 1
    state_size = 1          # tensors in the state: 1 for h, 2 for (h, c)

    def __init__(self, input_size, hidden_size, bias=True, learn_init=False, dtype=None):
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be positive, "
                             f"got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        dt = resolve_dtype(dtype)
        self.dtype = dt
        G, H, k = self.gates, hidden_size, 1.0 / np.sqrt(hidden_size)
        self.weight_ih = init.uniform_(Parameter(np.empty((G * H, input_size), dt)), -k, k)
        self.weight_hh = init.uniform_(Parameter(np.empty((G * H, H), dt)), -k, k)
        self.bias_ih = init.uniform_(Parameter(np.empty(G * H, dt)), -k, k) if bias else None
        self.bias_hh = init.uniform_(Parameter(np.empty(G * H, dt)), -k, k) if bias else None
        self.initial_state = (tuple(Parameter(np.zeros(H, dt)) for _ in range(self.state_size))
                              if learn_init else None)

    def init_state(self, batch_size):
        states = [zeros(batch_size, self.hidden_size, dtype=self.dtype)
                  for _ in range(self.state_size)]
        if self.initial_state is not None:
            states = [s + p for s, p in zip(states, self.initial_state)]
        return states[0] if self.state_size == 1 else tuple(states)

    def __call__(self, x, state):
        # A cheap structure check, so that a wrong state is named here rather than failing
        # as a tuple-unpacking error inside the equations.
        if self.state_size == 1:
            well_formed = isinstance(state, Tensor)
        else:
            well_formed = isinstance(state, tuple) and len(state) == self.state_size
        if not well_formed:
            want = "a Tensor h" if self.state_size == 1 else "a tuple (h, c)"
            raise ShapeError(f"{type(self).__name__}: the state must be {want} of shape "
                             f"(B, {self.hidden_size}), got {describe_structure(state)}")
        return self.forward(x, state)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class RNNCell(_GatedCell):
    r"""The vanilla (Elman) RNN of the seed.

    .. math::
        h_t = \tanh(W_{xh} x_t + b_{xh} + W_{hh} h_{t-1} + b_{hh})

    (``nonlinearity="relu"`` swaps tanh for relu). x (B, I), h (B, H) -> output h_t, state h_t.
    The seed's readout ``y_t = W_hy h_t`` is a separate ``nn.Linear(H, O)``.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", learn_init=False,
                 dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, learn_init, dtype)

    def forward(self, x, h):
        a = linear(x, self.weight_ih, self.bias_ih) + linear(h, self.weight_hh, self.bias_hh)
        h = a.tanh() if self.nonlinearity == "tanh" else a.relu()
        return h, h


class LSTMCell(_GatedCell):
    r"""Long short-term memory: a cell state ``c`` guarded by forget, input and output gates.

    .. math::
        i_t &= \sigma(W_{xi} x_t + W_{hi} h_{t-1} + b_i) \\
        f_t &= \sigma(W_{xf} x_t + W_{hf} h_{t-1} + b_f) \\
        g_t &= \tanh(W_{xg} x_t + W_{hg} h_{t-1} + b_g) \\
        o_t &= \sigma(W_{xo} x_t + W_{ho} h_{t-1} + b_o) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \tanh(c_t)

    ``weight_ih`` stacks ``[W_xi; W_xf; W_xg; W_xo]`` (4H, I). State ``(h, c)``, each (B, H).
    """

    gates, state_size = 4, 2

    def forward(self, x, state):
        h, c = state
        gates = linear(x, self.weight_ih, self.bias_ih) + linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        return h, (h, c)


class GRUCell(_GatedCell):
    r"""Gated recurrent unit (PyTorch's variant: the reset gate acts after the matmul).

    .. math::
        r_t &= \sigma(W_{xr} x_t + b_{xr} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{xz} x_t + b_{xz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{xn} x_t + b_{xn} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    ``weight_ih`` stacks ``[W_xr; W_xz; W_xn]`` (3H, I). State h (B, H).
    """

    gates = 3

    def forward(self, x, h):
        x_r, x_z, x_n = linear(x, self.weight_ih, self.bias_ih).chunk(3, axis=-1)
        h_r, h_z, h_n = linear(h, self.weight_hh, self.bias_hh).chunk(3, axis=-1)
        r = (x_r + h_r).sigmoid()
        z = (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        h = (1 - z) * n + z * h
        return h, h
