"""Ops written as functions of several tensors: ``tg.cat``, ``tg.stack``, ``tg.linear``,
``tg.where``, ``tg.linear_scan`` (PyTorch's ``torch.cat``, ``torch.where``, ``F.linear``).

Why a module of its own: tensor.py holds the Tensor and its methods; these take a list of
tensors or several roles (``x``, ``weight``, ``bias``), check them, and apply one op of ops.py
each. Not to be confused with `tinygrad_rnn.func` (transforms: grad, vjp, hvp) or
`tinygrad_rnn.nn.functional` (losses).
"""

import numpy as np

from . import ops
from .autograd import ShapeError
from .tensor import Tensor


def _tensors(values, op):
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, np.ndarray):
            out.append(Tensor(v))
        else:
            raise TypeError(f"{op}: expected Tensors, got {type(v).__name__}")
    return out


def cat(tensors, axis=0):
    """Concatenate along an existing axis (numpy's ``concatenate``)."""
    tensors = _tensors(tensors, "cat")
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    return ops.Cat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Stack along a new axis."""
    tensors = _tensors(tensors, "stack")
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    return ops.Stack.apply(*tensors, axis=axis)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` as one op; x (..., in), weight (out, in), bias (out,)."""
    if type(x) is Tensor and isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor)):
        return ops.Linear.apply(x, weight) if bias is None else ops.Linear.apply(x, weight, bias)
    args = (x, weight) if bias is None else (x, weight, bias)
    return ops.Linear.apply(*_tensors(args, "linear"))


def where(mask, a, b):
    """Elementwise ``a`` where ``mask`` is true, else ``b``; gradients flow to ``a`` and ``b``."""
    mask = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else Tensor(a)
    a, b = like._operand(a, "where"), like._operand(b, "where")
    return ops.Where.apply(Tensor._from_op(mask, None, False), a, b)


def linear_scan(a, b, h0=None, reverse=False):
    """All states of ``h_t = a_t * h_{t-1} + b_t``: a, b (T, B, H) -> h (T, B, H).

    a may broadcast against b along any axis ((T, 1, H), (T, B, 1), (1, B, H), ...), and
    b against a; h0 (B, H) is the state before the first step (zero if None). With
    ``reverse=True`` the recurrence runs from the end, ``h_t = a_t * h_{t+1} + b_t``.
    One op (ops.LinearScan): a compiled loop forward, the same loop run backward in time
    for the gradient. Cells whose gates do not read h_{t-1} (MinGRUCell, MinLSTMCell) run
    a whole sequence through it.
    """
    a, b = _tensors((a, b), "linear_scan")
    for name, t in (("a", a), ("b", b)):
        if t.ndim != 3:
            raise ShapeError(f"linear_scan: {name} must have rank 3 (T, B, H), got shape {t.shape} "
                             f"(a {a.shape}, b {b.shape})")
    shape = []
    for axis, (n_a, n_b) in enumerate(zip(a.shape, b.shape)):
        if n_a != n_b and 1 not in (n_a, n_b):
            raise ShapeError(f"linear_scan: a {a.shape} and b {b.shape} disagree in {'TBH'[axis]} "
                             f"(axis {axis}: {n_a} vs {n_b}); each axis must match or be 1 in one "
                             "of them")
        shape.append(max(n_a, n_b))
    inputs = [a, b]
    if h0 is not None:
        (h0,) = _tensors((h0,), "linear_scan")
        if h0.shape != tuple(shape[1:]):
            raise ShapeError(f"linear_scan: h0 must have shape (B, H) = {tuple(shape[1:])} for a "
                             f"{a.shape} and b {b.shape}, got {h0.shape}")
        inputs.append(h0)
    for name, t in zip(("a", "b", "h0"), inputs):
        if t.dtype.kind != "f":
            raise TypeError(f"linear_scan: {name} must be a floating-point tensor (float32 or "
                            f"float64), got dtype {t.dtype}")
    return ops.LinearScan.apply(*inputs, reverse=bool(reverse))
