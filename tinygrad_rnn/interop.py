"""PyTorch interop: the same model, weights copied, from ``torch.nn`` recurrent layers and cells.

``from_torch(m)`` accepts ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (any ``num_layers``,
``bidirectional``, ``bias``, ``batch_first``, ``nonlinearity``, ``dropout``) and
``torch.nn.RNNCell`` / ``LSTMCell`` / ``GRUCell``. Our built-in cells already use PyTorch's
parameter names, layouts and gate orders, so the copy is one array per parameter; the
model's outputs and gradients match torch's to float rounding. ``to_torch`` goes the other
way. Torch is imported only when one of these functions is called.

State formats. A layer model's state is a tuple over layers of each layer's state::

    unidirectional:  (s_0, s_1, ...)                       s_k = h (B, H), LSTM (h, c)
    bidirectional:   ((s_0_fwd, s_0_bwd), (s_1_fwd, s_1_bwd), ...)

torch keeps ``h`` (and ``c``) as one (num_layers * num_directions, B, H) tensor, layer-major
(``l0, l0_reverse, l1, ...``); ``to_torch_state`` / ``from_torch_state`` convert.

Files for torch. ``state_dict_for_torch(model)`` gives the ``{name: array}`` that
``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (or ``RNNCell`` / ``LSTMCell`` / ``GRUCell``) accepts
in ``load_state_dict``, and ``save_for_torch(model, path)`` writes it as a safetensors file,
so that torch needs nothing of ours::

    tg.interop.save_for_torch(tg.Unroll(tg.Stack([tg.LSTMCell(8, 32), tg.LSTMCell(32, 32)])),
                              "lstm.safetensors")
    # in a torch program:
    lstm = torch.nn.LSTM(8, 32, num_layers=2, dtype=torch.float64)
    lstm.load_state_dict(safetensors.torch.load_file("lstm.safetensors"))

``torch_config(model)`` names the torch class and its arguments (the file's metadata keeps
them too). Torch itself is not needed for any of the three.
"""

import json

import numpy as np

from . import serialization
from .autograd import ShapeError
from .dtypes import get_default_dtype
from .functional import stack
from .nn.layers import Dropout
from .nn.module import Module
from .rnn import Bidirectional, GRUCell, LSTMCell, RNNCell, Stack, Unroll
from .tensor import Tensor

# torch's ``mode`` string -> our cell class and its extra arguments.
_MODES = {
    "RNN_TANH": (RNNCell, {"nonlinearity": "tanh"}),
    "RNN_RELU": (RNNCell, {"nonlinearity": "relu"}),
    "LSTM": (LSTMCell, {}),
    "GRU": (GRUCell, {}),
}
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("tinygrad_rnn.interop needs PyTorch (pip install torch); the rest of "
                          "tinygrad_rnn does not") from None
    return torch


class TorchRNN(Module):
    """A (multi-layer, optionally bidirectional) recurrent layer laid out like
    ``torch.nn.RNN`` / ``LSTM`` / ``GRU``, built from our pieces.

    ``model(xs, state=None, lengths=None) -> (ys, state)``: xs (T, B, I) (or (B, T, I) with
    ``batch_first``) -> ys (T, B, D·H), D = 2 if bidirectional: torch's ``output``, with
    zeros past each sequence's length as ``pad_packed_sequence`` gives. The state is a tuple
    over layers (module docstring); ``to_torch_state`` gives torch's ``h_n`` (and ``c_n``).

    Unidirectional: ``Unroll(Stack(cells))``. Bidirectional: per layer a ``Bidirectional``
    whose concatenated output feeds the next layer. ``dropout`` acts between layers in
    training mode, as torch's (with different random masks).
    """

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=None):
        if mode not in _MODES:
            raise ValueError(f"TorchRNN: mode must be one of {sorted(_MODES)}, got {mode!r}")
        if num_layers < 1:
            raise ValueError(f"TorchRNN: num_layers must be at least 1, got {num_layers}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        cell_cls, extra = _MODES[mode]

        def make(layer):
            size = input_size if layer == 0 else self.num_directions * hidden_size
            return cell_cls(size, hidden_size, bias=bias, dtype=self.dtype, **extra)

        if bidirectional:
            self.layers = [Bidirectional(make(k), make(k)) for k in range(num_layers)]
            self.dropout = Dropout(dropout)
        else:
            self.rnn = Unroll(Stack([make(k) for k in range(num_layers)], dropout=dropout))

    def cell(self, layer, direction=0):
        """The cell of ``layer`` running forward (``direction=0``) or backward (1)."""
        if self.bidirectional:
            layer_module = self.layers[layer]
            return (layer_module.forward_rnn if direction == 0 else layer_module.backward_rnn).cell
        if direction != 0:
            raise ValueError("TorchRNN.cell: a unidirectional model has only direction 0")
        return self.rnn.cell.cells[layer]

    def torch_parameters(self):
        """``{torch parameter name: our Parameter}``, in torch's order (``weight_ih_l0``,
        ..., ``bias_hh_l1_reverse``)."""
        out = {}
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                cell = self.cell(k, d)
                for name in _WEIGHTS:
                    p = getattr(cell, name)
                    if p is not None:
                        out[f"{name}_l{k}{'_reverse' if d else ''}"] = p
        return out

    def forward(self, xs, state=None, lengths=None):
        who = f"TorchRNN({self.mode})"
        if not isinstance(xs, Tensor):
            raise TypeError(f"{who}: xs must be a Tensor, got {type(xs).__name__}")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if xs.ndim != 3 or xs.shape[2] != self.input_size:
            raise ShapeError(f"{who}: expected xs of shape {layout} with I = {self.input_size}, "
                             f"got {xs.shape}")
        if state is not None and (not isinstance(state, tuple) or len(state) != self.num_layers):
            raise ShapeError(f"{who}: the state must be a tuple of {self.num_layers} per-layer "
                             "states (convert torch's h_n with from_torch_state)")
        if self.batch_first:
            xs = xs.transpose(1, 0, 2)
        if not self.bidirectional:
            ys, state = self.rnn(xs, state, lengths)
        else:
            states = state if state is not None else (None,) * self.num_layers
            new_states = []
            for k, (layer, s) in enumerate(zip(self.layers, states)):
                if k > 0:
                    xs = self.dropout(xs)
                xs, s = layer(xs, s, lengths)
                new_states.append(s)
            ys, state = xs, tuple(new_states)
        if self.batch_first:
            ys = ys.transpose(1, 0, 2)
        return ys, state

    # --- torch's state layout ----------------------------------------------------------------

    def _cell_states(self, state):
        """Our nested state -> the per-cell states in torch's order (layer-major)."""
        if self.bidirectional:
            return [s for layer in state for s in layer]
        return list(state)

    def to_torch_state(self, state):
        """Our state -> ``h`` (L·D, B, H), or ``(h, c)`` for LSTM, as Tensors (differentiable)."""
        cells = self._cell_states(state)
        if self.mode == "LSTM":
            return stack([s[0] for s in cells]), stack([s[1] for s in cells])
        return stack(cells)

    def from_torch_state(self, hx):
        """torch's ``h`` (L·D, B, H) (``(h, c)`` for LSTM) -> our nested state. Accepts torch
        tensors (copied), numpy arrays, or Tensors (sliced, so gradients flow back)."""
        who = f"TorchRNN({self.mode}).from_torch_state"
        if self.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ShapeError(f"{who}: an LSTM state is a pair (h, c)")
            h, c = (self._as_tensor(t, who) for t in hx)
            per_cell = [(h[i], c[i]) for i in range(h.shape[0])]
        else:
            h = self._as_tensor(hx, who)
            per_cell = [h[i] for i in range(h.shape[0])]
        if self.bidirectional:
            return tuple((per_cell[2 * k], per_cell[2 * k + 1]) for k in range(self.num_layers))
        return tuple(per_cell)

    def _as_tensor(self, t, who):
        if not isinstance(t, Tensor):
            if hasattr(t, "detach"):            # a torch tensor
                t = t.detach().cpu().numpy()
            t = Tensor(np.array(t, dtype=self.dtype))
        expected = self.num_layers * self.num_directions
        if t.ndim != 3 or t.shape[0] != expected or t.shape[2] != self.hidden_size:
            raise ShapeError(f"{who}: expected shape (num_layers * num_directions, B, H) = "
                             f"({expected}, B, {self.hidden_size}), got {t.shape}")
        return t

    def extra_repr(self):
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, "
                f"bidirectional={self.bidirectional}")


def to_torch_state(model, state):
    """``model.to_torch_state(state)``: our nested state -> torch's (L·D, B, H) layout."""
    return model.to_torch_state(state)


def from_torch_state(model, hx):
    """``model.from_torch_state(hx)``: torch's (L·D, B, H) layout -> our nested state."""
    return model.from_torch_state(hx)


# --- conversion ---------------------------------------------------------------------------------

def _copy_into(ours, theirs, who):
    array = theirs.detach().cpu().numpy()
    if array.shape != ours.shape:
        raise ShapeError(f"from_torch: {who} has shape {tuple(array.shape)} but ours is {ours.shape}")
    ours.data = np.array(array, dtype=ours.dtype, copy=True)
    ours._bump_version()


def from_torch(m, dtype=np.float64):
    """The tinygrad_rnn equivalent of a torch recurrent layer or cell, weights copied.

    ``torch.nn.RNN/LSTM/GRU`` -> a `TorchRNN` (``model(xs, state=None, lengths=None) ->
    (ys, state)``); ``torch.nn.RNNCell/LSTMCell/GRUCell`` -> our ``RNNCell/LSTMCell/GRUCell``
    (``cell(x, state) -> (output, new_state)``). Parameters are float64 unless ``dtype=``.
    The model starts in the torch module's train/eval mode.
    """
    torch = _torch()
    dtype = np.dtype(dtype)
    if isinstance(m, torch.nn.RNNCellBase):
        if isinstance(m, torch.nn.LSTMCell):
            cell = LSTMCell(m.input_size, m.hidden_size, bias=m.bias, dtype=dtype)
        elif isinstance(m, torch.nn.GRUCell):
            cell = GRUCell(m.input_size, m.hidden_size, bias=m.bias, dtype=dtype)
        elif isinstance(m, torch.nn.RNNCell):
            cell = RNNCell(m.input_size, m.hidden_size, bias=m.bias, nonlinearity=m.nonlinearity,
                           dtype=dtype)
        else:
            raise TypeError(f"from_torch: unsupported cell type {type(m).__name__}")
        for name in _WEIGHTS:
            if getattr(cell, name) is not None:
                _copy_into(getattr(cell, name), getattr(m, name), name)
        return cell
    if isinstance(m, torch.nn.RNNBase):
        if m.mode not in _MODES:
            raise TypeError(f"from_torch: unsupported recurrent mode {m.mode!r}")
        if getattr(m, "proj_size", 0):
            raise NotImplementedError("from_torch: LSTM with proj_size > 0 is not supported")
        model = TorchRNN(m.mode, m.input_size, m.hidden_size, num_layers=m.num_layers, bias=m.bias,
                         batch_first=m.batch_first, dropout=m.dropout, bidirectional=m.bidirectional,
                         dtype=dtype)
        for name, p in model.torch_parameters().items():
            _copy_into(p, getattr(m, name), name)
        model.train(m.training)
        return model
    raise TypeError(f"from_torch: expected torch.nn.RNN/LSTM/GRU or RNNCell/LSTMCell/GRUCell, got "
                    f"{type(m).__name__}")


def to_torch(model):
    """The torch equivalent of our ``RNNCell/LSTMCell/GRUCell`` or `TorchRNN`, weights copied
    (float64 parameters give a float64 torch module)."""
    torch = _torch()
    if isinstance(model, TorchRNN):
        cls = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM,
               "GRU": torch.nn.GRU}[model.mode]
        extra = {"nonlinearity": "relu" if model.mode == "RNN_RELU" else "tanh"} \
            if cls is torch.nn.RNN else {}
        dropout = model.rnn.cell.dropout.p if not model.bidirectional else model.dropout.p
        m = cls(model.input_size, model.hidden_size, num_layers=model.num_layers, bias=model.bias,
                batch_first=model.batch_first, dropout=dropout, bidirectional=model.bidirectional,
                dtype=_torch_dtype(torch, model.dtype), **extra)
        params = model.torch_parameters()
    elif isinstance(model, (RNNCell, LSTMCell, GRUCell)):
        if model.initial_state is not None:
            raise ValueError(f"to_torch: {type(model).__name__} has a learned initial state "
                             "(learn_init=True), which torch's cells do not have")
        bias = model.bias_ih is not None
        dt = _torch_dtype(torch, model.dtype)
        if isinstance(model, RNNCell):
            m = torch.nn.RNNCell(model.input_size, model.hidden_size, bias=bias,
                                 nonlinearity=model.nonlinearity, dtype=dt)
        else:
            cls = torch.nn.LSTMCell if isinstance(model, LSTMCell) else torch.nn.GRUCell
            m = cls(model.input_size, model.hidden_size, bias=bias, dtype=dt)
        params = {name: getattr(model, name) for name in _WEIGHTS if getattr(model, name) is not None}
    else:
        raise TypeError(f"to_torch: expected RNNCell/LSTMCell/GRUCell or TorchRNN, got "
                        f"{type(model).__name__}")
    with torch.no_grad():
        for name, p in params.items():
            getattr(m, name).copy_(torch.from_numpy(np.ascontiguousarray(p.data)))
    m.train(model.training)
    return m


def _torch_dtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


# --- files torch loads directly ------------------------------------------------------------

_TORCH_LAYER = {LSTMCell: "LSTM", GRUCell: "GRU", RNNCell: "RNN"}


def _torch_layout(model):
    """(torch class name, its keyword arguments, {torch name: our Parameter}) for ``model``;
    a clear error when torch has no equivalent."""
    if isinstance(model, TorchRNN):
        kwargs = {"input_size": model.input_size, "hidden_size": model.hidden_size,
                  "num_layers": model.num_layers, "bias": model.bias,
                  "batch_first": model.batch_first, "bidirectional": model.bidirectional}
        name = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(model.mode, model.mode)
        if name == "RNN":
            kwargs["nonlinearity"] = "relu" if model.mode == "RNN_RELU" else "tanh"
        return name, kwargs, model.torch_parameters()
    if type(model) in _TORCH_LAYER:              # a bare cell: torch's RNNCell/LSTMCell/GRUCell
        cells, suffix = [model], ""
        name = _TORCH_LAYER[type(model)] + "Cell"
        kwargs = {}
    else:
        cell = model.cell if isinstance(model, Unroll) else model
        if isinstance(cell, Stack):
            cells, kwargs = list(cell.cells), {"num_layers": len(cell.cells), "dropout": cell.dropout.p}
        elif type(cell) in _TORCH_LAYER:
            cells, kwargs = [cell], {"num_layers": 1}
        else:
            raise TypeError(f"state_dict_for_torch: expected an RNNCell/LSTMCell/GRUCell, a Stack or "
                            f"an Unroll of those, or a TorchRNN; got {type(model).__name__}"
                            + (f" of {type(cell).__name__}" if cell is not model else ""))
        if isinstance(model, Unroll) and model.batch_first:
            kwargs["batch_first"] = True
        name, suffix = _TORCH_LAYER.get(type(cells[0])), "_l{k}"
    first = cells[0]
    for k, c in enumerate(cells):
        if type(c) not in _TORCH_LAYER:
            raise TypeError(f"state_dict_for_torch: layer {k} is a {type(c).__name__}; torch's "
                            "recurrent layers are made of RNNCell, LSTMCell or GRUCell only")
        if type(c) is not type(first) or c.hidden_size != first.hidden_size or \
                (c.bias_ih is None) != (first.bias_ih is None) or \
                getattr(c, "nonlinearity", None) != getattr(first, "nonlinearity", None):
            raise ValueError(f"state_dict_for_torch: layer {k} ({_describe_cell(c)}) differs from "
                             f"layer 0 ({_describe_cell(first)}); torch.nn.{name} needs every layer "
                             "alike")
        if c.initial_state is not None:
            raise ValueError(f"state_dict_for_torch: layer {k} has a learned initial state "
                             "(learn_init=True), which torch's recurrent layers do not have")
    kwargs = {"input_size": first.input_size, "hidden_size": first.hidden_size, **kwargs,
              "bias": first.bias_ih is not None}
    if isinstance(first, RNNCell):
        kwargs["nonlinearity"] = first.nonlinearity
    params = {}
    for k, c in enumerate(cells):
        for w in _WEIGHTS:
            if getattr(c, w) is not None:
                params[w + suffix.format(k=k)] = getattr(c, w)
    return name, kwargs, params


def _describe_cell(c):
    extra = f", {c.nonlinearity}" if isinstance(c, RNNCell) else ""
    return f"{type(c).__name__}(hidden {c.hidden_size}, bias={c.bias_ih is not None}{extra})"


def torch_config(model):
    """``(class name, kwargs)`` of the torch module that ``state_dict_for_torch(model)`` fits:
    ``getattr(torch.nn, name)(**kwargs)``; e.g. ``("LSTM", {"input_size": 8, "hidden_size":
    32, "num_layers": 2, "dropout": 0.0, "bias": True})``."""
    name, kwargs, _ = _torch_layout(model)
    return name, kwargs


def state_dict_for_torch(model):
    """``{torch parameter name: numpy array (a copy)}`` for ``model``, in torch's names and
    layouts: ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..._l1`` for an ``Unroll`` of
    a cell or of a ``Stack`` (or a ``Stack`` itself), ``..._reverse`` for a bidirectional
    `TorchRNN`, and ``weight_ih, ...`` for a bare cell (torch's ``LSTMCell`` etc.). The
    dtype is kept; torch's ``load_state_dict`` casts to the module's dtype."""
    _, _, params = _torch_layout(model)
    return {name: np.array(p.data, order="C", copy=True) for name, p in params.items()}


def save_for_torch(model, path):
    """Write ``state_dict_for_torch(model)`` to ``path`` as safetensors (atomically), for
    ``torch_module.load_state_dict(safetensors.torch.load_file(path))``. The metadata records
    the torch class and arguments (``torch_module``, ``torch_kwargs`` as JSON). Returns path."""
    name, kwargs, _ = _torch_layout(model)
    tensors = state_dict_for_torch(model)
    metadata = {"format": "pt", "torch_module": f"torch.nn.{name}", "torch_kwargs": json.dumps(kwargs)}
    serialization.save_flat(tensors, path, metadata=metadata, who="save_for_torch")
    return path
