"""The per-step matrix products of the compiled loops: numpy's own OpenBLAS, called from Numba.

Why not ``np.dot``: inside Numba it calls SciPy's BLAS (through ``scipy.linalg.cython_blas``),
a different OpenBLAS build from the one numpy bundles, and on this machine it measured
1.2-1.7x slower on the recurrent step's shapes ((32, 128) @ (128, 512): 111 against 71 µs,
(8, 32) @ (32, 128): 6.4 against 3.8 µs; benchmarks/README.md). numpy's wheels ship
``libscipy_openblas64_`` with a CBLAS interface; `load_library_permanently` makes its symbols
known to LLVM by name, so the generated loops call ``cblas_?gemm`` directly, and Numba's
on-disk cache stays valid across processes (a symbol name, not an address, is compiled in).

``gemm32(a, b, out)`` is ``out = a @ b``; ``gemm_acc32(a, b, out)`` is ``out += a @ b`` (BLAS's
beta = 1: the reverse loop adds ``dG @ W`` into a state's gradient without a temporary).
All three are C-contiguous 2-D float32 arrays (``gemm64``, ``gemm_acc64``: float64). Where
numpy has no bundled OpenBLAS (a conda or Accelerate numpy) they are ``np.dot`` if SciPy is
installed (Numba's ``np.dot`` needs it), else plain Numba loops (slow at large sizes, but
right). ``TINYGRAD_RNN_BLAS=numpy.dot`` or ``=loops`` picks one of those. `KIND` says which is
in use, and the generated source names it, so they never share a cache entry. SciPy is not a
dependency: besides, Numba imports ``scipy.linalg`` when it first compiles (0.5 s of every
process's first compiled call here) only where SciPy is installed.
"""

import ctypes
import glob
import os

import numpy as np
from numba import njit, types

# (library file pattern beside numpy, symbol prefix, symbol suffix, integer type): numpy >= 2
# wheels, then numpy 1.2x wheels (openblas64_ with 64-bit integers).
_CANDIDATES = (
    ("numpy.libs/libscipy_openblas64_*", "scipy_cblas_", "64_", types.int64),
    ("numpy/.dylibs/libscipy_openblas64_*", "scipy_cblas_", "64_", types.int64),
    ("numpy.libs/libopenblas64_*", "cblas_", "64_", types.int64),
    ("numpy/.dylibs/libopenblas64_*", "cblas_", "64_", types.int64),
)
ROW_MAJOR, NO_TRANS = 101, 111     # CBLAS enum values


_CHOICES = ("numpy-cblas", "numpy.dot", "loops")


def _find_cblas():
    """(path, sgemm symbol, dgemm symbol, integer type) of numpy's bundled CBLAS, or None."""
    if os.environ.get("TINYGRAD_RNN_BLAS", "numpy-cblas") != "numpy-cblas":   # asked for another
        return None
    site = os.path.dirname(os.path.dirname(np.__file__))
    for pattern, prefix, suffix, int_type in _CANDIDATES:
        for path in sorted(glob.glob(os.path.join(site, pattern))):
            try:
                lib = ctypes.CDLL(path)        # numpy loaded it already: the same handle
            except OSError:
                continue
            s, d = f"{prefix}sgemm{suffix}", f"{prefix}dgemm{suffix}"
            if hasattr(lib, s) and hasattr(lib, d):
                return path, s, d, int_type
    return None


def _have_scipy_blas():
    """Numba's ``np.dot`` needs SciPy's BLAS (scipy is not a dependency of this package)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        return False
    return True


def _choose():
    asked = os.environ.get("TINYGRAD_RNN_BLAS")
    if asked is not None and asked not in _CHOICES:
        raise ValueError(f"TINYGRAD_RNN_BLAS={asked!r}: expected one of {', '.join(_CHOICES)}")
    found = _find_cblas()
    if found:
        return "numpy-cblas", found
    if asked != "loops" and _have_scipy_blas():
        return "numpy.dot", None
    return "loops", None


KIND, _found = _choose()

_options = dict(cache=True, nogil=True, inline="always")

if _found:
    import llvmlite.binding as llvm

    _path, _s, _d, _int = _found
    llvm.load_library_permanently(_path)

    def _signature(real):
        # cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        # pointers passed as integers (the same register in the C calling convention)
        i32, p = types.int32, types.intp
        return types.void(i32, i32, i32, _int, _int, _int, real, p, _int, p, _int, real, p, _int)

    _sgemm = types.ExternalFunction(_s, _signature(types.float32))
    _dgemm = types.ExternalFunction(_d, _signature(types.float64))

    # One function per product and dtype, at module level (Numba caches them by name).
    @njit(**_options)
    def gemm32(a, b, out):
        M, K, N = a.shape[0], a.shape[1], b.shape[1]
        _sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, np.float32(1.0), a.ctypes.data, K,
               b.ctypes.data, N, np.float32(0.0), out.ctypes.data, N)

    @njit(**_options)
    def gemm_acc32(a, b, out):
        M, K, N = a.shape[0], a.shape[1], b.shape[1]
        _sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, np.float32(1.0), a.ctypes.data, K,
               b.ctypes.data, N, np.float32(1.0), out.ctypes.data, N)

    @njit(**_options)
    def gemm64(a, b, out):
        M, K, N = a.shape[0], a.shape[1], b.shape[1]
        _dgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, a.ctypes.data, K,
               b.ctypes.data, N, 0.0, out.ctypes.data, N)

    @njit(**_options)
    def gemm_acc64(a, b, out):
        M, K, N = a.shape[0], a.shape[1], b.shape[1]
        _dgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, a.ctypes.data, K,
               b.ctypes.data, N, 1.0, out.ctypes.data, N)

elif KIND == "numpy.dot":
    @njit(**_options)
    def gemm32(a, b, out):
        np.dot(a, b, out)

    @njit(**_options)
    def gemm_acc32(a, b, out):
        out += np.dot(a, b)

    gemm64, gemm_acc64 = gemm32, gemm_acc32

else:
    # No BLAS Numba can reach: plain loops, row by row (j innermost, so LLVM vectorizes it).
    @njit(**_options)
    def gemm_acc32(a, b, out):
        for i in range(a.shape[0]):
            for k in range(a.shape[1]):
                s = a[i, k]
                for j in range(b.shape[1]):
                    out[i, j] += s * b[k, j]

    @njit(**_options)
    def gemm32(a, b, out):
        out[:] = 0
        gemm_acc32(a, b, out)

    gemm64, gemm_acc64 = gemm32, gemm_acc32
