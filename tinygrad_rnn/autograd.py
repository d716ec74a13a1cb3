"""The tape: `Function` (one op's forward and backward, side by side) and the backward walk.

Every op applied to tensors that require grad creates one `Function` instance: a node of
the tape, keeping its inputs (``parents``) and whatever its forward saved for backward.
`backward` walks the nodes in reverse creation order without recursion, hands each node the
gradient of its output, and sums the gradients it returns into its inputs. A leaf used many
times (a shared RNN weight) simply receives the sum: weight sharing is gradient accumulation.

What makes this fast is in `tinygrad_rnn.engine`, one module per device; what surrounds the
algorithm has a module each: grad_mode.py (``no_grad``), observers.py (trace, anomaly mode,
ledger), higher_order.py (``tg.grad``, backward on Tensors for ``create_graph``), versions.py
(in-place changes and their check), hooks.py (``register_hook``, ``retain_grad``).
"""

import contextlib
import heapq
import itertools

import numpy as np

from .engine.gc_pause import gc_paused
from .engine.malloc import tune_malloc
from .grad_mode import _grad_mode, enable_grad
from .observers import _observers


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
    whose those attributes are the graph's Tensors (`higher_order.graph_rule`), so the
    gradient is on the tape; the same names tell the version check which inputs the backward
    reads.
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


def _walk(roots, grads, retain_graph, create_graph=False, capture=None, needed=None):
    """The walk of `backward`. ``capture`` (tg.grad's inputs): a dict that receives their
    gradients instead of any ``.grad``; ``needed``: the nodes leading to them, the only ones
    that run (higher_order.py)."""
    # node -> (gradients summed so far, the output tensors they belong to), by output index
    pending = {}
    heap = []
    leaf_grads = {}
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
        g = t._run_hooks(g)         # hooks.py
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


def _named(t):
    """How an error names a tensor after its shape (versions.py, higher_order.py)."""
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
# The tick of the latest in-place change of any tensor, on the same clock (versions.py): a
# node created after it saw only current data, so the walk checks a node's inputs only when
# this is later than the node, one comparison per node otherwise.
last_in_place_change = -1
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


# Tensor and Function need each other: an op's inputs and outputs are Tensors, and Tensor's
# methods apply Functions. The walk also calls two modules that build on this one: the version
# check (versions.py, home of Tensor's in-place methods) and, under create_graph, the rule run
# on Tensors (higher_order.py, which builds on ops.py). The package imports this module
# first; these are imported here, last, once everything they (and the modules they load) use
# from this module exists. No class or function is injected from above.
from .higher_order import graph_rule as _graph_rule  # noqa: E402
from .tensor import Tensor  # noqa: E402
from .versions import check_versions as _check_versions  # noqa: E402
