"""One contiguous copy of each weight's transpose per sequence, for ``linear``'s ``x @ W.T``."""

import contextlib
import threading
import weakref

import numpy as np

_state = threading.local()      # .cache: id(W) -> (weakref to W, W.T as a C array or None)


@contextlib.contextmanager
def reuse_transposed_weights():
    """Inside this block ``linear`` makes each weight's transpose contiguous once and reuses it.

    ``x @ W.T`` hands BLAS a transposed view of W, and OpenBLAS's sgemm runs that 20-45%
    slower than the same product with a contiguous ``W.T`` at RNN sizes (B, I, 4H) =
    (32, 64, 512) .. (64, 512, 2048); see benchmarks/README.md. An unroll uses the same W
    at every step, so one copy per sequence pays for itself (made at a weight's second use:
    an array used once, e.g. a weight computed afresh each step, is never copied). Unroll
    wraps its loop in this (`engine.fast_sequence`); weights must not change in place inside
    the block (nothing but the cell runs there). Per thread: an unroll in another thread
    keeps its own copies.
    """
    outer = getattr(_state, "cache", None)
    if outer is None:
        _state.cache = {}
    try:
        yield
    finally:
        if outer is None:
            _state.cache = None         # drop the copies with the unroll


def transposed(w):
    """``w.T``: inside reuse_transposed_weights a cached contiguous copy, else the view."""
    cache = getattr(_state, "cache", None)
    if cache is None:
        return w.T
    entry = cache.get(id(w))
    if entry is None or entry[0]() is not w:          # first use (or a dead array's id)
        cache[id(w)] = (weakref.ref(w), None)
        return w.T
    if entry[1] is None:                               # second use: now the copy pays
        entry = cache[id(w)] = (entry[0], np.ascontiguousarray(w.T))
    return entry[1]
