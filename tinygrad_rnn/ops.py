"""The op catalogue: each primitive is one `Function`, its forward beside its backward.

Forward receives numpy arrays and returns one (or a tuple: ``Split``, ``Unbind``); backward
receives the output gradient and returns one gradient per input, reduced to that input's shape
(``unbroadcast``). ``Softmax`` and ``LogSoftmax`` are primitives too, for a stable forward and
a one-line backward. What is not here (``mean``, ``chunk``, subtraction of a scalar, ...) is
built from these in tensor.py and gets its gradient for free.

An op whose inputs can be wrong says how in ``input_problem``, asked only after its forward
failed (see `Function.input_problem`): a failure the inputs explain becomes a ``ShapeError``
naming the op and the shapes; any other is a bug and surfaces as itself.

Each backward is one derivative rule with two interpreters. It is written with operations
that numpy arrays and Tensors both have (``*``, ``-``, ``@``, ``.T``, ``.sum(axis)``,
``.reshape``) and, for the rest, with ``self.xp``: `ArrayMath` on the first-order path (the
Numba kernels, numpy), `TensorMath` under ``create_graph=True``, where the walk hands the
rule the node's saved inputs and output as the Tensors of the graph (``saved_inputs``,
``saved_output``), so the gradient it returns is itself on the tape.
"""

import numpy as np

from . import autograd, kernels, scan_kernels
from .autograd import Function, ShapeError
from .engine.transposed import transposed
from .engine.weight_grads import weight_grad


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


def _broadcast_problem(*shapes):
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        return (f"shapes {' and '.join(map(str, shapes))} cannot be broadcast together "
                "(numpy rule: aligned from the right, each dimension equal or 1)")
    return None


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

    weight_grad = staticmethod(weight_grad)

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

    @staticmethod
    def linear_scan_backward(node, g):
        """(dh, da, dh0) of a `LinearScan` node, each (T, B, H) / (B, H): one fused Numba pass
        (scan_kernels.scan_backward)."""
        g = np.ascontiguousarray(g, dtype=node.h.dtype).reshape(node.h.shape)
        dh, da, dh0 = scan_kernels.scan_backward(node.a, g, node.h, node.h0, node.reverse)
        return dh.reshape(node.shape), da.reshape(node.shape), dh0.reshape(node.shape[1:])


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

    weight_grad = staticmethod(weight_grad)     # deferred with Tensor factors: OuterProductSum

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
        mask = mask.data if isinstance(mask, autograd.Tensor) else mask
        like = a if isinstance(a, autograd.Tensor) else b
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

    @staticmethod
    def linear_scan_backward(node, g):
        """scan_kernels.scan_backward_reference's formula with ops: ``dh`` is the scan run the
        other way in time on ``a`` shifted one step, ``da = dh * h_prev``, ``dh0 = a_1 dh_1``.
        The scan inside is a LinearScan node again, so every order is recorded."""
        T, B, H = node.shape
        a = node.a_in if node.a_in.shape == node.shape else TensorMath.broadcast_to(node.a_in, node.shape)
        zero = TensorMath.zeros((1, B, H), g.dtype)
        h0 = zero if node.h0_in is None else node.h0_in.reshape(1, B, H)
        h = node.out
        if node.reverse:
            a_next, h_prev, first = Cat.apply(zero, a[:-1], axis=0), Cat.apply(h[1:], h0, axis=0), T - 1
        else:
            a_next, h_prev, first = Cat.apply(a[1:], zero, axis=0), Cat.apply(h0, h[:-1], axis=0), 0
        dh = LinearScan.apply(a_next, g, reverse=not node.reverse)
        return dh, dh * h_prev, a[first] * dh[first]


Function.xp = ArrayMath     # the first-order interpreter; higher_order.graph_rule swaps in TensorMath


class _Binary(Function):
    """Elementwise op of two broadcastable inputs."""

    @classmethod
    def input_problem(cls, a, b):
        return _broadcast_problem(a.shape, b.shape)


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


class MatMul(Function):
    """``a @ b`` with numpy semantics: 2-D, 1-D operands, and batched (..., n, k) @ (..., k, m)."""

    @classmethod
    def input_problem(cls, a, b):
        if a.ndim == 0 or b.ndim == 0:
            return f"shapes {a.shape} and {b.shape}: matmul needs at least 1-D operands"
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            dim_b = 0 if b.ndim == 1 else b.ndim - 2
            return (f"shapes {a.shape} and {b.shape} are not aligned: "
                    f"{ka} (dim {a.ndim - 1}) != {kb} (dim {dim_b})")
        if _broadcast_problem(a.shape[:-2], b.shape[:-2]):
            return f"batch dimensions of shapes {a.shape} and {b.shape} cannot be broadcast together"
        return None

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


def _rows(x):
    """``x`` as a matrix of rows (..., n) -> (-1, n); a 2-D ``x`` as itself (on Tensors a
    reshape is a node of the graph)."""
    return x if x.ndim == 2 else x.reshape(-1, x.shape[-1])


class Linear(Function):
    """``x @ W.T + b`` (PyTorch's ``F.linear``): one node instead of three, since every
    recurrent step does it twice. x (..., I), W (O, I), b (O,)."""

    saved_inputs = ("x", "w")

    def forward(self, x, w, b=None):
        # Checked before computing: a bias of shape (1,) would broadcast silently.
        if w.ndim != 2 or x.shape[-1:] != w.shape[1:] or (b is not None and b.shape != w.shape[:1]):
            bias = "" if b is None else f" and bias {b.shape}"
            raise ShapeError(f"linear: input of shape {x.shape} does not fit weight of shape "
                             f"{w.shape}{bias}: expected input (..., {w.shape[-1] if w.ndim else '?'}),"
                             " weight (out, in), bias (out,)")
        self.x, self.w = x, w
        out = x @ transposed(w)     # inside an Unroll, a contiguous copy: engine/transposed.py
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
        if not isinstance(ax, (int, np.integer)):
            raise TypeError(f"axis {ax!r} is not an integer")
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of bounds for an array of dimension {ndim}")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"axis {axis} repeats an axis")
    return tuple(out)


def _reduction_problem(a, axis):
    try:
        _normalize_axis(axis, a.ndim)
    except (TypeError, ValueError) as exc:
        return f"cannot reduce shape {a.shape} over axis={axis}: {exc}"
    return None


def _expand_reduced(xp, g, shape, axes, keepdims):
    """Put back the reduced axes of a gradient so it broadcasts against the input."""
    if not keepdims and len(shape):
        g = xp.expand_dims(g, axes)
    return g


class Sum(Function):
    @classmethod
    def input_problem(cls, a, axis=None, keepdims=False):
        return _reduction_problem(a, axis)

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
    def input_problem(cls, a, axis=None, keepdims=False):
        return _reduction_problem(a, axis)

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
    def input_problem(cls, a, shape):
        sizes = [n for n in shape if n != -1]
        if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in sizes) or len(sizes) < len(shape) - 1:
            return f"{shape} is not a shape (non-negative integers and at most one -1)"
        known = int(np.prod(sizes))
        if len(sizes) < len(shape):         # one -1: it takes what the others leave
            fits = known > 0 and a.size % known == 0
        else:
            fits = a.size == known
        if not fits:
            return f"cannot reshape shape {a.shape} ({a.size} elements) into {shape}"
        return None

    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return (g.reshape(self.shape),)


class Transpose(Function):
    @classmethod
    def input_problem(cls, a, axes):
        in_range = all(isinstance(ax, (int, np.integer)) and -a.ndim <= ax < a.ndim for ax in axes)
        if not in_range or sorted(int(ax) % a.ndim for ax in axes) != list(range(a.ndim)):
            return f"axes {axes} are not a permutation of the {a.ndim} axes of shape {a.shape}"
        return None

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
    def input_problem(cls, a, index):
        try:                    # numpy's own rules are the check: out of range, too many, ...
            a[index]
        except (IndexError, TypeError, ValueError) as exc:
            return f"index {index!r} is invalid for shape {a.shape}: {exc}"
        return None

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
    def input_problem(cls, *arrays, axis=0):
        shapes = ", ".join(str(a.shape) for a in arrays)
        ndim = arrays[0].ndim
        if not isinstance(axis, (int, np.integer)) or ndim == 0 or not -ndim <= axis < ndim:
            return f"axis {axis} is out of range for shapes {shapes}"
        rest = {a.shape[:axis % ndim] + a.shape[axis % ndim + 1:] if a.ndim == ndim else None
                for a in arrays}
        if len(rest) > 1:
            return (f"shapes {shapes} cannot be concatenated along axis {axis}: "
                    "all dimensions except that axis must match")
        return None

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
    def input_problem(cls, *arrays, axis=0):
        shapes = ", ".join(str(a.shape) for a in arrays)
        if len({a.shape for a in arrays}) > 1:
            return f"all inputs must have the same shape, got {shapes}"
        if not isinstance(axis, (int, np.integer)) or not -arrays[0].ndim - 1 <= axis <= arrays[0].ndim:
            return f"axis {axis} is out of range for stacking shapes {shapes}"
        return None

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
    def input_problem(cls, mask, a, b):
        if _broadcast_problem(mask.shape, a.shape, b.shape):
            return f"mask {mask.shape}, a {a.shape} and b {b.shape} cannot be broadcast together"
        return None

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

def _axis_problem(a, axis):
    if not isinstance(axis, (int, np.integer)) or not -a.ndim <= axis < max(a.ndim, 1):
        return f"invalid axis {axis} for shape {a.shape}"
    return None


class Softmax(Function):
    saved_output = "out"

    @classmethod
    def input_problem(cls, a, axis=-1):
        return _axis_problem(a, axis)

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
    def input_problem(cls, a, axis=-1):
        return _axis_problem(a, axis)

    def forward(self, a, axis=-1):
        self.axis = axis
        shifted = a - a.max(axis=axis, keepdims=True)
        self.out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return self.out

    def backward(self, g):
        return (g - self.xp.exp(self.out) * g.sum(axis=self.axis, keepdims=True),)


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
    saved_inputs, saved_output = ("a_in", None, "h0_in"), "out"

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
        self.a_in, self.h0_in = a, h0      # as given: the Tensor path's names for the inputs
        self.out = self.h.reshape(shape)
        return self.out

    def backward(self, g):
        dh, da, dh0 = self.xp.linear_scan_backward(self, g)
        need = self.needs_input_grad
        grads = (unbroadcast(da, self.a_shape) if need[0] else None,
                 unbroadcast(dh, self.b_shape) if need[1] else None)
        if len(need) == 2:
            return grads
        return grads + (dh0 if need[2] else None,)


def _as_columns(x, shape, dtype):
    """``x`` broadcast to (T, B, H) as a C-contiguous (T, B * H) array of ``dtype``."""
    x = np.broadcast_to(x.astype(dtype, copy=False), shape)
    return np.ascontiguousarray(x).reshape(shape[0], -1)


# Every rule above is written with ``self.xp`` and the arrays' and Tensors' common operations,
# so create_graph may run it on Tensors (a user's own Function opts in the same way); an op
# that names no saved inputs reads none (only shapes).
for _op in list(globals().values()):
    if isinstance(_op, type) and issubclass(_op, Function) and _op.__module__ == __name__:
        _op.differentiable_backward = True
        if _op.saved_inputs is None:
            _op.saved_inputs = ()
