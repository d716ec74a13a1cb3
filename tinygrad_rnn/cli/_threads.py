"""Set the number of BLAS threads at run time (numpy's and SciPy's bundled OpenBLAS).

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
    """(set_num_threads, get_num_threads) of every bundled OpenBLAS loaded: numpy's, and
    SciPy's where it is installed (the compiled loops call numpy's; SciPy's only serves their
    ``np.dot`` fallback, compile/blas.py)."""
    site = os.path.dirname(os.path.dirname(np.__file__))
    patterns = ("numpy.libs/lib*openblas*", "numpy/.dylibs/lib*openblas*",
                "scipy.libs/lib*openblas*", "scipy/.dylibs/lib*openblas*")
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(site, pattern))):
            try:
                lib = ctypes.CDLL(path)        # already loaded by numpy or scipy: same handle
            except OSError:
                continue
            for setter, getter in _SYMBOLS:
                if hasattr(lib, setter) and hasattr(lib, getter):
                    set_fn, get_fn = getattr(lib, setter), getattr(lib, getter)
                    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                    found.append((set_fn, get_fn))
                    break
    return found


@contextlib.contextmanager
def blas_threads(n):
    """Run with ``n`` OpenBLAS threads, restoring the previous count afterwards.

    Yields the previous count, or None when ``n`` is 0 (leave BLAS alone) or numpy's BLAS
    is not a bundled OpenBLAS.
    """
    controls = _openblas_controls() if n else []
    if not controls:
        yield None
        return
    before = [get_fn() for _, get_fn in controls]
    for set_fn, _ in controls:
        set_fn(int(n))
    try:
        yield before[0]
    finally:
        for (set_fn, _), count in zip(controls, before):
            set_fn(count)
