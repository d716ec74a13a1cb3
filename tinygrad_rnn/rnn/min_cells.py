r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?"): the GRU and the LSTM
with every gate reading only x_t, so that the recurrence is linear in the state,

.. math::
    h_t = a_t \odot h_{t-1} + b_t,

with a_t and b_t computed for all t at once from the inputs, and every h_t from one
`linear_scan`: the whole sequence without a step loop (`forward_sequence`). ``forward`` is
the same step, for generation.

These are the paper's plain-space versions (h̃_t = Linear(x_t), no positivity constraint),
not its log-space variant: float64 and float32 are accurate enough here, and a learner reads
the equations unchanged.
"""

import numpy as np

from ..autograd import ShapeError
from ..dtypes import resolve_dtype
from ..functional import linear, linear_scan, where
from ..nn import init
from ..nn.module import Parameter
from .cells import _GatedCell


class _MinCell(_GatedCell):
    """Shared construction: ``gates`` stacked input blocks ``weight_ih`` (G·H, I) and
    ``bias_ih`` (G·H,), uniform(±1/√H) as the other built-in cells; no hidden-to-hidden
    weights (nothing reads h_{t-1} but the recurrence itself). State h (B, H)."""

    def __init__(self, input_size, hidden_size, bias=True, learn_init=False, dtype=None):
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be positive, "
                             f"got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.dtype = dt = resolve_dtype(dtype)
        G, H, k = self.gates, hidden_size, 1.0 / np.sqrt(hidden_size)
        self.weight_ih = init.uniform_(Parameter(np.empty((G * H, input_size), dt)), -k, k)
        self.bias_ih = init.uniform_(Parameter(np.empty(G * H, dt)), -k, k) if bias else None
        self.initial_state = (Parameter(np.zeros(H, dt)),) if learn_init else None

    def coefficients(self, x):
        """``(a, b)`` of ``h_t = a_t * h_{t-1} + b_t`` for x (B, I) or xs (T, B, I)."""
        raise NotImplementedError  # abstract: each cell defines its equations

    def gate_inputs(self, x):
        """``W_k x + b_k`` for each of the ``gates`` blocks k of ``weight_ih``, for x (B, I) or
        xs (T, B, I). A sequence gets one 2-D product per block over its T * B rows: numpy's
        3-D matmul ran 2-4x slower at T = 2000, and the slices of one product are strided
        views that made the gates' arithmetic ~10 % slower."""
        if x.ndim == 2:
            return linear(x, self.weight_ih, self.bias_ih).chunk(self.gates, axis=-1)
        T, B, I = x.shape
        rows, H = x.reshape(T * B, I), self.hidden_size
        blocks = []
        for k in range(self.gates):
            rows_k = slice(k * H, (k + 1) * H)
            bias = None if self.bias_ih is None else self.bias_ih[rows_k]
            blocks.append(linear(rows, self.weight_ih[rows_k], bias).reshape(T, B, H))
        return blocks

    def forward(self, x, h):
        a, b = self.coefficients(x)
        h = a * h + b
        return h, h

    def forward_sequence(self, xs, h0, lengths=None):
        """xs (T, B, I), h0 (B, H) -> (every h_t (T, B, H), final state). Past a sequence's
        length a_t = 1 and b_t = 0 (its state stays) and its outputs are zero."""
        if xs.ndim != 3 or xs.shape[2] != self.input_size:
            raise ShapeError(f"{type(self).__name__}.forward_sequence: expected xs (T, B, "
                             f"{self.input_size}), got shape {xs.shape}")
        a, b = self.coefficients(xs)
        mask = None
        if lengths is not None and not np.all(lengths == xs.shape[0]):
            mask = (np.arange(xs.shape[0])[:, None] < np.asarray(lengths)[None, :])[:, :, None]
            a, b = where(mask, a, 1.0), where(mask, b, 0.0)
        hs = linear_scan(a, b, h0)
        ys = hs if mask is None else where(mask, hs, 0.0)
        return ys, hs[-1]


class MinGRUCell(_MinCell):
    r"""minGRU: the GRU's update gate and candidate, both from x_t alone; no reset gate.

    .. math::
        z_t &= \sigma(\mathrm{Linear}_{d_h}(x_t)) \\
        \tilde h_t &= \mathrm{Linear}_{d_h}(x_t) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    so ``a_t = 1 - z_t`` and ``b_t = z_t * h̃_t``. ``weight_ih`` stacks ``[W_z; W_h]``
    (2H, I). x (B, I), h (B, H) -> output h_t, state h_t. 2H(I + 1) parameters, against the
    GRU's 3H(I + H + 2).
    """

    gates = 2

    def coefficients(self, x):
        z, h_tilde = self.gate_inputs(x)
        z = z.sigmoid()
        return 1 - z, z * h_tilde


class MinLSTMCell(_MinCell):
    r"""minLSTM: forget and input gates from x_t alone, normalized to sum to one; no output
    gate, and the cell state is the output.

    .. math::
        f_t &= \sigma(\mathrm{Linear}_{d_h}(x_t)), \quad
        i_t = \sigma(\mathrm{Linear}_{d_h}(x_t)) \\
        \tilde h_t &= \mathrm{Linear}_{d_h}(x_t) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t} \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    The normalization keeps the state's scale independent of time (each h_t is a convex
    combination of h_{t-1} and h̃_t), as the paper's length-independent minLSTM.
    ``weight_ih`` stacks ``[W_f; W_i; W_h]`` (3H, I). The forget gate's bias starts at
    ``forget_bias`` (default 1.0), so that at initialization f' > i' and the state is kept by
    default (as the LSTM's forget bias of 1, examples/05; the paper notes minLSTM's retention
    depends on its forget gate). State h (B, H).
    """

    gates = 3

    def __init__(self, input_size, hidden_size, bias=True, learn_init=False, dtype=None,
                 forget_bias=1.0):
        super().__init__(input_size, hidden_size, bias, learn_init, dtype)
        if self.bias_ih is not None:
            self.bias_ih.data[:hidden_size] = forget_bias

    def coefficients(self, x):
        f, i, h_tilde = self.gate_inputs(x)
        f, i = f.sigmoid(), i.sigmoid()
        total = f + i
        return f / total, (i / total) * h_tilde
