"""The tape: `Function` (one op's forward and backward, side by side) and the backward walk.

Every op applied to tensors that require grad creates one `Function` instance: a node of
the tape. It keeps its inputs (``parents``) and whatever its forward saved for backward.
``Tensor.backward`` calls `backward`, which walks the nodes in reverse topological order
without recursion (a 10,000-step unroll is a 100,000-node chain), hands each node the
gradient of its output, and sums the gradients it returns into its inputs. A leaf used
many times (a shared RNN weight) simply receives the sum: weight sharing is gradient
accumulation.
"""

import threading

import numpy as np


class ShapeError(ValueError):
    """An op got inputs of incompatible shapes; the message names the op and the shapes."""


# --- grad mode ---------------------------------------------------------------------------

_grad_mode = threading.local()


def is_grad_enabled():
    return getattr(_grad_mode, "enabled", True)


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

class Function:
    """One primitive op: ``forward(*arrays, **attrs) -> array`` and ``backward(grad)``.

    ``backward`` returns one gradient per input (``None`` where ``needs_input_grad`` is
    False), each already reduced to that input's shape. Subclasses keep what backward needs
    as attributes of ``self``; the instance is the tape node.
    """

    name = None              # printed in errors and traces; defaults to the class name
    parents = ()
    needs_input_grad = ()
    freed = False

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
        """Run forward on the tensors' data and, if any input requires grad, record a node."""
        ctx = cls()
        requires_grad = False
        if getattr(_grad_mode, "enabled", True):
            needs = tuple(t.requires_grad for t in tensors)
            requires_grad = True in needs
            if requires_grad:
                ctx.parents = tensors
                ctx.needs_input_grad = needs
        arrays = [t.data for t in tensors]
        try:
            data = ctx.forward(*arrays, **attrs)
        except (ValueError, IndexError, TypeError) as exc:
            raise ShapeError(cls.describe_error(arrays, attrs, exc)) from None
        out = tensors[0]._from_op(data, ctx if requires_grad else None, requires_grad)
        if _observers:
            for obs in list(_observers):
                obs.on_forward(ctx, tensors, out)
        return out

    def release(self):
        """Drop the saved arrays and the inputs; a later backward through here is an error."""
        self.__dict__.clear()
        self.freed = True


# --- the backward walk -------------------------------------------------------------------

def _graph_freed_error(t):
    op = type(t._ctx).op_name()
    return RuntimeError(
        f"backward: the graph through '{op}' (output shape {t.shape}) was already freed by an "
        "earlier backward. Pass retain_graph=True to the first backward to go through it "
        "twice, or detach the state between truncated-BPTT windows (tg.detach_state).")


def backward(root, grad, retain_graph=False):
    """Back-propagate ``grad`` (the gradient of some loss w.r.t. ``root``) through the tape.

    Reverse topological order by child counting (HIPS autograd): first count, for every
    tensor, how many recorded uses lead back to it; then a tensor is processed once all its
    uses have delivered their gradient. Intermediate gradients are dropped once consumed.
    """
    # Pass 1: count the uses of every tensor reachable from root.
    uses = {}
    seen = {id(root)}
    stack = [root]
    while stack:
        t = stack.pop()
        ctx = t._ctx
        if ctx is None:
            continue
        if ctx.freed:
            raise _graph_freed_error(t)
        for p in ctx.parents:
            if p.requires_grad:
                k = id(p)
                uses[k] = uses.get(k, 0) + 1
                if k not in seen:
                    seen.add(k)
                    stack.append(p)

    # Pass 2: propagate.
    grads = {id(root): grad}
    ready = [root]
    observers = list(_observers)
    while ready:
        t = ready.pop()
        g = grads.pop(id(t), None)
        ctx = t._ctx
        if g is not None:
            if t._hooks:
                for hook in t._hooks:
                    replaced = hook(g)
                    if replaced is not None:
                        g = _check_hook_grad(t, replaced)
            if ctx is None or t._retain:
                t._accumulate_grad(g)
        if ctx is None:
            continue
        if ctx.freed:
            raise _graph_freed_error(t)
        in_grads = ctx.backward(g) if g is not None else (None,) * len(ctx.parents)
        if observers and g is not None:
            for obs in observers:
                obs.on_backward(ctx, g, in_grads, t)
        parents = ctx.parents
        if not retain_graph:
            ctx.release()
        for p, pg in zip(parents, in_grads):
            if not p.requires_grad:
                continue
            k = id(p)
            if pg is not None:
                prev = grads.get(k)
                grads[k] = pg if prev is None else prev + pg
            n = uses[k] - 1
            uses[k] = n
            if n == 0:
                ready.append(p)


def _check_hook_grad(t, g):
    g = np.asarray(g)
    if g.shape != t.shape:
        raise ShapeError(f"hook: returned a gradient of shape {g.shape} for a tensor of shape "
                         f"{t.shape}; a hook must return None or an array of the tensor's shape")
    return g.astype(t.dtype, copy=False)
