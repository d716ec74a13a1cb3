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

    A backward written with ``self.xp`` and the operations arrays and Tensors share (see
    ops.py) sets ``differentiable_backward = True`` and names where it keeps its inputs and
    its output: ``saved_inputs`` (one attribute name per input, None if not kept) and
    ``saved_output``. Under ``create_graph=True`` the walk then runs it on a copy of the node
    whose those attributes are the graph's Tensors (`_graph_rule`), so the gradient is on the
    tape; the same names tell the version check which inputs the backward reads.
    """

    name = None              # printed in errors and traces; defaults to the class name
    parents = ()
    needs_input_grad = ()
    n_outputs = 1
    freed = False
    seq = -1                 # creation order of recorded nodes: the walk's topological order
    saved_inputs = None      # attribute names of the inputs backward reads, by position;
                             # None (a Function that does not say): every input counts as read
    saved_output = None      # attribute name of the output backward reads
    differentiable_backward = False

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

def backward(root, grad, retain_graph=False, create_graph=False):
    """Back-propagate ``grad`` (the gradient of some loss w.r.t. ``root``) through the tape.

    Reverse topological order from creation order (PyTorch's engine does the same with its
    sequence numbers): a node is created after the nodes of its inputs, so running the
    reached nodes latest-first, from a heap, runs each one after every node that can still
    send it a gradient, in one pass, without first counting uses. Gradients are summed per
    node output as they arrive and dropped once the node has run; leaves receive their
    total at the end.

    ``create_graph=True`` runs every rule on Tensors instead (``grad`` is then a Tensor):
    the gradients it computes are recorded, so they can be differentiated again.
    """
    with _walking(create_graph):
        _walk([root], [grad], retain_graph, create_graph)


@contextlib.contextmanager
def _walking(create_graph):
    tune_malloc()                   # once per process: engine/malloc.py
    # The tape holds no cycles (engine/gc_pause.py); create_graph leaves a new graph behind,
    # as an Unroll does.
    with gc_paused(keep_new_objects=create_graph), \
            (enable_grad() if create_graph else contextlib.nullcontext()):
        yield


def _walk(roots, grads, retain_graph, create_graph=False, capture=None):
    """The walk of `backward`. ``capture`` (tg.grad's inputs): a dict that receives their
    gradients instead of any ``.grad``; only the nodes leading to them run."""
    # node -> (gradients summed so far, the output tensors they belong to), by output index
    pending = {}
    heap = []
    leaf_grads = {}
    needed = None if capture is None else _nodes_leading_to(roots, capture)
    for root, grad in zip(roots, grads):
        if root._ctx is None:
            prev = leaf_grads.get(root)
            leaf_grads[root] = grad if prev is None else prev + grad
            continue
        node = root._ctx
        entry = pending.get(node)
        if entry is None:
            entry = pending[node] = ([None] * node.n_outputs, [None] * node.n_outputs)
            heap.append((-node.seq, node))
        prev = entry[0][root._index]
        entry[0][root._index] = grad if prev is None else prev + grad
        entry[1][root._index] = root
    heapq.heapify(heap)
    observers = list(_observers)
    heappop, heappush = heapq.heappop, heapq.heappush
    while heap:
        ctx = heappop(heap)[1]
        out_grads, outs = pending.pop(ctx)
        if ctx.freed:
            raise _graph_freed_error(next(t for t in outs if t is not None), ctx)
        if last_in_place_change > ctx.seq:               # something changed in place since its forward
            _check_versions(ctx, outs)
        rule = _graph_rule(ctx, outs) if create_graph else None
        if ctx.n_outputs == 1:                            # most nodes: no loop, no unpacking
            g, t = out_grads[0], outs[0]
            # Not an array: a deferred weight-gradient sum (engine/weight_grads.py), or a
            # Tensor under create_graph.
            if type(g) is not _ndarray or t._hooks or t._retain:
                g = out_grads[0] = _finish(t, g, capture)
            if capture is not None and t in capture:
                capture[t] = g
                if ctx not in needed:                     # nothing to reach below it
                    continue
            in_grads = ctx.backward(g) if rule is None else rule(g)
        else:
            for i, t in enumerate(outs):
                if t is not None and (type(out_grads[i]) is not _ndarray or t._hooks or t._retain):
                    out_grads[i] = _finish(t, out_grads[i], capture)
                if capture is not None and t in capture:
                    capture[t] = out_grads[i]
            if capture is not None and ctx not in needed:
                continue
            in_grads = ctx.backward(*out_grads) if rule is None else rule(*out_grads)
        if observers:                                     # they read per-node arrays (the ledger)
            in_grads = [None if g is None else _as_array(g) for g in in_grads]
            reached = [t for t in outs if t is not None]
            for obs in observers:
                obs.on_backward(ctx, _arrays(out_grads), _arrays(in_grads), reached)
        for p, pg in zip(ctx.parents, in_grads):
            if pg is None or not p.requires_grad:
                continue
            pctx = p._ctx
            if pctx is None:                              # a leaf: summed until the walk ends
                if capture is None or p in capture:
                    prev = leaf_grads.get(p)
                    leaf_grads[p] = pg if prev is None else prev + pg
                continue
            if needed is not None and pctx not in needed and p not in capture:
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
        if not retain_graph:
            # Drop the saved arrays and the inputs; a later backward through here is an error.
            ctx.__dict__.clear()
            ctx.freed = True
    for leaf, g in leaf_grads.items():
        if capture is None:
            _finish(leaf, g)
        elif leaf in capture:
            capture[leaf] = _finish(leaf, g, capture)


def _nodes_leading_to(roots, inputs):
    """The nodes below ``roots`` with a path to one of ``inputs``: tg.grad runs only these."""
    nodes, seen = [], set()
    stack = [r._ctx for r in roots if r._ctx is not None]
    while stack:                                          # iterative: a long unroll is deep
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        for p in node.parents:
            if p._ctx is not None:
                stack.append(p._ctx)
    nodes.sort(key=_creation_order)                      # inputs' nodes before their users'
    needed = set()
    for node in nodes:
        if node.freed:      # kept, so that the walk reports it instead of "input not used"
            needed.add(node)
            continue
        for p in node.parents:
            if p in inputs or p._ctx in needed:
                needed.add(node)
                break
    return needed


def _creation_order(node):
    return node.seq


def _blame_inputs(op, arrays, attrs, exc):
    """Called when ``op``'s forward raised ``exc``: if the inputs are at fault, raise a
    `ShapeError` naming the op and what is wrong, chained to ``exc``; if they are fine, return,
    and ``exc`` (a bug in the op) is raised unchanged."""
    if isinstance(exc, ShapeError):
        return                              # the op checked its inputs itself (linear)
    problem = op.input_problem(*arrays, **attrs)
    if problem is not None:
        raise ShapeError(f"{op.op_name()}: {problem}") from exc


def _finish(t, g, capture=None):
    """``t``'s gradient, complete: an array (a Tensor under create_graph), hooks applied,
    kept in ``.grad`` if ``t`` is a leaf or called retain_grad() (not by tg.grad, which
    leaves every ``.grad`` alone: ``capture``)."""
    g = _as_array(g)                # a deferred weight-gradient sum becomes one GEMM here
    if t._hooks:
        as_tensor = type(g) is Tensor
        for hook in t._hooks:
            replaced = hook(g)
            if replaced is not None:
                g = _check_hook_grad(t, replaced, as_tensor)
    if capture is None and (t._retain or t._ctx is None):
        t._accumulate_grad(g)
    return g


def _as_array(g):
    """A gradient as an array, or a Tensor under create_graph; a deferred sum materialized."""
    if type(g) is _ndarray or type(g) is Tensor:
        return g
    if hasattr(g, "materialize"):   # an OuterProductSum (engine/weight_grads.py)
        return g.materialize()
    return np.asarray(g)


def _arrays(grads):
    """Gradients as arrays for observers (they read numbers; under create_graph, the data)."""
    return [g.data if type(g) is Tensor else g for g in grads]


def _check_hook_grad(t, g, as_tensor=False):
    """A hook's gradient of ``t``'s shape and dtype: an array, or under create_graph (where
    hooks receive Tensors) a Tensor."""
    if isinstance(g, Tensor):
        g = g if as_tensor else g.data
    else:
        g = np.asarray(g)
    if g.shape != t.shape:
        raise ShapeError(f"hook: returned a gradient of shape {g.shape} for a tensor of shape "
                         f"{t.shape}; a hook must return None or an array of the tensor's shape")
    if as_tensor:
        g = g if isinstance(g, Tensor) else _output(g, None, False)
        return g if g.dtype == t.dtype else g.astype(t.dtype)
    return g.astype(t.dtype, copy=False)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """The gradients of ``outputs`` with respect to ``inputs``, as a tuple of Tensors, one per
    input (PyTorch's ``torch.autograd.grad``). No ``.grad`` is touched.

    ``outputs``/``inputs``: a Tensor or a sequence of them; inputs may be leaves or
    intermediate results. ``grad_outputs``: the cotangent of each output (a Tensor, array
    or number; None: ones, allowed only for a single-element output); the gradient is
    ``sum_k grad_outputs[k] . d outputs[k] / d input``. With ``create_graph=True`` the
    returned Tensors are on the tape (the backward's own ops were recorded), so they can be
    differentiated again, to any order. ``retain_graph`` defaults to ``create_graph``.
    An input that no output depends on is an error unless ``allow_unused`` (then None).
    """
    outputs = _as_tensor_list(outputs, "outputs")
    inputs = _as_tensor_list(inputs, "inputs")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: got {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    if retain_graph is None:
        retain_graph = create_graph
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise RuntimeError(f"grad: inputs[{i}] (shape {x.shape}{_named(x)}) does not require "
                               "grad; only tensors with requires_grad=True have a gradient")
    roots, seeds = [], []
    for i, (out, go) in enumerate(zip(outputs, grad_outputs)):
        if not out.requires_grad:
            raise RuntimeError(f"grad: outputs[{i}] (shape {out.shape}) does not require grad and "
                               "has no graph (none of its inputs requires grad, or it was "
                               "computed under no_grad)")
        roots.append(out)
        seeds.append(_seed_grad(out, go, create_graph, f"grad: outputs[{i}]"))
    capture = {x: None for x in inputs}
    with _walking(create_graph):
        _walk(roots, seeds, retain_graph, create_graph, capture)
    result = []
    for i, x in enumerate(inputs):
        g = capture[x]
        if g is None and not allow_unused:
            raise RuntimeError(f"grad: inputs[{i}] (shape {x.shape}{_named(x)}) was not used to "
                               "compute the outputs, so it has no gradient; pass "
                               "allow_unused=True to get None for it")
        if g is not None:
            g = _as_array(g)
        if g is not None and not isinstance(g, Tensor):
            g = _output(np.array(g, dtype=x.dtype, copy=True), None, False)
        elif g is not None and g.dtype != x.dtype:
            g = g.astype(x.dtype)
        result.append(g)
    return tuple(result)


def _as_tensor_list(values, what):
    values = [values] if isinstance(values, Tensor) else list(values)
    if not values:
        raise ValueError(f"grad: {what} is empty")
    for i, v in enumerate(values):
        if not isinstance(v, Tensor):
            raise TypeError(f"grad: {what}[{i}] is a {type(v).__name__}, expected a Tensor")
    return values


def _seed_grad(out, grad, create_graph, who):
    """The gradient a backward starts from: ones for a single element, else the given one,
    of the output's shape and dtype; a Tensor under create_graph, else an array."""
    if grad is None:
        if out.data.size != 1:
            raise RuntimeError(f"{who} has shape {out.shape}; the gradient can be implied only for "
                               "a single-element output. Pass the gradient of the same shape "
                               "(grad_outputs=, or backward's grad=) or reduce it first (.sum())")
        grad = np.ones(out.shape, dtype=out.dtype)
    if isinstance(grad, Tensor):
        if not create_graph:
            grad = grad.data
    else:
        grad = np.asarray(grad)
    if grad.shape != out.shape:
        raise ShapeError(f"{who}: its gradient has shape {grad.shape}, expected the output's "
                         f"shape {out.shape}")
    if grad.dtype != out.dtype:
        grad = grad.astype(out.dtype) if isinstance(grad, Tensor) else \
            grad.astype(out.dtype, copy=False)
    if create_graph and not isinstance(grad, Tensor):
        grad = _output(grad, None, False)
    return grad


# --- backward on Tensors (create_graph) -------------------------------------------------------

def _graph_rule(ctx, outs):
    """``ctx``'s backward as a function of Tensors: run on a copy of the node whose saved
    inputs and output are the graph's Tensors, so every op of the rule is recorded.

    The output Tensor comes from the walk (the tensor the gradient arrived through), not
    from the node: a node never holds its output, so there is no node -> output -> node
    reference cycle, and the copy lives only while the rule runs.
    """
    if not ctx.differentiable_backward:
        return _once_differentiable(ctx)
    view = _new(type(ctx))
    view.__dict__.update(ctx.__dict__)
    view.xp = _tensor_math
    for name, p in zip(ctx.saved_inputs, ctx.parents):
        if name is not None:
            setattr(view, name, p)
    if ctx.saved_output is not None:
        setattr(view, ctx.saved_output, outs[0])

    def rule(*grads):
        return tuple(_as_tensor(g) for g in view.backward(*grads))
    return rule


def _as_tensor(g):
    if type(g) is _ndarray:
        return _output(g, None, False)  # a rule's constant (e.g. zeros): no graph behind it
    return g                            # a Tensor, None, or a deferred sum of Tensor factors


def _once_differentiable(ctx):
    """A backward that only runs on arrays (a user's Function not written with ``self.xp``):
    its gradients are right, and differentiating them again is an error, not a silent 0."""
    def rule(*grads):
        arrays = ctx.backward(*[None if g is None else g.data for g in grads])
        return tuple(None if a is None else
                     BackwardOnArrays.apply(*[g for g in grads if g is not None], *ctx.parents,
                                            result=a, op=ctx.op_name())
                     for a in arrays)
    return rule


class BackwardOnArrays(Function):
    """The gradient computed by a backward that works on arrays only (see above)."""

    name = "backward_on_arrays"

    def forward(self, *grads, result, op):
        self.op = op
        return result

    def backward(self, g):
        raise RuntimeError(
            f"backward: the gradient of '{self.op}' was computed by a backward that works on "
            "numpy arrays only, so it cannot be differentiated again. Write that Function's "
            "backward with self.xp and the operations arrays and Tensors share, and set "
            "differentiable_backward = True (see tinygrad_rnn/ops.py)")


_tensor_math = None         # ops.TensorMath, set by ops.py (the layer above)


# --- version counters ---------------------------------------------------------------------

# The clock tick (the nodes' `_sequence`) of the latest in-place change of any tensor
# (Tensor._bump_version). A node created after it saw only current data: the walk checks a
# node's inputs only when this is later than the node, one comparison per node otherwise.
last_in_place_change = -1


def _check_versions(ctx, outs):
    """An error if ``ctx``'s backward reads an input or output changed in place since ``ctx``'s
    forward (stamps later than the node's number)."""
    names = ctx.saved_inputs if ctx.saved_inputs is not None else ["?"] * len(ctx.parents)
    for i, (name, p) in enumerate(zip(names, ctx.parents)):
        if name is not None and p._modified is not None and p._modified[-1] > ctx.seq:
            saved = sum(1 for tick in p._modified if tick < ctx.seq)
            raise _modified_error(ctx, p, "input", i, saved)
    out = outs[0]
    if ctx.saved_output is not None and out is not None and out._modified is not None:
        raise _modified_error(ctx, out, "output", 0, 0)     # an output is made at version 0


def _modified_error(ctx, t, role, index, saved_version):
    return RuntimeError(
        f"backward: one of the tensors needed for gradient computation has been modified in "
        f"place: {role} {index} of '{ctx.op_name()}' (shape {t.shape}{_named(t)}) is at "
        f"version {len(t._modified)}; expected version {saved_version}, the version its "
        "forward saved. Something changed it between the forward and this backward (an "
        "optimizer step, an init function, load_state_dict, an in-place method such as "
        "copy_). Run the backward before changing it (optimizer.step() after backward), or "
        "run the forward again afterwards.")


def _named(t):
    return f", '{t.name}'" if t.name else ""


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
    t._modified = t.grad_tensor = None
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
