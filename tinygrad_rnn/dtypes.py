"""The default dtype: what factories, layers, cells and Python floats become (float64 unless
changed).

Why a module of its own: it is configuration read by many layers (tensor.py, the factories,
nn, rnn), not part of the tape; float64 by default so that gradients can be checked, float32
with ``tg.set_default_dtype(np.float32)`` (or ``dtype=`` per call) for speed.
"""

import contextlib

import numpy as np

_default_dtype = np.dtype(np.float64)


def set_default_dtype(dtype):
    """Set the dtype of factories, layers and cells (float64 unless changed)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"set_default_dtype: expected float32 or float64, got {dtype}")
    _default_dtype = dtype


def get_default_dtype():
    return _default_dtype


@contextlib.contextmanager
def default_dtype(dtype):
    """``with default_dtype(np.float64):`` sets the default dtype for the block, then restores it."""
    before = _default_dtype
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(before)


def resolve_dtype(dtype):
    """``dtype`` as a numpy dtype, or the default dtype when None (factories, layers, cells)."""
    return _default_dtype if dtype is None else np.dtype(dtype)
