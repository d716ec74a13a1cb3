"""The character-level language model (many-to-many): Embedding -> Unroll(Stack of cells) ->
Linear readout, the cell lookup behind ``--cell``, and sampling.

A custom cell is named ``package.module:ClassName`` and built as ``ClassName(input_size,
hidden_size)``: a `tinygrad_rnn.Cell` whose output at every step has ``hidden_size``
features (the readout, or the next layer, reads it). Its parameters should take the default
dtype (``tg.zeros``, ``nn.Linear`` without ``dtype=``): the trainer builds the model with
float32 as the default.
"""

import importlib
import importlib.util
import os
import sys

import numpy as np

from .. import nn
from ..dtypes import default_dtype
from ..factories import zeros
from ..grad_mode import no_grad
from ..rnn import GRUCell, LSTMCell, MinGRUCell, MinLSTMCell, RNNCell, Stack, Unroll
from ..rnn.cell import Cell

BUILTIN_CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell,
                 "mingru": MinGRUCell, "minlstm": MinLSTMCell}


class CellSpecError(ValueError):
    """``--cell`` names no usable cell class."""


def resolve_cell(spec):
    """The cell class for ``rnn``, ``lstm``, ``gru`` or ``package.module:ClassName``.

    The module is imported from the import path, or else, as ``python -m`` would find it,
    from the current directory: ``--cell mycells:MGUCell`` finds ``./mycells.py`` (and
    ``--cell mypkg.cells:MGUCell`` finds ``./mypkg/cells.py``) without touching ``sys.path``.
    """
    if spec in BUILTIN_CELLS:
        return BUILTIN_CELLS[spec]
    if ":" not in spec:
        raise CellSpecError(f"--cell: expected {', '.join(BUILTIN_CELLS)} or package.module:ClassName, "
                            f"got {spec!r}")
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise CellSpecError(f"--cell: {spec!r} is not of the form package.module:ClassName")
    module = _import_cell_module(spec, module_name)
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise CellSpecError(f"--cell {spec}: module '{module_name}' has no attribute "
                                f"'{class_name}'")
    if not (isinstance(cls, type) and issubclass(cls, Cell)):
        raise CellSpecError(f"--cell {spec}: {class_name} is not a subclass of tinygrad_rnn.Cell "
                            "(a cell defines forward(x, state) -> (output, new_state) and "
                            "init_state(batch_size))")
    return cls


def _import_cell_module(spec, module_name):
    """``module_name`` from the import path, else its top-level package or module from the
    current directory (registered in ``sys.modules``, so its submodules import normally)."""
    top = module_name.partition(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != top or top in sys.modules:   # found, but it (or a module it needs) failed
            raise CellSpecError(f"--cell {spec}: cannot import module '{module_name}': {exc}") from exc
    except Exception as exc:
        raise CellSpecError(f"--cell {spec}: cannot import module '{module_name}': "
                            f"{type(exc).__name__}: {exc}") from exc
    cwd = os.getcwd()
    package_init, plain_file = os.path.join(cwd, top, "__init__.py"), os.path.join(cwd, f"{top}.py")
    if os.path.isfile(package_init):
        file_spec = importlib.util.spec_from_file_location(
            top, package_init, submodule_search_locations=[os.path.dirname(package_init)])
    elif os.path.isfile(plain_file):
        file_spec = importlib.util.spec_from_file_location(top, plain_file)
    else:
        raise CellSpecError(f"--cell {spec}: cannot import module '{module_name}': no module named "
                            f"'{top}' on the import path, and neither {top}.py nor {top}/__init__.py "
                            f"in the current directory ({cwd}). Run from the folder that holds it, "
                            "install it, or add its folder to PYTHONPATH")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[top] = module
    try:
        file_spec.loader.exec_module(module)
        return importlib.import_module(module_name)
    except Exception as exc:
        del sys.modules[top]
        raise CellSpecError(f"--cell {spec}: cannot import module '{module_name}' from "
                            f"{file_spec.origin}: {type(exc).__name__}: {exc}") from exc


def build_cell(cls, spec, input_size, hidden_size, dtype):
    """``cls(input_size, hidden_size)`` (built-ins also get ``dtype``), checked with one dry
    step: the output must be (B, hidden_size) in the model's dtype."""
    try:
        if cls in BUILTIN_CELLS.values():
            cell = cls(input_size, hidden_size, dtype=dtype)
        else:
            cell = cls(input_size, hidden_size)
    except TypeError as exc:
        raise CellSpecError(f"--cell {spec}: {cls.__name__}({input_size}, {hidden_size}) failed: {exc}. "
                            "A custom cell's constructor takes (input_size, hidden_size)") from None
    with no_grad():
        try:
            out, _ = cell(zeros(2, input_size, dtype=dtype), cell.init_state(2))
        except Exception as exc:
            raise CellSpecError(f"--cell {spec}: a dry step of {cls.__name__}({input_size}, "
                                f"{hidden_size}) on x of shape (2, {input_size}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
    if not hasattr(out, "shape") or tuple(out.shape) != (2, hidden_size):
        raise CellSpecError(f"--cell {spec}: {cls.__name__}({input_size}, {hidden_size}) outputs "
                            f"shape {getattr(out, 'shape', type(out).__name__)} for a batch of 2, "
                            f"expected (2, {hidden_size})")
    if out.dtype != dtype:
        raise CellSpecError(f"--cell {spec}: {cls.__name__} computes in {out.dtype}, expected "
                            f"{np.dtype(dtype)}; create parameters and states with the default "
                            "dtype (no explicit float64)")
    return cell


class CharLM(nn.Module):
    """Next-character model: ids (T, B) -> logits (T, B, V) and the final recurrent state.

    ``embed`` (V, E) -> ``rnn = Unroll(Stack([cell(E, H), cell(H, H), ...]))`` -> ``readout``
    Linear(H, V). The state carries across calls (truncated BPTT, generation).
    """

    def __init__(self, vocab_size, cell="lstm", hidden=128, layers=1, embed=64,
                 dtype=np.float32):
        self.vocab_size, self.cell_spec = vocab_size, cell
        self.hidden, self.layers, self.embed_size = hidden, layers, embed
        self.dtype = np.dtype(dtype)
        cls = resolve_cell(cell)
        with default_dtype(self.dtype):
            self.embed = nn.Embedding(vocab_size, embed, dtype=self.dtype)
            cells = [build_cell(cls, cell, embed if k == 0 else hidden, hidden, self.dtype)
                     for k in range(layers)]
            self.rnn = Unroll(Stack(cells))
            self.readout = nn.Linear(hidden, vocab_size, dtype=self.dtype)

    def forward(self, ids, state=None):
        if state is None:
            state = self.init_state(np.shape(ids.data if hasattr(ids, "data") else ids)[1])
        ys, state = self.rnn(self.embed(ids), state)
        return self.readout(ys), state

    def init_state(self, batch_size):
        with default_dtype(self.dtype):
            return self.rnn.cell.init_state(batch_size)

    def compile(self):
        """Run the recurrence by the compiled path (`tinygrad_rnn.compile`) from now on: the
        same Parameters and state-dict names, the same numbers to float rounding."""
        from ..compile import compile
        self.rnn = compile(self.rnn)
        return self

    def config(self):
        return {"cell": self.cell_spec, "hidden": self.hidden, "layers": self.layers,
                "embed": self.embed_size, "vocab_size": self.vocab_size, "dtype": self.dtype.name}

    def extra_repr(self):
        return f"vocab={self.vocab_size}, cell={self.cell_spec}, hidden={self.hidden}, layers={self.layers}"


def sample(model, vocab, prime, length, temperature=0.8, rng=None):
    """Continue ``prime`` by ``length`` characters drawn from the model's softmax at
    ``temperature`` (0 = always the most likely); the unknown symbol is never drawn.

    Returns the generated text (without the prime). Characters of the prime outside the
    vocabulary are read as the unknown symbol.
    """
    if temperature < 0:
        raise ValueError(f"sample: temperature must be >= 0, got {temperature}")
    if length < 0:
        raise ValueError(f"sample: length must be >= 0, got {length}")
    rng = rng if rng is not None else np.random.default_rng()
    ids = vocab.encode(prime or "\n")
    was_training = model.training
    model.eval()
    out = []
    try:
        with no_grad(), default_dtype(model.dtype):
            logits, state = model(ids[:, None])
            last = logits.data[-1, 0]
            for _ in range(length):
                z = last.astype(np.float64)
                z[0] = -np.inf                        # never emit the unknown symbol
                if temperature == 0:
                    c = int(np.argmax(z))
                else:
                    z = z / temperature
                    p = np.exp(z - z.max())
                    c = int(rng.choice(len(p), p=p / p.sum()))
                out.append(c)
                logits, state = model(np.array([[c]], dtype=np.int32), state)
                last = logits.data[-1, 0]
    finally:
        model.train(was_training)
    return vocab.decode(out)
