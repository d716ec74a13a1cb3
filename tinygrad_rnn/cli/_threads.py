"""Set the number of BLAS threads at run time (numpy's bundled OpenBLAS).

The recurrent step multiplies small matrices ((B, H) @ (H, 4H) with B = 32, H = 128), where
OpenBLAS's thread pool costs more than it gains, and on a shared machine its spinning
threads are ruinous: one LSTM training step measured 32 ms with one thread and over a
second with two on a busy 2-core machine. The environment variable
``OPENBLAS_NUM_THREADS`` only works before numpy is imported, which the ``tinygrad-rnn``
command cannot arrange; OpenBLAS's own ``set_num_threads`` can be called at any time.

Only numpy wheels that bundle OpenBLAS (the PyPI wheels on Linux and macOS) are handled;
with any other BLAS this does nothing and says so (``blas_threads`` yields None).
"""

import contextlib
import ctypes
import glob
import os

import numpy as np

# (setter, getter) symbol pairs: scipy-openblas (numpy >= 2) first, then classic OpenBLAS.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _openblas_controls():
    """(set_num_threads, get_num_threads) of the OpenBLAS numpy loaded, or None."""
    site = os.path.dirname(os.path.dirname(np.__file__))
    patterns = ("numpy.libs/lib*openblas*", "numpy/.dylibs/lib*openblas*")
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(site, pattern))):
            try:
                lib = ctypes.CDLL(path)        # already loaded by numpy: same handle
            except OSError:
                continue
            for setter, getter in _SYMBOLS:
                if hasattr(lib, setter) and hasattr(lib, getter):
                    set_fn, get_fn = getattr(lib, setter), getattr(lib, getter)
                    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                    return set_fn, get_fn
    return None


@contextlib.contextmanager
def blas_threads(n):
    """Run with ``n`` OpenBLAS threads, restoring the previous count afterwards.

    Yields the previous count, or None when ``n`` is 0 (leave BLAS alone) or numpy's BLAS
    is not a bundled OpenBLAS.
    """
    controls = _openblas_controls() if n else None
    if controls is None:
        yield None
        return
    set_fn, get_fn = controls
    before = get_fn()
    set_fn(int(n))
    try:
        yield before
    finally:
        set_fn(before)
