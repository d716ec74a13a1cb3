"""The op catalogue: each primitive is one `Function`, its forward beside its backward.

Forward receives numpy arrays and returns one; backward receives the output gradient and
returns one gradient per input, reduced to that input's shape (``unbroadcast``). Anything
not here (``mean``, ``chunk``, ``split``, ``softmax`` composites, subtraction of a scalar,
...) is built from these in tensor.py and gets its gradient for free.
"""

import contextlib
import threading
import weakref

import numpy as np

from . import kernels, scan_kernels
from .autograd import Function, OuterProductSum


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes numpy broadcasting added or stretched to reach ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class _Binary(Function):
    """Elementwise op of two broadcastable inputs."""

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        a, b = arrays
        return (f"{cls.op_name()}: shapes {a.shape} and {b.shape} cannot be broadcast together "
                "(numpy rule: aligned from the right, each dimension equal or 1)")


# --- arithmetic ----------------------------------------------------------------------------

class Add(_Binary):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        sa, sb = self.shapes
        return (unbroadcast(g, sa) if self.needs_input_grad[0] else None,
                unbroadcast(g, sb) if self.needs_input_grad[1] else None)


class Sub(_Binary):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        sa, sb = self.shapes
        return (unbroadcast(g, sa) if self.needs_input_grad[0] else None,
                unbroadcast(-g, sb) if self.needs_input_grad[1] else None)


class Mul(_Binary):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        return (unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None,
                unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None)


class Div(_Binary):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a / b
        return self.out

    def backward(self, g):
        a, b = self.a, self.b
        return (unbroadcast(g / b, a.shape) if self.needs_input_grad[0] else None,
                unbroadcast(kernels.div_rhs_backward(g, self.out, b), b.shape)
                if self.needs_input_grad[1] else None)


class Pow(_Binary):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a ** b
        return self.out

    def backward(self, g):
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(g * b * a ** (b - 1), a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(g * self.out * np.log(a), b.shape)
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


# Below this many multiply-adds per use (K * M * N), a weight's product is cheaper to do at
# once than to defer: the bookkeeping and the final stacking cost more than the small GEMMs
# (measured: the LSTM at B=8, T=2000 ~4% slower deferred; at B=64, H=512 5-8% faster).
DEFER_WEIGHT_GRAD_MIN_WORK = 2 ** 18


def _weight_grad(a, b):
    """``a.T @ b`` (a (K, M), b (K, N)): the gradient of a weight, one term of its sum over uses."""
    if a.shape[0] * a.shape[1] * b.shape[1] < DEFER_WEIGHT_GRAD_MIN_WORK:
        return a.T @ b
    return OuterProductSum(a, b)


class MatMul(Function):
    """``a @ b`` with numpy semantics: 2-D, 1-D operands, and batched (..., n, k) @ (..., k, m)."""

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        a, b = arrays
        if a.ndim == 0 or b.ndim == 0:
            return f"matmul: shapes {a.shape} and {b.shape}: matmul needs at least 1-D operands"
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            dim_b = 0 if b.ndim == 1 else b.ndim - 2
            return (f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                    f"{ka} (dim {a.ndim - 1}) != {kb} (dim {dim_b})")
        return (f"matmul: batch dimensions of shapes {a.shape} and {b.shape} cannot be "
                "broadcast together")

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        if a.ndim == 2 and b.ndim == 2:
            return (g @ b.T if need_a else None, _weight_grad(a, g) if need_b else None)
        if b.ndim == 2 and a.ndim > 2:
            # (..., n, k) @ (k, m): fold the batch into rows so gb is one BLAS call.
            ga = g @ b.T if need_a else None
            gb = _weight_grad(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])) if need_b else None
            return ga, gb
        # General case: lift 1-D operands to matrices, then reduce the broadcast batch dims.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # b's axis first: for 1-D @ 1-D, g is 0-d and has no axis -2 until it has one.
        g2 = g
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        ga = gb = None
        if need_a:
            ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if need_b:
            gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


_unroll = threading.local()     # .transposed: id(W) -> (weakref to W, W.T as a C array or None)


@contextlib.contextmanager
def reuse_transposed_weights():
    """Inside this block ``linear`` makes each weight's transpose contiguous once and reuses it.

    ``x @ W.T`` hands BLAS a transposed view of W, and OpenBLAS's sgemm runs that 20-45%
    slower than the same product with a contiguous ``W.T`` at RNN sizes (B, I, 4H) =
    (32, 64, 512) .. (64, 512, 2048); see benchmarks/README.md. An unroll uses the same W
    at every step, so one copy per sequence pays for itself (made at a weight's second use:
    an array used once, e.g. a weight computed afresh each step, is never copied). Unroll
    wraps its loop in this; weights must not change in place inside the block (nothing but
    the cell runs there).
    """
    outer = getattr(_unroll, "transposed", None)
    if outer is None:
        _unroll.transposed = {}
    try:
        yield
    finally:
        if outer is None:
            _unroll.transposed = None       # drop the copies with the unroll


def _transposed(w):
    """``w.T``: inside reuse_transposed_weights a cached contiguous copy, else the view."""
    cache = getattr(_unroll, "transposed", None)
    if cache is None:
        return w.T
    entry = cache.get(id(w))
    if entry is None or entry[0]() is not w:          # first use (or a dead array's id)
        cache[id(w)] = (weakref.ref(w), None)
        return w.T
    if entry[1] is None:                               # second use: now the copy pays
        entry = cache[id(w)] = (entry[0], np.ascontiguousarray(w.T))
    return entry[1]


class Linear(Function):
    """``x @ W.T + b`` (PyTorch's ``F.linear``): one node instead of three, since every
    recurrent step does it twice. x (..., I), W (O, I), b (O,)."""

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        x, w = arrays[0], arrays[1]
        b = f" and bias {arrays[2].shape}" if len(arrays) > 2 else ""
        return (f"linear: input of shape {x.shape} does not fit weight of shape {w.shape}{b}: "
                f"expected input (..., {w.shape[-1] if w.ndim else '?'}), weight (out, in), "
                "bias (out,)")

    def forward(self, x, w, b=None):
        if w.ndim != 2 or x.shape[-1:] != w.shape[1:] or (b is not None and b.shape != w.shape[:1]):
            raise ValueError("shape mismatch")
        self.x, self.w = x, w
        out = x @ _transposed(w)
        if b is not None:
            out += b
        return out

    def backward(self, g):
        x, w = self.x, self.w
        need = self.needs_input_grad
        gx = g @ w if need[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = _weight_grad(g2, x.reshape(-1, x.shape[-1])) if need[1] else None
        if len(need) > 2:
            return gx, gw, (g2.sum(axis=0) if need[2] else None)
        return gx, gw


# --- pointwise -------------------------------------------------------------------------------

class Tanh(Function):
    def forward(self, a):
        self.out = np.tanh(a)
        return self.out

    def backward(self, g):
        return (kernels.tanh_backward(g, self.out),)


class Sigmoid(Function):
    def forward(self, a):
        self.out = kernels.sigmoid(a) if a.dtype.kind == "f" else kernels.sigmoid(a.astype(np.float64))
        return self.out

    def backward(self, g):
        return (kernels.sigmoid_backward(g, self.out),)


class Relu(Function):
    def forward(self, a):
        self.a = a
        return np.maximum(a, 0)

    def backward(self, g):
        return (kernels.relu_backward(g, self.a),)


class Exp(Function):
    def forward(self, a):
        self.out = np.exp(a)
        return self.out

    def backward(self, g):
        return (g * self.out,)


class Log(Function):
    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, g):
        return (g / self.a,)


class Sqrt(Function):
    def forward(self, a):
        self.out = np.sqrt(a)
        return self.out

    def backward(self, g):
        return (kernels.sqrt_backward(g, self.out),)


class Abs(Function):
    def forward(self, a):
        self.a = a
        return np.abs(a)

    def backward(self, g):
        return (g * np.sign(self.a),)


# --- reductions ----------------------------------------------------------------------------

def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of bounds for an array of dimension {ndim}")
        out.append(int(ax) % max(ndim, 1))
    return tuple(out)


def _expand_reduced(g, shape, axes, keepdims):
    """Put back the reduced axes of a gradient so it broadcasts against the input."""
    if not keepdims and len(shape):
        g = np.expand_dims(g, axes)
    return g


class Sum(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"sum: cannot reduce shape {arrays[0].shape} over axis={attrs.get('axis')}: {exc}"

    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalize_axis(axis, a.ndim)
        self.keepdims = keepdims
        return np.sum(a, axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        g = _expand_reduced(g, self.shape, self.axes, self.keepdims)
        return (np.broadcast_to(g, self.shape),)


class Max(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"max: cannot reduce shape {arrays[0].shape} over axis={attrs.get('axis')}: {exc}"

    def forward(self, a, axis=None, keepdims=False):
        self.a = a
        self.axes = _normalize_axis(axis, a.ndim)
        self.keepdims = keepdims
        self.out = np.max(a, axis=self.axes, keepdims=True)
        return self.out if keepdims else np.squeeze(self.out, axis=self.axes)

    def backward(self, g):
        # Ties share the gradient equally (the subgradient PyTorch's amax uses).
        mask = self.a == self.out
        count = mask.sum(axis=self.axes, keepdims=True)
        g = _expand_reduced(g, self.a.shape, self.axes, self.keepdims)
        return ((mask * (g / count)).astype(self.a.dtype, copy=False),)


# --- shape ----------------------------------------------------------------------------------

class Cast(Function):
    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return (g.astype(self.dtype),)


class Reshape(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return (f"reshape: cannot reshape shape {arrays[0].shape} ({arrays[0].size} elements) "
                f"into {attrs['shape']}")

    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return (g.reshape(self.shape),)


class Transpose(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return (f"transpose: axes {attrs['axes']} are not a permutation of the "
                f"{arrays[0].ndim} axes of shape {arrays[0].shape}")

    def forward(self, a, axes):
        out = np.transpose(a, axes)   # validates axes
        # backward's argsort inverts the permutation only when the axes are non-negative
        self.axes = tuple(int(ax) % a.ndim for ax in axes)
        return out

    def backward(self, g):
        return (np.transpose(g, np.argsort(self.axes)),)


def _has_advanced_index(index):
    return any(isinstance(i, (np.ndarray, list)) for i in index)


class GetItem(Function):
    name = "getitem"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"getitem: index {attrs['index']!r} is invalid for shape {arrays[0].shape}: {exc}"

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, g):
        out = np.zeros(self.shape, dtype=self.dtype)
        if _has_advanced_index(self.index):
            np.add.at(out, self.index, g)   # repeated indices (an embedding row used twice) add up
        else:
            out[self.index] = g
        return (out,)


class Cat(Function):
    name = "cat"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        shapes = ", ".join(str(a.shape) for a in arrays)
        return (f"cat: shapes {shapes} cannot be concatenated along axis {attrs['axis']}: "
                "all dimensions except that axis must match")

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return np.concatenate(arrays, axis=axis)

    def backward(self, g):
        bounds = np.cumsum(self.sizes)[:-1]
        parts = np.split(g, bounds, axis=self.axis)
        return tuple(p if need else None for p, need in zip(parts, self.needs_input_grad))


class Stack(Function):
    name = "stack"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        shapes = ", ".join(str(a.shape) for a in arrays)
        return f"stack: all inputs must have the same shape, got {shapes}"

    def forward(self, *arrays, axis=0):
        self.axis = axis
        return np.stack(arrays, axis=axis)

    def backward(self, g):
        parts = np.moveaxis(g, self.axis, 0)
        return tuple(parts[i] if need else None for i, need in enumerate(self.needs_input_grad))


class Split(Function):
    """Pieces of the given sizes along an axis: one node with one output per piece."""

    def forward(self, a, sizes, axis):
        self.shape, self.dtype, self.axis, self.sizes = a.shape, a.dtype, axis, sizes
        # Plain slicing: np.split's Python-level bookkeeping costs more than the views it makes.
        index = [slice(None)] * a.ndim
        pieces = []
        start = 0
        for size in sizes:
            index[axis] = slice(start, start + size)
            pieces.append(a[tuple(index)])
            start += size
        return tuple(pieces)

    def backward(self, *grads):
        parts = []
        for g, size in zip(grads, self.sizes):
            if g is None:       # an unused piece (e.g. a gate nobody read) gets zero gradient
                shape = self.shape[:self.axis] + (size,) + self.shape[self.axis + 1:]
                g = np.zeros(shape, dtype=self.dtype)
            parts.append(g)
        return (np.concatenate(parts, axis=self.axis),)


class Unbind(Function):
    """The slices along an axis (``xs`` -> ``x_1 .. x_T``): one node, T outputs."""

    def forward(self, a, axis):
        self.shape, self.dtype, self.axis = a.shape, a.dtype, axis
        moved = np.moveaxis(a, axis, 0)
        return tuple(moved[i] for i in range(moved.shape[0]))

    def backward(self, *grads):
        # Zero-fill only if some slice gets no gradient; otherwise every element is written.
        every_slice = all(g is not None for g in grads)
        out = (np.empty if every_slice else np.zeros)(self.shape, dtype=self.dtype)
        moved = np.moveaxis(out, self.axis, 0)      # a view: writes land in out
        for i, g in enumerate(grads):
            if g is not None:
                moved[i] = g
        return (out,)


class Where(Function):
    """``where(mask, a, b)``; the mask is data, not differentiable."""

    name = "where"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        m, a, b = arrays
        return (f"where: mask {m.shape}, a {a.shape} and b {b.shape} cannot be broadcast "
                "together")

    def forward(self, mask, a, b):
        self.mask = mask.astype(bool, copy=False)
        self.shapes = a.shape, b.shape
        return np.where(self.mask, a, b)

    def backward(self, g):
        zero = np.zeros((), dtype=g.dtype)
        sa, sb = self.shapes
        return (None,
                unbroadcast(np.where(self.mask, g, zero), sa) if self.needs_input_grad[1] else None,
                unbroadcast(np.where(self.mask, zero, g), sb) if self.needs_input_grad[2] else None)


# --- numerically stable softmax family ---------------------------------------------------

class Softmax(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"softmax: invalid axis {attrs.get('axis')} for shape {arrays[0].shape}"

    def forward(self, a, axis=-1):
        self.axis = axis
        e = np.exp(a - a.max(axis=axis, keepdims=True))
        self.out = e / e.sum(axis=axis, keepdims=True)
        return self.out

    def backward(self, g):
        y = self.out
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    name = "log_softmax"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"log_softmax: invalid axis {attrs.get('axis')} for shape {arrays[0].shape}"

    def forward(self, a, axis=-1):
        self.axis = axis
        shifted = a - a.max(axis=axis, keepdims=True)
        self.out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return self.out

    def backward(self, g):
        return (g - np.exp(self.out) * g.sum(axis=self.axis, keepdims=True),)


# --- scans ------------------------------------------------------------------------------------

class LinearScan(Function):
    r"""All states of the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` over axis 0.

    a, b (T, B, H), either broadcasting against the other (a decay shared over the batch:
    (T, 1, H); a constant decay: (1, B, H)); h0 (B, H), zero when absent. ``reverse=True``
    runs from the end: ``h_t = a_t * h_{t+1} + b_t``, with h0 entering at t = T-1.

    The backward is the same scan run the other way in time on the gradient
    (scan_kernels.scan_backward: the rule, or one fused Numba pass):

    .. math::
        \bar h_t = g_t + a_{t+1} \bar h_{t+1}, \quad \bar a_t = \bar h_t h_{t-1}, \quad
        \bar b_t = \bar h_t, \quad \bar h_0 = a_1 \bar h_1

    (indices counted in the direction of the scan).
    """

    name = "linear_scan"

    def forward(self, a, b, h0=None, reverse=False):
        self.shape = shape = np.broadcast_shapes(a.shape, b.shape)
        T, B, H = shape
        dtype = np.result_type(a, b) if h0 is None else np.result_type(a, b, h0)
        self.a_shape, self.b_shape, self.reverse = a.shape, b.shape, reverse
        self.a = _as_columns(a, shape, dtype)
        b = _as_columns(b, shape, dtype)
        self.h0 = (np.zeros(B * H, dtype) if h0 is None
                   else np.ascontiguousarray(h0, dtype=dtype).reshape(B * H))
        self.h = scan_kernels.scan(self.a, b, self.h0, reverse)
        return self.h.reshape(shape)

    def backward(self, g):
        g = np.ascontiguousarray(g, dtype=self.h.dtype).reshape(self.h.shape)
        dh, da, dh0 = scan_kernels.scan_backward(self.a, g, self.h, self.h0, self.reverse)
        need = self.needs_input_grad
        grads = (unbroadcast(da.reshape(self.shape), self.a_shape) if need[0] else None,
                 unbroadcast(dh.reshape(self.shape), self.b_shape) if need[1] else None)
        if len(need) == 2:
            return grads
        return grads + (dh0.reshape(self.shape[1:]) if need[2] else None,)


def _as_columns(x, shape, dtype):
    """``x`` broadcast to (T, B, H) as a C-contiguous (T, B * H) array of ``dtype``."""
    x = np.broadcast_to(x.astype(dtype, copy=False), shape)
    return np.ascontiguousarray(x).reshape(shape[0], -1)
