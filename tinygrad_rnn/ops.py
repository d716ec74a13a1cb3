"""The op catalogue: each primitive is one `Function`, its forward beside its backward.

Forward receives numpy arrays and returns one; backward receives the output gradient and
returns one gradient per input, reduced to that input's shape (``unbroadcast``). Anything
not here (``mean``, ``chunk``, ``split``, ``softmax`` composites, subtraction of a scalar,
...) is built from these in tensor.py and gets its gradient for free.

Each backward is one derivative rule with two interpreters. It is written with operations
that numpy arrays and Tensors both have (``*``, ``-``, ``@``, ``.T``, ``.sum(axis)``,
``.reshape``) and, for the rest, with ``self.xp``: `ArrayMath` on the first-order path (the
Numba kernels, numpy), `TensorMath` under ``create_graph=True``, where the walk hands the
rule the node's saved inputs and output as the Tensors of the graph (``saved_inputs``,
``saved_output``), so the gradient it returns is itself on the tape.
"""

import contextlib
import threading
import weakref

import numpy as np

from . import autograd, kernels
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


def _stack_slices(shape, dtype, axis, grads):
    """Slice gradients (None: zero) written into one array of ``shape`` along ``axis``."""
    # Zero-fill only if some slice gets no gradient; otherwise every element is written.
    every_slice = all(g is not None for g in grads)
    out = (np.empty if every_slice else np.zeros)(shape, dtype=dtype)
    moved = np.moveaxis(out, axis, 0)      # a view: writes land in out
    for i, g in enumerate(grads):
        if g is not None:
            moved[i] = g
    return out


def _slices(a, sizes, axis):
    """The pieces of ``a`` of the given sizes along ``axis`` (views; Split's forward, Cat's
    gradient). Plain slicing: np.split's Python-level bookkeeping costs more than the views."""
    index = [slice(None)] * a.ndim
    pieces = []
    start = 0
    for size in sizes:
        index[axis] = slice(start, start + size)
        pieces.append(a[tuple(index)])
        start += size
    return pieces


def _scatter_add(g, shape, dtype, index):
    """Zeros of ``shape`` with ``g`` added at ``index``: the adjoint of ``a[index]``."""
    out = np.zeros(shape, dtype=dtype)
    if _has_advanced_index(index):
        np.add.at(out, index, g)   # repeated indices (an embedding row used twice) add up
    else:
        out[index] = g
    return out


class ArrayMath:
    """The rules' vocabulary on numpy arrays: the first-order path, fused kernels included.
    The kernels are looked up at each call, so ``TINYGRAD_RNN_NUMBA=0`` and the tests'
    rebinding of ``kernels.*`` reach the rules."""

    @staticmethod
    def tanh_backward(g, y):
        return kernels.tanh_backward(g, y)

    @staticmethod
    def sigmoid_backward(g, s):
        return kernels.sigmoid_backward(g, s)

    @staticmethod
    def relu_backward(g, x):
        return kernels.relu_backward(g, x)

    @staticmethod
    def sqrt_backward(g, y):
        return kernels.sqrt_backward(g, y)

    @staticmethod
    def div_rhs_backward(g, out, b):
        return kernels.div_rhs_backward(g, out, b)

    @staticmethod
    def weight_grad(a, b):
        return _weight_grad(a, b)

    log, exp, sign, where = np.log, np.exp, np.sign, np.where
    expand_dims, swapaxes, broadcast_to = np.expand_dims, np.swapaxes, np.broadcast_to
    zeros, concatenate = np.zeros, np.concatenate
    stack_slices, scatter_add = staticmethod(_stack_slices), staticmethod(_scatter_add)

    @staticmethod
    def split(g, sizes, axis):
        return _slices(g, sizes, axis)

    @staticmethod
    def unstack(g, axis):
        moved = np.moveaxis(g, axis, 0)
        return [moved[i] for i in range(moved.shape[0])]


def _constant(array):
    return autograd._output(array, None, False)


class TensorMath:
    """The same vocabulary on Tensors, each word composed from the catalogue's ops, so a
    rule run here records the gradient's computation. The kernels' formulas are the numpy
    references of kernels.py, which the Numba kernels are tested against."""

    tanh_backward = staticmethod(kernels.numpy_kernels.tanh_backward)        # g * (1 - y*y)
    sigmoid_backward = staticmethod(kernels.numpy_kernels.sigmoid_backward)  # g * s * (1 - s)
    sqrt_backward = staticmethod(kernels.numpy_kernels.sqrt_backward)        # g * 0.5 / y
    div_rhs_backward = staticmethod(kernels.numpy_kernels.div_rhs_backward)  # -g * out / b

    @staticmethod
    def relu_backward(g, x):
        return TensorMath.where(x.data > 0, g, 0.0)

    @staticmethod
    def weight_grad(a, b):
        return _weight_grad(a, b)       # deferred with Tensor factors: see OuterProductSum

    @staticmethod
    def log(x):
        return x.log()

    @staticmethod
    def exp(x):
        return x.exp()

    @staticmethod
    def sign(x):
        return _constant(np.sign(x.data))           # piecewise constant: no gradient

    @staticmethod
    def where(mask, a, b):
        mask = mask.data if isinstance(mask, autograd._tensor_class) else mask
        like = a if isinstance(a, autograd._tensor_class) else b
        return Where.apply(_constant(mask), like._operand(a, "where"), like._operand(b, "where"))

    @staticmethod
    def expand_dims(g, axes):
        return g.reshape(np.expand_dims(np.empty(g.shape, dtype=bool), axes).shape)

    @staticmethod
    def swapaxes(x, axis1, axis2):
        axes = list(range(x.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return x.transpose(tuple(axes))

    @staticmethod
    def broadcast_to(g, shape):
        return g + _constant(np.zeros(shape, dtype=g.dtype))   # Add's rule sums it back

    @staticmethod
    def zeros(shape, dtype):
        return _constant(np.zeros(shape, dtype=dtype))

    @staticmethod
    def concatenate(parts, axis):
        return Cat.apply(*parts, axis=axis)

    @staticmethod
    def stack_slices(shape, dtype, axis, grads):
        piece = shape[:axis] + shape[axis + 1:]
        parts = [g if g is not None else TensorMath.zeros(piece, dtype) for g in grads]
        return Stack.apply(*parts, axis=axis)

    @staticmethod
    def scatter_add(g, shape, dtype, index):
        return ScatterAdd.apply(g, shape=shape, dtype=dtype, index=index)

    @staticmethod
    def split(g, sizes, axis):
        return list(Split.apply(g, sizes=tuple(sizes), axis=axis))

    @staticmethod
    def unstack(g, axis):
        return list(Unbind.apply(g, axis=axis))


Function.xp = ArrayMath              # the first-order interpreter; _graph_rule swaps in TensorMath
autograd._tensor_math = TensorMath


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
    saved_inputs = ("a", "b")

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        return (unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None,
                unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None)


class Div(_Binary):
    saved_inputs, saved_output = (None, "b"), "out"

    def forward(self, a, b):
        self.a_shape, self.b = a.shape, b
        self.out = a / b
        return self.out

    def backward(self, g):
        b = self.b
        return (unbroadcast(g / b, self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(self.xp.div_rhs_backward(g, self.out, b), b.shape)
                if self.needs_input_grad[1] else None)


class Pow(_Binary):
    saved_inputs, saved_output = ("a", "b"), "out"

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
            gb = unbroadcast(g * self.out * self.xp.log(a), b.shape)
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

    saved_inputs = ("a", "b")

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b, xp = self.a, self.b, self.xp
        need_a, need_b = self.needs_input_grad
        if a.ndim == 2 and b.ndim == 2:
            return (g @ b.T if need_a else None, xp.weight_grad(a, g) if need_b else None)
        if b.ndim == 2 and a.ndim > 2:
            # (..., n, k) @ (k, m): fold the batch into rows so gb is one BLAS call.
            ga = g @ b.T if need_a else None
            gb = xp.weight_grad(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])) if need_b else None
            return ga, gb
        # General case: lift 1-D operands to matrices, then reduce the broadcast batch dims.
        a2 = xp.expand_dims(a, 0) if a.ndim == 1 else a
        b2 = xp.expand_dims(b, -1) if b.ndim == 1 else b
        # b's axis first: for 1-D @ 1-D, g is 0-d and has no axis -2 until it has one.
        g2 = g
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        ga = gb = None
        if need_a:
            ga = unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if need_b:
            gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
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


def _rows(x):
    """``x`` as a matrix of rows (..., n) -> (-1, n); a 2-D ``x`` as itself (on Tensors a
    reshape is a node of the graph)."""
    return x if x.ndim == 2 else x.reshape(-1, x.shape[-1])


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

    saved_inputs = ("x", "w")

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
        g2 = _rows(g)
        gw = self.xp.weight_grad(g2, _rows(x)) if need[1] else None
        if len(need) > 2:
            return gx, gw, (g2.sum(axis=0) if need[2] else None)
        return gx, gw


# --- pointwise -------------------------------------------------------------------------------

class Tanh(Function):
    saved_output = "out"

    def forward(self, a):
        self.out = np.tanh(a)
        return self.out

    def backward(self, g):
        return (self.xp.tanh_backward(g, self.out),)


class Sigmoid(Function):
    saved_output = "out"

    def forward(self, a):
        self.out = kernels.sigmoid(a) if a.dtype.kind == "f" else kernels.sigmoid(a.astype(np.float64))
        return self.out

    def backward(self, g):
        return (self.xp.sigmoid_backward(g, self.out),)


class Relu(Function):
    saved_inputs = ("a",)

    def forward(self, a):
        self.a = a
        return np.maximum(a, 0)

    def backward(self, g):
        return (self.xp.relu_backward(g, self.a),)


class Exp(Function):
    saved_output = "out"

    def forward(self, a):
        self.out = np.exp(a)
        return self.out

    def backward(self, g):
        return (g * self.out,)


class Log(Function):
    saved_inputs = ("a",)

    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, g):
        return (g / self.a,)


class Sqrt(Function):
    saved_output = "out"

    def forward(self, a):
        self.out = np.sqrt(a)
        return self.out

    def backward(self, g):
        return (self.xp.sqrt_backward(g, self.out),)


class Abs(Function):
    saved_inputs = ("a",)

    def forward(self, a):
        self.a = a
        return np.abs(a)

    def backward(self, g):
        return (g * self.xp.sign(self.a),)


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


def _expand_reduced(xp, g, shape, axes, keepdims):
    """Put back the reduced axes of a gradient so it broadcasts against the input."""
    if not keepdims and len(shape):
        g = xp.expand_dims(g, axes)
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
        g = _expand_reduced(self.xp, g, self.shape, self.axes, self.keepdims)
        return (self.xp.broadcast_to(g, self.shape),)


class Max(Function):
    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"max: cannot reduce shape {arrays[0].shape} over axis={attrs.get('axis')}: {exc}"

    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalize_axis(axis, a.ndim)
        self.keepdims = keepdims
        out = np.max(a, axis=self.axes, keepdims=True)
        # Ties share the gradient equally (the subgradient PyTorch's amax uses): a constant
        # weight per element, so the rule is linear in g and Max's second derivative is 0.
        winners = a == out
        self.share = winners / winners.sum(axis=self.axes, keepdims=True).astype(a.dtype)
        return out if keepdims else np.squeeze(out, axis=self.axes)

    def backward(self, g):
        g = _expand_reduced(self.xp, g, self.shape, self.axes, self.keepdims)
        return (g * self.share,)


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
        return (g.transpose(tuple(int(ax) for ax in np.argsort(self.axes))),)


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
        return (self.xp.scatter_add(g, self.shape, self.dtype, self.index),)


class ScatterAdd(Function):
    """Zeros of ``shape`` with ``g`` added at ``index``: getitem's gradient as an op, so that
    under ``create_graph`` it is on the tape (its own gradient is getitem again)."""

    name = "scatter_add"

    def forward(self, g, shape, dtype, index):
        self.index = index
        return _scatter_add(g, shape, dtype, index)

    def backward(self, g):
        return (g[self.index],)


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
        parts = self.xp.split(g, self.sizes, self.axis)
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
        parts = self.xp.unstack(g, self.axis)
        return tuple(part if need else None for part, need in zip(parts, self.needs_input_grad))


class Split(Function):
    """Pieces of the given sizes along an axis: one node with one output per piece."""

    def forward(self, a, sizes, axis):
        self.shape, self.dtype, self.axis, self.sizes = a.shape, a.dtype, axis, sizes
        return tuple(_slices(a, sizes, axis))

    def backward(self, *grads):
        parts = []
        for g, size in zip(grads, self.sizes):
            if g is None:       # an unused piece (e.g. a gate nobody read) gets zero gradient
                shape = self.shape[:self.axis] + (size,) + self.shape[self.axis + 1:]
                g = self.xp.zeros(shape, dtype=self.dtype)
            parts.append(g)
        return (self.xp.concatenate(parts, axis=self.axis),)


class Unbind(Function):
    """The slices along an axis (``xs`` -> ``x_1 .. x_T``): one node, T outputs."""

    def forward(self, a, axis):
        self.shape, self.dtype, self.axis = a.shape, a.dtype, axis
        moved = np.moveaxis(a, axis, 0)
        return tuple(moved[i] for i in range(moved.shape[0]))

    def backward(self, *grads):
        return (self.xp.stack_slices(self.shape, self.dtype, self.axis, grads),)


class Where(Function):
    """``where(mask, a, b)``; the mask is data, not differentiable."""

    name = "where"
    saved_inputs = ("mask", None, None)

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
        where = self.xp.where
        return (None,
                unbroadcast(where(self.mask, g, zero), sa) if self.needs_input_grad[1] else None,
                unbroadcast(where(self.mask, zero, g), sb) if self.needs_input_grad[2] else None)


# --- numerically stable softmax family ---------------------------------------------------

class Softmax(Function):
    saved_output = "out"

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
    saved_output = "out"

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        return f"log_softmax: invalid axis {attrs.get('axis')} for shape {arrays[0].shape}"

    def forward(self, a, axis=-1):
        self.axis = axis
        shifted = a - a.max(axis=axis, keepdims=True)
        self.out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return self.out

    def backward(self, g):
        return (g - self.xp.exp(self.out) * g.sum(axis=self.axis, keepdims=True),)


# Every rule above is written with ``self.xp`` and the arrays' and Tensors' common operations,
# so create_graph may run it on Tensors (a user's own Function opts in the same way); an op
# that names no saved inputs reads none (only shapes).
for _op in list(globals().values()):
    if isinstance(_op, type) and issubclass(_op, Function) and _op.__module__ == __name__:
        _op.differentiable_backward = True
        if _op.saved_inputs is None:
            _op.saved_inputs = ()
