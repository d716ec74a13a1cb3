"""Factories: ``tg.tensor``, ``tg.zeros``, ``tg.ones``, ``tg.full``, ``tg.zeros_like``,
``tg.randn``.

Why a module of its own: they make leaf tensors (nothing recorded) in the default dtype
(dtypes.py) unless ``dtype=`` says otherwise; convenience around ``Tensor(...)``, not part
of the tape.
"""

import numpy as np

from .dtypes import resolve_dtype
from .tensor import Tensor


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def zeros(*shape, dtype=None, requires_grad=False):
    return Tensor(np.zeros(_shape(shape), dtype=resolve_dtype(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    return Tensor(np.ones(_shape(shape), dtype=resolve_dtype(dtype)), requires_grad=requires_grad)


def full(shape, value, dtype=None, requires_grad=False):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return Tensor(np.full(shape, value, dtype=resolve_dtype(dtype)), requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    data = t.data if isinstance(t, Tensor) else np.asarray(t)
    return Tensor(np.zeros(data.shape, dtype=dtype or data.dtype), requires_grad=requires_grad)


def randn(*shape, seed=None, dtype=None, requires_grad=False):
    """Standard normal samples; ``seed`` is an int or a ``np.random.Generator``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    data = rng.standard_normal(_shape(shape)).astype(resolve_dtype(dtype), copy=False)
    return Tensor(data, requires_grad=requires_grad)
