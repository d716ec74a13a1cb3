"""Elementwise kernels: the forward and derivative arithmetic of the pointwise ops.

Each kernel exists twice: a pure-numpy reference (`numpy_kernels`) and a Numba version
(`numba_kernels`). Ops call the module-level names (`tanh_backward`, ...), bound to the
Numba versions unless the environment variable ``TINYGRAD_RNN_NUMBA=0`` is set, so the
tests can compare both paths.

Where Numba wins, measured (see benchmarks/README.md): the llvmlite build on PyPI has no
SVML, so ``math.tanh``/``math.exp`` inside Numba run one element at a time (~3-16 ns each,
against ~0.4 ns for ``np.tanh``). So tanh stays in numpy; Numba fuses the arithmetic around
it (``g * (1 - y*y)`` in one pass, no temporaries). The sigmoid, three of the LSTM's four
nonlinearities, is one Numba pass with its own vectorizable exp (`_numba_sigmoid`).

The Numba ufuncs are built on first use (``cache=True``), so importing the package does
not pay for compilation or even for importing numba.
"""

import inspect
import os

import numpy as np

NUMBA_ENABLED = os.environ.get("TINYGRAD_RNN_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")

_SIGNATURES_2 = ["float32(float32, float32)", "float64(float64, float64)"]
_SIGNATURES_3 = ["float32(float32, float32, float32)", "float64(float64, float64, float64)"]


# --- pure numpy reference ---------------------------------------------------------------

class numpy_kernels:
    """The reference implementations; always available."""

    @staticmethod
    def sigmoid(x):
        # e = exp(-|x|) <= 1 never overflows (x = -1000 is fine), and e / (1 + e) keeps full
        # relative precision for x << 0, where 0.5 * (1 + tanh(x / 2)) cancels to 0
        # (sigmoid(-40) = 4e-18; log(sigmoid(x)) must not turn -inf on large batches only).
        # Every step writes to out= so that a 0-d input stays an array.
        e = np.empty_like(x)
        np.abs(x, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)
        out = np.empty_like(x)
        np.maximum(e, x >= 0, out=out)      # the numerator: 1 where x >= 0, else e
        e += 1
        np.divide(out, e, out=out)
        return out

    @staticmethod
    def tanh_backward(g, y):
        return g * (1 - y * y)

    @staticmethod
    def sigmoid_backward(g, s):
        return g * s * (1 - s)

    @staticmethod
    def relu_backward(g, x):
        return np.where(x > 0, g, np.zeros((), dtype=g.dtype))

    @staticmethod
    def sqrt_backward(g, y):
        return g * 0.5 / y

    @staticmethod
    def div_rhs_backward(g, out, b):
        return -g * out / b


# --- numba -------------------------------------------------------------------------------

def _tanh_backward(g, y):
    return g * (1.0 - y * y)


def _sigmoid_backward(g, s):
    return g * s * (1.0 - s)


def _relu_backward(g, x):
    return g if x > 0 else 0.0


def _sqrt_backward(g, y):
    return g * 0.5 / y


def _div_rhs_backward(g, out, b):
    return -g * out / b


class _LazyUfunc:
    """A Numba @vectorize ufunc compiled (or loaded from the on-disk cache) on first call."""

    def __init__(self, py_func, signatures):
        self.py_func, self.signatures, self.ufunc = py_func, signatures, None

    def ufunc_for(self, dtype):
        if self.ufunc is None:
            from numba import vectorize
            compiled = vectorize(self.signatures, cache=True, nopython=True)(self.py_func)
            # Numba returns a DUFunc whose Python-level __call__ costs ~2 µs a call; the plain
            # numpy ufunc inside it holds the same compiled loops and costs ~0.5 µs.
            self.ufunc = getattr(compiled, "ufunc", compiled)
        return self.ufunc

    def __call__(self, *args):
        return self.ufunc_for(args[0].dtype)(*args)


class _LazySigmoid:
    """One vectorized pass at every size (`_numba_sigmoid`): 2.5-9x faster than the numpy
    form up to 4,096 elements, 1.5-2.4x at 32k (benchmarks/README.md)."""

    ufuncs = None

    def ufunc_for(self, dtype):
        if self.ufuncs is None:
            from . import _numba_sigmoid
            f32, f64 = _numba_sigmoid.build()
            self.ufuncs = {np.dtype(np.float32): f32, np.dtype(np.float64): f64}
        return self.ufuncs[dtype]

    def __call__(self, x):
        return self.ufunc_for(x.dtype)(x)


class numba_kernels:
    """Numba versions of the fused arithmetic; of the transcendentals, only the sigmoid's exp."""

    sigmoid = _LazySigmoid()
    tanh_backward = _LazyUfunc(_tanh_backward, _SIGNATURES_2)
    sigmoid_backward = _LazyUfunc(_sigmoid_backward, _SIGNATURES_2)
    relu_backward = _LazyUfunc(_relu_backward, _SIGNATURES_2)
    sqrt_backward = _LazyUfunc(_sqrt_backward, _SIGNATURES_2)
    div_rhs_backward = _LazyUfunc(_div_rhs_backward, _SIGNATURES_3)


_KERNEL_NAMES = ("sigmoid", "tanh_backward", "sigmoid_backward", "relu_backward",
                 "sqrt_backward", "div_rhs_backward")


_UFUNC_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _dispatch(name):
    """The kernel the ops call: the Numba ufunc when every argument has the same dtype,
    float32 or float64 (its signatures), else the numpy reference. Called a few times per
    recurrent step, so the common case is one dict lookup and one dtype comparison."""
    fast, ref = getattr(numba_kernels, name), getattr(numpy_kernels, name)
    compiled = {}                   # dtype -> ufunc, filled by the first call of each dtype
    get = compiled.get

    def first_call(*args):
        dt = args[0].dtype
        if dt not in _UFUNC_DTYPES or any(a.dtype != dt for a in args[1:]):
            return ref(*args)
        compiled[dt] = fast.ufunc_for(dt)
        return compiled[dt](*args)

    arity = len(inspect.signature(ref).parameters)
    if arity == 1:
        def kernel(x):
            f = get(x.dtype)
            return f(x) if f is not None else first_call(x)
    elif arity == 2:
        def kernel(a, b):
            f = get(a.dtype)
            if f is None or b.dtype != a.dtype:
                return first_call(a, b)
            return f(a, b)
    else:
        def kernel(a, b, c):
            f = get(a.dtype)
            if f is None or b.dtype != a.dtype or c.dtype != a.dtype:
                return first_call(a, b, c)
            return f(a, b, c)

    kernel.__name__ = name
    return kernel


if NUMBA_ENABLED:
    for _name in _KERNEL_NAMES:
        globals()[_name] = _dispatch(_name)
else:
    for _name in _KERNEL_NAMES:
        globals()[_name] = getattr(numpy_kernels, _name)
