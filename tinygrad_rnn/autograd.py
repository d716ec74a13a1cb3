"""The tape: `Function` (one op's forward and backward, side by side) and the backward walk.

Every op applied to tensors that require grad creates one `Function` instance: a node of
the tape, keeping its inputs (``parents``) and whatever its forward saved for backward.
`backward` walks the nodes in reverse creation order without recursion, hands each node the
gradient of its output, and sums the gradients it returns into its inputs. A leaf used many
times (a shared RNN weight) simply receives the sum: weight sharing is gradient accumulation.
What makes this fast is in `tinygrad_rnn.engine`, one module per device.
"""

import contextlib
import heapq
import itertools
import threading

import numpy as np

from .engine.gc_pause import gc_paused
from .engine.malloc import tune_malloc


class ShapeError(ValueError):
    """An op got inputs of incompatible shapes; the message names the op and the shapes."""


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
                ctx.parents, ctx.needs_input_grad, ctx.seq = tensors, needs, next(_sequence)
        arrays = [t.data for t in tensors]
        try:
            data = ctx.forward(*arrays, **attrs)
        except Exception as exc:
            _blame_inputs(cls, arrays, attrs, exc)  # a ShapeError if the inputs are at fault,
            raise                                   # else a bug in the op: raised as itself
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

    @classmethod
    def input_problem(cls, *arrays, **attrs):
        """What is wrong with these inputs (a phrase naming their shapes), or None: asked
        only after forward raised (`_blame_inputs`). Ops check their constraints here."""
        return None

    @classmethod
    def op_name(cls):
        return cls.name or cls.__name__.lower()


# --- the backward walk -------------------------------------------------------------------

def backward(root, grad, retain_graph=False):
    """Back-propagate ``grad`` (the gradient of some loss w.r.t. ``root``) through the tape.

    Reverse topological order from creation order (PyTorch's engine does the same with its
    sequence numbers): a node is created after the nodes of its inputs, so running the
    reached nodes latest-first, from a heap, runs each one after every node that can still
    send it a gradient, in one pass, without first counting uses. Gradients are summed per
    node output as they arrive and dropped once the node has run; leaves receive their
    total at the end.
    """
    tune_malloc()                   # once per process: engine/malloc.py
    with gc_paused():               # the tape holds no cycles: engine/gc_pause.py
        _walk(root, grad, retain_graph)


def _walk(root, grad, retain_graph):
    if root._ctx is None:
        _finish(root, grad)
        return
    node = root._ctx
    # node -> (gradients summed so far, the output tensors they belong to), by output index
    pending = {node: ([None] * node.n_outputs, [None] * node.n_outputs)}
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
            # Not an array: a deferred weight-gradient sum (engine/weight_grads.py).
            if type(g) is not _ndarray or t._hooks or t._retain:
                g = out_grads[0] = _finish(t, g)
            in_grads = ctx.backward(g)
        else:
            for i, t in enumerate(outs):
                if t is not None and (type(out_grads[i]) is not _ndarray or t._hooks or t._retain):
                    out_grads[i] = _finish(t, out_grads[i])
            in_grads = ctx.backward(*out_grads)
        if observers:                                     # they read per-node arrays (the ledger)
            in_grads = [None if g is None else np.asarray(g) for g in in_grads]
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
        _finish(leaf, g)


def _blame_inputs(op, arrays, attrs, exc):
    """Called when ``op``'s forward raised ``exc``: if the inputs are at fault, raise a
    `ShapeError` naming the op and what is wrong, chained to ``exc``; if they are fine, return,
    and ``exc`` (a bug in the op) is raised unchanged."""
    if isinstance(exc, ShapeError):
        return                              # the op checked its inputs itself (linear)
    problem = op.input_problem(*arrays, **attrs)
    if problem is not None:
        raise ShapeError(f"{op.op_name()}: {problem}") from exc


def _finish(t, g):
    """``t``'s gradient, complete: an array, hooks applied, kept in ``.grad`` if ``t`` is a
    leaf or called retain_grad()."""
    g = np.asarray(g)               # a deferred weight-gradient sum becomes one GEMM here
    if t._hooks:
        for hook in t._hooks:
            replaced = hook(g)
            if replaced is not None:
                g = _check_hook_grad(t, replaced)
    if t._retain or t._ctx is None:
        t._accumulate_grad(g)
    return g


def _check_hook_grad(t, g):
    g = np.asarray(g)
    if g.shape != t.shape:
        raise ShapeError(f"hook: returned a gradient of shape {g.shape} for a tensor of shape "
                         f"{t.shape}; a hook must return None or an array of the tensor's shape")
    return g.astype(t.dtype, copy=False)


def _graph_freed_error(t, ctx):
    where = f"'{ctx.op_name()}' (output shape {t.shape})"
    return RuntimeError(
        f"backward: the graph through {where} was already freed by an "
        "earlier backward. Pass retain_graph=True to the first backward to go through it "
        "twice, or detach the state between truncated-BPTT windows (tg.detach_state).")


# A node is created after the nodes of its inputs, so a larger number is later in every
# path: the backward walk runs nodes in decreasing order (itertools.count is atomic).
_sequence = itertools.count()
_new = object.__new__
_ndarray = np.ndarray


def _output(data, node, requires_grad, index=0):
    """An op's output tensor, without Tensor.__init__'s checks (it runs once per op).
    ``index`` is which output of a multi-output node (split, unbind) it is."""
    if type(data) is not _ndarray:
        data = np.asarray(data)     # numpy reductions return scalars; .data is always an array
    t = _new(Tensor)
    t.data, t.grad, t._ctx, t._index, t._hooks, t._retain, t.name, t.requires_grad = \
        data, None, node, index, None, False, None, requires_grad
    return t


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

# Observers are global, not per thread like grad mode: they are debugging tools wrapped
# around a region of a program (like a profiler), and they should see the ops of every
# thread that runs there; a per-thread list would cost a thread-local lookup on every op.
# Where each op is (the scope: time step, layer) is per thread, since each thread's forward
# is at its own step.
_observers = []


def add_observer(obs):
    _observers.append(obs)


def remove_observer(obs):
    _observers.remove(obs)


def observing():
    return bool(_observers)


def notify_step(unroll, t, out, state):
    """Tell observers that define ``on_step`` (the BPTT ledger) a step's output and state."""
    if _observers:
        for obs in list(_observers):
            on_step = getattr(obs, "on_step", None)
            if on_step is not None:
                on_step(unroll, t, out, state)


class _ScopeState(threading.local):
    current = {}            # never mutated: each scope replaces it, and puts it back on exit


_scope = _ScopeState()


def current_scope():
    """Where this thread's forward is, e.g. ``{"step": 7, "layer": 1}`` (set by `scope`)."""
    return _scope.current


def scope(**where):
    """``with autograd.scope(step=t):`` tags the ops recorded inside for observers (Unroll
    and Stack do this); the previous scope comes back on exit, exceptions included. While
    nobody listens there is nothing to tag: a shared no-op block, 0.2 µs a step."""
    return _Scope(where) if _observers else _NOT_LISTENING


_NOT_LISTENING = contextlib.nullcontext()


class _Scope:
    __slots__ = ("where", "previous")

    def __init__(self, where):
        self.where = where

    def __enter__(self):
        self.previous = _scope.current
        _scope.current = {**self.previous, **self.where}
        return self

    def __exit__(self, *exc):
        _scope.current = self.previous
        return False


# Tensor and Function need each other: an op's inputs and outputs are Tensors, and Tensor's
# methods apply Functions. The package imports this module before tensor.py, which imports
# it at its top; so Tensor is imported here, last, once everything tensor.py (and the engine
# modules it loads) use from this module exists. No class is injected from above.
from .tensor import Tensor  # noqa: E402
