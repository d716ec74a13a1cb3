"""Helpers shared by the inspection tools: observer contexts, scope tags, names, user sites."""

import os
import sys

import numpy as np

from .. import observers
from ..rnn.cell import tree_leaves
from ..tensor import Tensor

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Attribute an observer sets on a recorded node: (step, layer) of the Unroll/Stack that made it.
SCOPE_ATTR = "_inspect_scope"


class ObserverContext:
    """Base of the ``with ...:`` tools: registers ``self`` as an autograd observer inside the
    block. Subclasses define ``on_forward`` / ``on_backward`` (and optionally ``on_step``)."""

    def __enter__(self):
        observers.add_observer(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        observers.remove_observer(self)
        return False

    def on_forward(self, ctx, inputs, out):
        pass

    def on_backward(self, ctx, out_grads, in_grads, outs):
        pass


def annotate(ctx):
    """Tag a recorded node with the (step, layer) the forward is in; returns that pair."""
    scope = observers.current_scope()
    where = (scope.get("step"), scope.get("layer")) if scope else (None, None)
    if ctx.parents and where != (None, None):
        setattr(ctx, SCOPE_ATTR, where)
    return where


def scope_of(ctx):
    """(step, layer) recorded for a node by an observer during its forward, else (None, None)."""
    return getattr(ctx, SCOPE_ATTR, (None, None))


def describe_scope(step, layer):
    parts = []
    if step is not None:
        parts.append(f"time step {step}")
    if layer is not None:
        parts.append(f"layer {layer} of a Stack")
    return ", ".join(parts)


_inside_package = {}      # code filename -> True if it is a file of tinygrad_rnn


def user_site():
    """'file:line in function' of the innermost frame outside the tinygrad_rnn package."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        inside = _inside_package.get(filename)
        if inside is None:
            inside = os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)
            _inside_package[filename] = inside
        if not inside:
            return f"{_short_path(os.path.abspath(filename))}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return None


def _short_path(filename):
    try:
        rel = os.path.relpath(filename)
    except ValueError:          # another drive on Windows
        return filename
    return filename if rel.startswith(".." + os.sep + "..") else rel


def parameter_names(params):
    """id(tensor) -> name, from a Module, a dict of name -> Tensor, an iterable of Tensors or
    of (name, Tensor) pairs, or a list of those."""
    names = {}
    if params is None:
        return names
    if hasattr(params, "named_parameters"):
        for name, p in params.named_parameters():
            names.setdefault(id(p), name)
        return names
    if isinstance(params, dict):
        items = params.items()
    elif isinstance(params, Tensor):
        items = [(params.name or "param", params)]
    else:
        items = []
        for i, item in enumerate(params):
            if isinstance(item, Tensor):
                items.append((item.name or f"param{i}", item))
            elif hasattr(item, "named_parameters"):
                for k, v in parameter_names(item).items():
                    names.setdefault(k, v)
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
                items.append(item)
            else:
                raise TypeError(f"inspect: cannot take parameter names from {type(item).__name__}; "
                                "expected a Module, a dict name -> Tensor, or a list of Tensors")
    for name, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"inspect: parameter {name!r} is a {type(t).__name__}, not a Tensor")
        names.setdefault(id(t), name)
    return names


def fmt_shape(shape):
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def non_finite(arr):
    """'NaN', 'inf' or 'NaN and inf' if a floating array holds any, else None."""
    if arr is None or not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fc":
        return None
    if np.isfinite(arr).all():
        return None
    has_nan = bool(np.isnan(arr).any())
    has_inf = bool(np.isinf(arr).any())
    return " and ".join(k for k, flag in (("NaN", has_nan), ("inf", has_inf)) if flag)


state_leaves = tree_leaves      # the Tensors of a (nested tuple) state, in order


def state_names(cell, state, prefix=""):
    """Readable names for the Tensors of a cell's state, in ``state_leaves`` order:
    ``h``; ``h, c`` (LSTM); ``layer0.h, layer0.c, layer1.h, ...`` (Stack); ``cell.h, x_prev``
    (FeedbackCell); ``state[i]`` for anything else."""
    if not isinstance(state, (tuple, list)):
        return [prefix] if prefix.endswith("]") else [prefix + "h"]
    cells = getattr(cell, "cells", None)
    if isinstance(cells, (list, tuple)) and len(cells) == len(state):          # Stack
        return [n for k, (c, s) in enumerate(zip(cells, state))
                for n in state_names(c, s, f"{prefix}layer{k}.")]
    inner = getattr(cell, "cell", None)
    if inner is not None and hasattr(cell, "feedback") and len(state) == 2:     # FeedbackCell
        return state_names(inner, state[0], prefix + "cell.") + [prefix + "x_prev"]
    if getattr(cell, "state_size", None) == 2 and len(state) == 2 and not any(
            isinstance(s, (tuple, list)) for s in state):                     # LSTM-like
        return [prefix + "h", prefix + "c"]
    base = prefix if prefix.endswith("]") else prefix + "state"
    return [n for i, s in enumerate(state) for n in state_names(None, s, f"{base}[{i}]")]
