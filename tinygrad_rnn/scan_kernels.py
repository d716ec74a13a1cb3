"""The linear scan ``h_t = a_t * h_{t-1} + b_t``: a numpy reference and the Numba loops.

``scan(a, b, h0, reverse)`` takes a, b (T, N) of one dtype and h0 (N,), and returns h
(T, N); ``reverse=True`` runs from t = T-1 down to 0 (``h_t = a_t * h_{t+1} + b_t``). It is
the Numba version (`_numba_scan`, compiled on first use with ``cache=True``) for float32
and float64, unless ``TINYGRAD_RNN_NUMBA=0`` (the switch of `kernels`) selects the numpy
reference, which the tests compare against.

Which Numba loop runs (`choose_variant`): one thread for scans below ``PARALLEL_MIN_SIZE``
elements (every RNN size we benchmark: there the scan is memory-bound and ~0.1 ms, and
waking threads costs more than it saves); above it the blocked loop, parallel over the
N = B * H independent recurrences, or, when N is too narrow to give every thread a block
and the machine has more than two threads, the chunked loop, parallel over time. On two
threads the chunked scan cannot win: it does about twice the arithmetic, and two threads at
most halve it (measured in benchmarks/README.md, "Linear scan").
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


# Below this many elements (T * N) one thread wins: on 2 cores, waking the threads costs
# ~15 µs, a scan of 2000 x 256 float32 takes ~0.1 ms on one, and the parallel loops were
# slower at every size up to 100 x 65536 (benchmarks/README.md, "Linear scan").
PARALLEL_MIN_SIZE = 2 ** 20


def choose_variant(T, N):
    """The Numba loop for a scan of T steps over N columns (see the module docstring)."""
    from ._numba_scan import BLOCK
    threads = _threads()
    if threads == 1 or T * N < PARALLEL_MIN_SIZE:
        return "serial"
    if N >= BLOCK * threads:
        return "blocked"
    return "chunked" if threads > 2 else "serial"


def scan(a, b, h0, reverse, variant=None):
    """h (T, N) with ``h_t = a_t * h_{t-1} + b_t`` (or over reversed time); ``variant``
    forces one implementation ("numpy", "blocked", "chunked"), for tests and benchmarks."""
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
