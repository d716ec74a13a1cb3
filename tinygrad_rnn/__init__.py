"""tinygrad_rnn: a small autograd engine on which recurrent networks are their equations."""

from . import autograd, func, kernels, nn, ops, optim, rnn
from .autograd import ShapeError
from .dtypes import get_default_dtype, set_default_dtype
from .factories import full, ones, randn, tensor, zeros, zeros_like
from .functional import cat, linear, linear_scan, stack, where
from .grad_mode import enable_grad, is_grad_enabled, no_grad
from .higher_order import grad
from .nn.init import manual_seed
from .rnn import (
    Bidirectional,
    Cell,
    FeedbackCell,
    GRUCell,
    LSTMCell,
    MinGRUCell,
    MinLSTMCell,
    RNNCell,
    Seq2Seq,
    Stack,
    Unroll,
    detach_state,
    generate,
)
from .serialization import CheckpointError, load, save
from .tensor import Tensor

__version__ = "0.1.0"


def __getattr__(name):
    # Heavier or optional submodules load on first use, keeping `import tinygrad_rnn` fast.
    import importlib
    if name in ("testing", "interop"):
        return importlib.import_module(f".{name}", __name__)
    if name == "inspect":
        return importlib.import_module(".inspect", __name__)
    if name == "compile":           # the compiled path imports numba: only when asked for
        return importlib.import_module(".compile", __name__)     # callable: tg.compile(cell)
    if name == "detect_anomaly":
        return importlib.import_module(".inspect", __name__).detect_anomaly
    raise AttributeError(f"module 'tinygrad_rnn' has no attribute {name!r}")
