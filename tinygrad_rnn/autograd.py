"""The tape: `Function` (one op's forward and backward, side by side) and the backward walk.

Every op applied to tensors that require grad creates one `Function` instance: a node of
the tape. It keeps its inputs (``parents``) and whatever its forward saved for backward.
``Tensor.backward`` calls `backward`, which walks the nodes in reverse topological order
without recursion (a 10,000-step unroll is a 100,000-node chain), hands each node the
gradient of its output, and sums the gradients it returns into its inputs. A leaf used
many times (a shared RNN weight) simply receives the sum: weight sharing is gradient
accumulation. (For a weight that sum is left as factors until all uses have delivered, then
done as one matrix product: `OuterProductSum`.)
"""

import contextlib
import gc
import heapq
import itertools
import threading

import numpy as np

from . import _malloc


class ShapeError(ValueError):
    """An op got inputs of incompatible shapes; the message names the op and the shapes."""


# --- grad mode ---------------------------------------------------------------------------

class _GradModeState(threading.local):
    # A class default, so that reading it in a thread that never set it does not raise
    # internally (getattr with a default on a missing attribute costs ~1 µs, on every op).
    enabled = True


_grad_mode = _GradModeState()


def is_grad_enabled():
    return _grad_mode.enabled


class _GradMode:
    """Context manager and decorator that sets grad recording for the current thread."""

    enabled = True

    def __enter__(self):
        self._prev = is_grad_enabled()
        _grad_mode.enabled = self.enabled

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """``with tg.no_grad():`` (or ``@tg.no_grad()``) records nothing on the tape."""

    enabled = False


class enable_grad(_GradMode):
    """Re-enables recording inside a ``no_grad`` block."""

    enabled = True


# --- observers (trace, anomaly mode, BPTT ledger); empty and free unless someone listens --

_observers = []
# Where the forward currently is, e.g. {"step": 7, "layer": 1}; set by Unroll and Stack.
scope = {}


def add_observer(obs):
    _observers.append(obs)


def remove_observer(obs):
    _observers.remove(obs)


def observing():
    return bool(_observers)


# --- Function ----------------------------------------------------------------------------

# A node is created after the nodes of its inputs, so a larger number is later in every
# path: the backward walk runs nodes in decreasing order (itertools.count is atomic).
_sequence = itertools.count()


class Function:
    """One primitive op: ``forward(*arrays, **attrs) -> array`` and ``backward(grad)``.

    ``backward`` returns one gradient per input (``None`` where ``needs_input_grad`` is
    False), each already reduced to that input's shape. Subclasses keep what backward needs
    as attributes of ``self``; the instance is the tape node.
    """

    name = None              # printed in errors and traces; defaults to the class name
    parents = ()
    needs_input_grad = ()
    n_outputs = 1
    freed = False
    seq = -1                 # creation order of recorded nodes: the walk's topological order

    def forward(self, *arrays, **attrs):
        raise NotImplementedError  # abstract: each op defines its forward

    def backward(self, grad):
        raise NotImplementedError  # abstract: each op defines its backward

    @classmethod
    def op_name(cls):
        return cls.name or cls.__name__.lower()

    @classmethod
    def describe_error(cls, arrays, attrs, exc):
        shapes = " and ".join(str(a.shape) for a in arrays)
        return f"{cls.op_name()}: invalid inputs of shapes {shapes}: {exc}"

    @classmethod
    def apply(cls, *tensors, **attrs):
        """Run forward on the tensors' data and, if any input requires grad, record a node.

        A forward that returns a tuple of arrays makes a multi-output node (``split``,
        ``unbind``): its backward then receives one gradient per output (None if unused).
        """
        ctx = cls()
        requires_grad = False
        if _grad_mode.enabled:
            needs = tuple([t.requires_grad for t in tensors])   # a list is faster than a generator
            requires_grad = True in needs
            if requires_grad:
                ctx.parents = tensors
                ctx.needs_input_grad = needs
                ctx.seq = next(_sequence)
        arrays = [t.data for t in tensors]
        try:
            data = ctx.forward(*arrays, **attrs)
        except (ValueError, IndexError, TypeError) as exc:
            raise ShapeError(cls.describe_error(arrays, attrs, exc)) from None
        node = ctx if requires_grad else None
        if type(data) is tuple:
            ctx.n_outputs = len(data)
            out = tuple([_output(d, node, requires_grad, i) for i, d in enumerate(data)])
        else:
            out = _output(data, node, requires_grad)
        if _observers:
            for obs in list(_observers):
                obs.on_forward(ctx, tensors, out)
        return out

    # The tensor methods of the pointwise and binary ops call these instead of `apply`: the
    # same result, without *args/**attrs packing, about 0.8 µs less per op (a third of an
    # op's overhead; a recurrent step is a dozen ops). They record after forward, so they
    # are for ops whose forward does not read needs_input_grad (none of ops.py does).
    @classmethod
    def apply_unary(cls, a):
        if _observers:
            return cls.apply(a)
        ctx = cls()
        try:
            data = ctx.forward(a.data)
        except (ValueError, IndexError, TypeError) as exc:
            raise ShapeError(cls.describe_error([a.data], {}, exc)) from None
        if a.requires_grad and _grad_mode.enabled:
            ctx.parents = (a,)
            ctx.needs_input_grad = (True,)
            ctx.seq = next(_sequence)
            return _output(data, ctx, True)
        return _output(data, None, False)

    @classmethod
    def apply_binary(cls, a, b):
        if _observers:
            return cls.apply(a, b)
        ctx = cls()
        try:
            data = ctx.forward(a.data, b.data)
        except (ValueError, IndexError, TypeError) as exc:
            raise ShapeError(cls.describe_error([a.data, b.data], {}, exc)) from None
        need_a, need_b = a.requires_grad, b.requires_grad
        if (need_a or need_b) and _grad_mode.enabled:
            ctx.parents = (a, b)
            ctx.needs_input_grad = (need_a, need_b)
            ctx.seq = next(_sequence)
            return _output(data, ctx, True)
        return _output(data, None, False)


_tensor_class = None        # set by tensor.py, the layer above, when it defines Tensor
_new = object.__new__
_ndarray = np.ndarray


def _output(data, node, requires_grad, index=0):
    """An op's output tensor, without Tensor.__init__'s checks (it runs once per op).
    ``index`` is which output of a multi-output node (split, unbind) it is."""
    if type(data) is not _ndarray:
        data = np.asarray(data)     # numpy reductions return scalars; .data is always an array
    t = _new(_tensor_class)
    t.data, t.grad, t._ctx, t._index, t._hooks, t._retain, t.name, t.requires_grad = \
        data, None, node, index, None, False, None, requires_grad
    return t


# --- deferred weight gradients --------------------------------------------------------------

class OuterProductSum:
    """The weight gradient ``sum_k a_k.T @ b_k`` kept as its factors until an array is needed.

    A shared weight's gradient is the sum of one small product per use (``g.T @ x`` per time
    step, K = batch rows each); BLAS does the same sum faster as ONE product over all the
    uses' rows stacked. So `Linear` and `MatMul` return this for a weight (when a use's
    product is big enough to gain: ``ops.DEFER_WEIGHT_GRAD_MIN_WORK``), the walk sums it with
    ``+`` like any gradient (two of them just join, no arithmetic), and it becomes an array
    where one is needed: before hooks, observers, ``retain_grad`` or a node's backward see it,
    and when a leaf receives it. The price: each use's factors stay alive until then.
    """

    __slots__ = ("a", "b", "rest")
    __array_ufunc__ = None      # ``ndarray + this`` defers to __radd__ instead of broadcasting

    def __init__(self, a, b, rest=None):
        self.a, self.b = a, b       # this term: a.T @ b, a (K, M), b (K, N)
        self.rest = rest            # the sum of the other terms (an OuterProductSum) or None

    @property
    def shape(self):
        return (self.a.shape[1], self.b.shape[1])

    @property
    def dtype(self):
        return np.result_type(*{x.dtype for term in self._terms() for x in term})

    def __add__(self, other):
        if isinstance(other, OuterProductSum):
            if other.shape != self.shape:
                raise ShapeError(f"gradient sum: shapes {self.shape} and {other.shape} differ")
            total = self
            while other is not None:      # O(terms of other): one, in the walk
                total, other = OuterProductSum(other.a, other.b, total), other.rest
            return total
        return self.materialize() + other

    def __radd__(self, other):
        return other + self.materialize()

    def __array__(self, dtype=None, copy=None):
        out = self.materialize()
        return out if dtype is None else out.astype(dtype, copy=False)

    def materialize(self):
        if self.rest is None:
            return self.a.T @ self.b
        a_rows, b_rows = zip(*self._terms())
        return np.concatenate(a_rows).T @ np.concatenate(b_rows)

    def _terms(self):
        term = self
        while term is not None:     # iterative: a 2000-step sum is a 2000-long chain
            yield term.a, term.b
            term = term.rest


# --- the backward walk -------------------------------------------------------------------

@contextlib.contextmanager
def gc_paused(keep_new_objects=False):
    """Pause Python's cyclic garbage collector (reference counting still frees everything).

    The tape has no reference cycles (a node points to its inputs, never to its outputs), so
    the collector can free nothing in it, yet while a long tape grows or shrinks each of its
    passes re-scans every node: for an unrolled sequence that was a third of the run time.
    PyTorch's tape lives in C++, out of the collector's sight; pausing it is our equivalent.

    ``keep_new_objects=True`` (Unroll, which leaves a whole new tape behind) also moves the
    objects made meanwhile to the collector's oldest generation on exit, without scanning
    them; otherwise the first young-generation pass afterwards scans the entire new tape
    once (15% of an LSTM forward at T=100, 25% at T=2000) and finds nothing to free.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep_new_objects and gc.get_freeze_count() == 0:
            # freeze() then unfreeze() is that move, in O(1): documented, unfreeze puts the
            # objects back into the oldest generation. Skipped if the program froze objects.
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _graph_freed_error(t, ctx):
    where = f"'{ctx.op_name()}' (output shape {t.shape})"
    return RuntimeError(
        f"backward: the graph through {where} was already freed by an "
        "earlier backward. Pass retain_graph=True to the first backward to go through it "
        "twice, or detach the state between truncated-BPTT windows (tg.detach_state).")


def backward(root, grad, retain_graph=False):
    """Back-propagate ``grad`` (the gradient of some loss w.r.t. ``root``) through the tape.

    Reverse topological order from creation order (PyTorch's engine does the same with its
    sequence numbers): a node is created after the nodes of its inputs, so running the
    reached nodes latest-first, from a heap, runs each one after every node that can still
    send it a gradient, in one pass, without first counting uses. Gradients are summed per
    node output as they arrive and dropped once the node has run; leaves receive their
    total at the end. A weight's gradient may arrive as an `OuterProductSum`; it is summed
    like any other and made an array only when something needs one (see the class).
    """
    if not _malloc.state["done"]:
        _malloc.tune_malloc()           # once per process: see _malloc.py
    with gc_paused():
        _walk(root, grad, retain_graph)


def _walk(root, grad, retain_graph):
    if root._ctx is None:
        root._accumulate_grad(_run_hooks(root, grad))
        return
    node = root._ctx
    n = node.n_outputs
    # node -> (gradients summed so far, the output tensors they belong to), by output index
    pending = {node: ([None] * n, [None] * n)}
    pending[node][0][root._index] = grad
    pending[node][1][root._index] = root
    heap = [(-node.seq, node)]
    leaf_grads = {}
    observers = list(_observers)
    heappop, heappush = heapq.heappop, heapq.heappush
    while heap:
        ctx = heappop(heap)[1]
        out_grads, outs = pending.pop(ctx)
        if ctx.freed:
            raise _graph_freed_error(next(t for t in outs if t is not None), ctx)
        if ctx.n_outputs == 1:                            # most nodes: no loop, no unpacking
            g, t = out_grads[0], outs[0]
            if type(g) is OuterProductSum:                # a non-leaf weight: its node needs an array
                g = out_grads[0] = g.materialize()
            if t._hooks or t._retain:
                g = out_grads[0] = _finish_output_grad(t, g)
            in_grads = ctx.backward(g)
        else:
            for i, t in enumerate(outs):
                if t is not None:
                    g = out_grads[i]
                    if type(g) is OuterProductSum:
                        g = out_grads[i] = g.materialize()
                    if t._hooks or t._retain:
                        out_grads[i] = _finish_output_grad(t, g)
            in_grads = ctx.backward(*out_grads)
        if observers:                                     # they read per-node arrays (the ledger)
            in_grads = [g.materialize() if type(g) is OuterProductSum else g for g in in_grads]
            reached = [t for t in outs if t is not None]
            for obs in observers:
                obs.on_backward(ctx, out_grads, in_grads, reached)
        parents = ctx.parents
        if not retain_graph:
            # Drop the saved arrays and the inputs; a later backward through here is an error.
            ctx.__dict__.clear()
            ctx.freed = True
        for p, pg in zip(parents, in_grads):
            if pg is None or not p.requires_grad:
                continue
            pctx = p._ctx
            if pctx is None:                              # a leaf: summed until the walk ends
                prev = leaf_grads.get(p)
                leaf_grads[p] = pg if prev is None else prev + pg
                continue
            entry = pending.get(pctx)
            if entry is None:                             # first gradient to reach this node
                n = pctx.n_outputs
                entry = pending[pctx] = ([None] * n, [None] * n)
                heappush(heap, (-pctx.seq, pctx))
            grads, i = entry[0], p._index
            prev = grads[i]
            grads[i] = pg if prev is None else prev + pg
            entry[1][i] = p
    for leaf, g in leaf_grads.items():
        if type(g) is OuterProductSum:                    # all uses delivered: one GEMM now
            g = g.materialize()
        leaf._accumulate_grad(_run_hooks(leaf, g))


def _finish_output_grad(t, g):
    """The finished gradient of a node's output: hooks applied, kept if retain_grad()."""
    g = _run_hooks(t, g)
    if t._retain:
        t._accumulate_grad(g)
    return g


def _run_hooks(t, g):
    if t._hooks:
        for hook in t._hooks:
            replaced = hook(g)
            if replaced is not None:
                g = _check_hook_grad(t, replaced)
    return g


def _check_hook_grad(t, g):
    g = np.asarray(g)
    if g.shape != t.shape:
        raise ShapeError(f"hook: returned a gradient of shape {g.shape} for a tensor of shape "
                         f"{t.shape}; a hook must return None or an array of the tensor's shape")
    return g.astype(t.dtype, copy=False)
