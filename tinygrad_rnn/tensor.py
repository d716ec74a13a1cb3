"""Tensor: a numpy array, its gradient, and the tape node (``_ctx``) that produced it."""

import numbers

import numpy as np

from . import autograd, ops
from .autograd import ShapeError
from .autograd import backward as _backward_walk
from .dtypes import get_default_dtype
from .engine.fast_apply import apply_binary, apply_unary
from .engine.weight_grads import OuterProductSum
from .hooks import HookMethods
from .versions import InPlaceMethods

_OPERAND_TYPES = "a Tensor, a numpy array or a Python number"


def _binary_method(op, name, reflected=False):
    """``Tensor.__add__`` and friends: coerce a non-Tensor operand, then ``op`` (reflected:
    ``other op self``). Generated, since twelve methods share the pattern exactly; they call
    ``engine.fast_apply.apply_binary(op, ...)``, ``op.apply`` without its argument packing."""
    if reflected:
        def method(self, other):
            if type(other) is not Tensor:
                other = self._operand(other, name)
            return apply_binary(op, other, self)
    else:
        def method(self, other):
            if type(other) is not Tensor:
                other = self._operand(other, name)
            return apply_binary(op, self, other)
    dunder = "truediv" if name == "div" else name
    method.__name__ = f"__r{dunder}__" if reflected else f"__{dunder}__"
    return method


class Tensor(InPlaceMethods, HookMethods):
    """An n-dimensional array that records the ops applied to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` is anything numpy accepts.
    A numpy array keeps its dtype; Python floats become the default dtype (float64 unless
    ``tg.set_default_dtype`` changed it). Only floating tensors can require grad.
    In-place methods (``copy_``, ``zero_``, ``add_``, ``mul_``) and ``version`` come from
    versions.py, ``register_hook`` and ``retain_grad`` from hooks.py.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_index", "_hooks", "_retain", "name",
                 "grad_tensor", "_modified", "__weakref__")
    __array_priority__ = 1000   # numpy_array + tensor dispatches to Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is not None:
            data = np.asarray(data, dtype=np.dtype(dtype))
        elif isinstance(data, np.ndarray):
            pass
        else:
            if isinstance(data, (str, bytes, dict, set)) or data is None:
                raise TypeError(f"Tensor: cannot make a tensor from {type(data).__name__} "
                                f"{data!r:.60}; expected a number, a nested list or an array")
            data = np.asarray(data)
            if data.dtype == np.float64:
                data = data.astype(get_default_dtype(), copy=False)
            elif data.dtype == object or data.dtype.kind in "USV":
                raise TypeError(f"Tensor: data of numpy dtype {data.dtype} is not numeric")
        self.data = data
        self.grad = None
        self._ctx = None
        self._index = 0
        self._hooks = None
        self._retain = False
        self.name = name
        self.grad_tensor = None     # the gradient as a Tensor on the tape, after create_graph
        self._modified = None       # ticks of the in-place changes (version counter)
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_op(cls, data, ctx, requires_grad, index=0):
        # A Tensor without __init__'s checks; the ops' outputs are made the same way.
        return autograd._output(data, ctx, requires_grad, index)

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind not in "fc":
            raise TypeError(f"Tensor: requires_grad=True needs a floating dtype, got "
                            f"{self.data.dtype} (shape {self.shape}); create it with dtype=float")
        if not flag and self._ctx is not None:
            raise RuntimeError("requires_grad_: only leaf tensors can stop requiring grad; "
                               "use .detach()")
        self.requires_grad = bool(flag)
        return self

    # --- properties ---------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def numpy(self):
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only a tensor with one element converts to a Python "
                             f"number, got shape {self.shape}")
        return self.data.item()

    def detach(self):
        """A new leaf sharing this tensor's data; the graph behind it is cut."""
        return Tensor._from_op(self.data, None, False)

    def astype(self, dtype):
        """A copy in another dtype; gradients flow back, cast to this tensor's dtype."""
        dtype = np.dtype(dtype)
        if dtype.kind not in "fc" and self.requires_grad:
            raise TypeError(f"astype: casting a tensor that requires grad to {dtype} would cut "
                            "the graph; detach() it first")
        return ops.Cast.apply(self, dtype=dtype)

    def __repr__(self):
        from ._display import tensor_repr  # display lives in _display.py, loaded on use
        return tensor_repr(self)

    def _repr_html_(self):
        """Jupyter's display: shape, dtype, grad status and a preview (the text repr stays)."""
        from ._display import tensor_html
        return tensor_html(self)

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data)

    __hash__ = object.__hash__

    # --- autograd -----------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires grad.

        ``.grad`` is always a numpy array. With ``create_graph=True`` the backward's own ops
        are recorded and each leaf also gets ``.grad_tensor``: the same values as a Tensor on
        the tape, to differentiate again (``tg.grad`` returns such Tensors directly).
        ``retain_graph`` defaults to ``create_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph "
                               "(no input of the ops that made it had requires_grad=True, or it "
                               "was computed under no_grad)")
        if retain_graph is None:
            retain_graph = create_graph
        grad = autograd._seed_grad(self, grad, create_graph, "backward: the output")
        _backward_walk(self, grad, retain_graph=retain_graph, create_graph=create_graph)

    def _accumulate_grad(self, g):
        if type(g) is Tensor:                   # create_graph: keep the graph in grad_tensor
            if g.dtype != self.data.dtype:
                g = g.astype(self.data.dtype)
            if self.grad_tensor is not None:
                g = self.grad_tensor + g
            elif self.grad is not None:
                g = Tensor(self.grad) + g
            self.grad_tensor = g
            self.grad = np.array(g.data, copy=True)
            return
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        if self.grad is None:
            self.grad = np.array(g, copy=True)   # never alias an array the walk shares
        else:
            self.grad = self.grad + g
        if self.grad_tensor is not None:         # keep both sums equal
            self.grad_tensor = self.grad_tensor + Tensor(g)

    # --- operand coercion -----------------------------------------------------------------
    def _operand(self, other, op):
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            # A Python scalar takes the tensor's dtype: it never upcasts float32.
            dt = self.data.dtype if self.data.dtype.kind in "fc" or isinstance(other, numbers.Integral) \
                else get_default_dtype()
            return Tensor._from_op(np.asarray(other, dtype=dt), None, False)
        if isinstance(other, (np.ndarray, np.generic)):
            return Tensor._from_op(np.asarray(other), None, False)
        if isinstance(other, (list, tuple, bool)):
            return Tensor(other)
        if type(other) is OuterProductSum:      # a deferred gradient, under create_graph
            return other.materialize()
        raise TypeError(f"{op}: expected {_OPERAND_TYPES}, got {type(other).__name__}")

    # --- arithmetic ------------------------------------------------------------------------
    # Made by _binary_method (below the class): one pattern, and the hottest calls of a step.
    __add__, __radd__ = _binary_method(ops.Add, "add"), _binary_method(ops.Add, "add", True)
    __sub__, __rsub__ = _binary_method(ops.Sub, "sub"), _binary_method(ops.Sub, "sub", True)
    __mul__, __rmul__ = _binary_method(ops.Mul, "mul"), _binary_method(ops.Mul, "mul", True)
    __truediv__ = _binary_method(ops.Div, "div")
    __rtruediv__ = _binary_method(ops.Div, "div", True)
    __pow__, __rpow__ = _binary_method(ops.Pow, "pow"), _binary_method(ops.Pow, "pow", True)
    __matmul__ = _binary_method(ops.MatMul, "matmul")
    __rmatmul__ = _binary_method(ops.MatMul, "matmul", True)

    def __neg__(self):
        return apply_unary(ops.Neg, self)

    # Comparisons give plain (non-differentiable) boolean tensors, e.g. masks for where().
    def __lt__(self, other):
        return Tensor(self.data < self._operand(other, "lt").data)

    def __le__(self, other):
        return Tensor(self.data <= self._operand(other, "le").data)

    def __gt__(self, other):
        return Tensor(self.data > self._operand(other, "gt").data)

    def __ge__(self, other):
        return Tensor(self.data >= self._operand(other, "ge").data)

    # --- pointwise (apply_unary: op.apply for one input, engine/fast_apply.py) ---------------
    def tanh(self):
        return apply_unary(ops.Tanh, self)

    def sigmoid(self):
        return apply_unary(ops.Sigmoid, self)

    def relu(self):
        return apply_unary(ops.Relu, self)

    def exp(self):
        return apply_unary(ops.Exp, self)

    def log(self):
        return apply_unary(ops.Log, self)

    def sqrt(self):
        return apply_unary(ops.Sqrt, self)

    def abs(self):
        return apply_unary(ops.Abs, self)

    # --- reductions ------------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        try:
            axes = ops._normalize_axis(axis, self.ndim)
        except (TypeError, ValueError) as exc:     # mean is a composite: name it, as ops are
            raise ShapeError(f"mean: cannot reduce shape {self.shape} over axis={axis}: {exc}") from exc
        count = 1
        for ax in axes:
            count *= self.shape[ax]
        if count == 0:
            raise ValueError(f"mean: cannot average over zero elements (shape {self.shape}, "
                             f"axis={axis})")
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims=False):
        if self.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {self.shape}")
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def softmax(self, axis=-1):
        return ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis=-1):
        return ops.LogSoftmax.apply(self, axis=axis)

    # --- shape ----------------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.Reshape.apply(self, shape=shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(reversed(range(self.ndim)))
        return ops.Transpose.apply(self, axes=axes)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        for i in index:
            if isinstance(i, np.ndarray) and i.dtype.kind not in "iub":
                raise TypeError(f"getitem: index arrays must be integers or booleans, got "
                                f"dtype {i.dtype}")
        return ops.GetItem.apply(self, index=index)

    def split(self, sizes, axis=-1):
        """Split into pieces of the given sizes (a list) or into pieces of one size (an int)."""
        ax = self._axis(axis, "split")
        n = self.shape[ax]
        if isinstance(sizes, (int, np.integer)):
            if sizes <= 0:
                raise ValueError(f"split: size must be positive, got {sizes}")
            sizes = [sizes] * (n // sizes) + ([n % sizes] if n % sizes else [])
        if sum(sizes) != n:
            raise ShapeError(f"split: sizes {list(sizes)} sum to {sum(sizes)}, but axis {axis} "
                             f"of shape {self.shape} has {n}")
        return list(ops.Split.apply(self, sizes=tuple(sizes), axis=ax))

    def chunk(self, chunks, axis=-1):
        """Split into ``chunks`` equal pieces (the LSTM gates: ``gates.chunk(4)``)."""
        ax = self._axis(axis, "chunk")
        n = self.data.shape[ax]
        if chunks <= 0 or n % chunks:
            raise ShapeError(f"chunk: axis {axis} of shape {self.shape} has {n} elements, "
                             f"not divisible into {chunks} equal chunks")
        return list(ops.Split.apply(self, sizes=(n // chunks,) * chunks, axis=ax))

    def unbind(self, axis=0):
        """The slices along ``axis`` as a list of tensors (one tape node for all of them)."""
        ax = self._axis(axis, "unbind")
        return list(ops.Unbind.apply(self, axis=ax))

    def _axis(self, axis, op):
        if not -self.ndim <= axis < self.ndim:
            raise ShapeError(f"{op}: axis {axis} is out of range for shape {self.shape}")
        return axis % self.ndim
