"""The op catalogue: each primitive is one `Function`, its forward beside its backward.

Forward receives numpy arrays and returns one (or a tuple: ``Split``, ``Unbind``); backward
receives the output gradient and returns one gradient per input, reduced to that input's shape
(``unbroadcast``). ``Softmax`` and ``LogSoftmax`` are primitives too, for a stable forward and
a one-line backward. What is not here (``mean``, ``chunk``, subtraction of a scalar, ...) is
built from these in tensor.py and gets its gradient for free.

An op whose inputs can be wrong says how in ``input_problem``, asked only after its forward
failed (see `Function.input_problem`): a failure the inputs explain becomes a ``ShapeError``
naming the op and the shapes; any other is a bug and surfaces as itself.
"""

import numpy as np

from . import kernels, scan_kernels
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

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        if a.ndim == 2 and b.ndim == 2:
            return (g @ b.T if need_a else None, weight_grad(a, g) if need_b else None)
        if b.ndim == 2 and a.ndim > 2:
            # (..., n, k) @ (k, m): fold the batch into rows so gb is one BLAS call.
            ga = g @ b.T if need_a else None
            gb = weight_grad(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])) if need_b else None
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


class Linear(Function):
    """``x @ W.T + b`` (PyTorch's ``F.linear``): one node instead of three, since every
    recurrent step does it twice. x (..., I), W (O, I), b (O,)."""

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
        g2 = g.reshape(-1, g.shape[-1])
        gw = weight_grad(g2, x.reshape(-1, x.shape[-1])) if need[1] else None
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


def _expand_reduced(g, shape, axes, keepdims):
    """Put back the reduced axes of a gradient so it broadcasts against the input."""
    if not keepdims and len(shape):
        g = np.expand_dims(g, axes)
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
        g = _expand_reduced(g, self.shape, self.axes, self.keepdims)
        return (np.broadcast_to(g, self.shape),)


class Max(Function):
    @classmethod
    def input_problem(cls, a, axis=None, keepdims=False):
        return _reduction_problem(a, axis)

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
        return (np.transpose(g, np.argsort(self.axes)),)


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
        out = np.zeros(self.shape, dtype=self.dtype)
        if _has_advanced_index(self.index):
            np.add.at(out, self.index, g)   # repeated indices (an embedding row used twice) add up
        else:
            out[self.index] = g
        return (out,)


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
        bounds = np.cumsum(self.sizes)[:-1]
        parts = np.split(g, bounds, axis=self.axis)
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
        return (None,
                unbroadcast(np.where(self.mask, g, zero), sa) if self.needs_input_grad[1] else None,
                unbroadcast(np.where(self.mask, zero, g), sb) if self.needs_input_grad[2] else None)


# --- numerically stable softmax family ---------------------------------------------------

def _axis_problem(a, axis):
    if not isinstance(axis, (int, np.integer)) or not -a.ndim <= axis < max(a.ndim, 1):
        return f"invalid axis {axis} for shape {a.shape}"
    return None


class Softmax(Function):
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

    @classmethod
    def input_problem(cls, a, axis=-1):
        return _axis_problem(a, axis)

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
