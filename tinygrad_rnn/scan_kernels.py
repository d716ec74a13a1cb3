"""The linear scan ``h_t = a_t * h_{t-1} + b_t``: a numpy reference and the Numba loops.

``scan(a, b, h0, reverse)`` takes a, b (T, N) of one dtype and h0 (N,), and returns h
(T, N); ``reverse=True`` runs from t = T-1 down to 0 (``h_t = a_t * h_{t+1} + b_t``). It is
the Numba version (`_numba_scan`, compiled on first use with ``cache=True``) for float32
and float64, unless ``TINYGRAD_RNN_NUMBA=0`` (the switch of `kernels`) selects the numpy
reference, which the tests compare against.

Which Numba loop runs (`choose_variant`): the serial one, unless the machine has more than
two threads and the scan is large; then the blocked loop, parallel over the N = B * H
independent recurrences, or the chunked loop, parallel over time, when N is too narrow to
give every thread a block. On two threads the chunked scan cannot win even in theory (it
does about twice the arithmetic, and two threads at most halve it), and on this project's
2-core machine neither parallel loop won anywhere (benchmarks/README.md, "Linear scan").
"""

import numpy as np

from .kernels import NUMBA_ENABLED

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
VARIANTS = ("numpy", "serial", "blocked", "chunked")


def scan_numpy(a, b, h0, reverse):
    """The reference: one vectorized step per time step."""
    T = b.shape[0]
    out = np.empty(b.shape, dtype=b.dtype)
    h = h0
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = out[t] = a[t] * h + b[t]
    return out


def _threads():
    import numba
    return numba.get_num_threads()


# Parallel loops only above this many elements (T * N), and only with more than two
# threads. Measured on this project's 2-core machine (benchmarks/README.md, "Linear scan"):
# one thread won or tied at every size from 2000 x 8 to 1000 x 65536; the scan is memory-
# bound, and every parallel loop ends at a barrier that waits for the slowest thread (on a
# busy machine, a whole scheduler slice: 4-16 ms). Untested beyond two cores.
PARALLEL_MIN_SIZE = 2 ** 20
PARALLEL_MIN_THREADS = 3


def choose_variant(T, N):
    """The Numba loop for a scan of T steps over N columns (see the module docstring)."""
    from ._numba_scan import BLOCK
    threads = _threads()
    if threads < PARALLEL_MIN_THREADS or T * N < PARALLEL_MIN_SIZE:
        return "serial"
    return "blocked" if N >= BLOCK * threads else "chunked"


def scan(a, b, h0, reverse, variant=None):
    """h (T, N) with ``h_t = a_t * h_{t-1} + b_t`` (or over reversed time); ``variant``
    forces one of `VARIANTS`, for tests and benchmarks."""
    if variant is None:
        if not NUMBA_ENABLED or b.dtype not in _DTYPES or b.size == 0:
            return scan_numpy(a, b, h0, reverse)
        variant = choose_variant(*b.shape)
    if variant == "numpy":
        return scan_numpy(a, b, h0, reverse)
    if variant not in VARIANTS:
        raise ValueError(f"linear_scan: unknown variant {variant!r}; choose from {VARIANTS}")
    from . import _numba_scan
    out = np.empty(b.shape, dtype=b.dtype)
    if variant == "serial":
        return _numba_scan.scan_serial(a, b, h0, bool(reverse), out)
    if variant == "blocked":
        return _numba_scan.scan_blocked(a, b, h0, bool(reverse), out, max(2, _threads()))
    return _numba_scan.scan_chunked(a, b, h0, bool(reverse), out, max(2, _threads()))


def scan_backward_reference(a, g, h, h0, reverse, variant=None):
    """The gradient of ``h = scan(a, b, h0, reverse)`` given ``g = dL/dh``, as its rule:

    ``dh_t = g_t + a_{t+1} * dh_{t+1}`` is the scan run the other way in time on ``a``
    shifted one step; ``da_t = dh_t * h_{t-1}`` (h0 before the first step); ``db = dh``;
    ``dh0 = a_1 * dh_1`` (steps counted in the scan's direction). Returns (dh, da, dh0).
    """
    a_next = np.zeros_like(a)
    h_prev = np.empty_like(h)
    if reverse:
        a_next[1:], h_prev[:-1] = a[:-1], h[1:]
    else:
        a_next[:-1], h_prev[1:] = a[1:], h[:-1]
    first = a.shape[0] - 1 if reverse else 0
    h_prev[first] = h0
    dh = scan(a_next, g, np.zeros_like(h0), not reverse, variant)
    return dh, dh * h_prev, a[first] * dh[first]


def scan_backward(a, g, h, h0, reverse):
    """(dh, da, dh0) for ``scan``: one fused Numba pass where the forward ran the serial
    loop, else the rule (`scan_backward_reference`), whose scan picks its own loop."""
    if (not NUMBA_ENABLED or g.dtype not in _DTYPES or g.size == 0
            or choose_variant(*g.shape) != "serial"):
        return scan_backward_reference(a, g, h, h0, reverse)
    from . import _numba_scan
    dh, da = np.empty_like(g), np.empty_like(g)
    dh0 = _numba_scan.scan_backward_serial(a, g, h, h0, bool(reverse), dh, da)
    return dh, da, dh0

