"""Functional transforms over the tape: ``tg.func.grad``, ``value_and_grad``, ``vjp``, ``jvp``,
``hvp``, ``jacobian``, ``hessian`` (the vocabulary of ``jax`` and ``torch.func``).

``f`` takes Tensors and returns a Tensor or a nested tuple of Tensors. Each transform runs
``f`` once on the tape and differentiates it with `tg.grad` with respect to the arguments: an
argument that requires grad (a Parameter) is differentiated as itself, so ``f`` may also read
it from its closure (``lambda *ps: loss(model)``); any other becomes a fresh leaf sharing its
data.

The results compose (``grad(grad(f))``, ``hessian = jacobian(grad(f))``): a transform called
inside another one, or on an argument computed by ops on the tape (not a leaf), records its
own backward (``create_graph=True``), so its result can be differentiated again. At the top
level on leaves it records nothing beyond ``f``'s forward and frees the graph as it goes
(the fast path); to differentiate such a result with ``tg.grad``, use
``tg.grad(..., create_graph=True)`` instead.
"""

import threading

import numpy as np

from .functional import stack
from .grad_mode import enable_grad, is_grad_enabled
from .higher_order import grad as _grad
from .rnn.cell import tree_leaves, tree_map
from .tensor import Tensor

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "hvp", "jacobian", "hessian"]


# --- helpers ----------------------------------------------------------------------------------

def _as_tensor(x, who):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, float, int, list)) and not isinstance(x, bool):
        return Tensor(np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32)))
    raise TypeError(f"{who}: expected Tensors (or arrays, numbers), got {type(x).__name__}")


class _Depth(threading.local):
    value = 0            # how many transforms are running f right now (in this thread)


_depth = _Depth()


def _primals(args, who):
    """``(leaves, nested)``: the tensors to differentiate with respect to, one per argument
    leaf, and whether the result must be on the tape (see the module docstring)."""
    tensors = [_as_tensor(x, who) for x in args]
    for x in tensors:
        if x.dtype.kind not in "fc":
            raise TypeError(f"{who}: can only differentiate with respect to floating tensors, got "
                            f"dtype {x.dtype} (shape {x.shape})")
    nested = is_grad_enabled() and (_depth.value > 0 or
                                    any(x.requires_grad and not x.is_leaf for x in tensors))
    return [x if x.requires_grad else Tensor._from_op(x.data, None, True) for x in tensors], nested


def _argnums(argnums, n_args, who):
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    for k in nums:
        if not -n_args <= k < n_args:
            raise ValueError(f"{who}: argnums {argnums} is out of range for {n_args} arguments")
    return tuple(k % n_args for k in nums), single


def _call(f, args, argnums, who):
    """Run ``f`` with the arguments at ``argnums`` replaced by differentiable tensors (each
    argument may be a nested tuple of Tensors). Returns (out, [argument trees], leaves, nested)."""
    args = list(args)
    trees = [args[k] for k in argnums]
    leaves, nested = _primals([leaf for tree in trees for leaf in tree_leaves(tree)], who)
    it = iter(leaves)
    new_trees = [tree_map(lambda _: next(it), tree) for tree in trees]
    for k, tree in zip(argnums, new_trees):
        args[k] = tree
    _depth.value += 1
    try:
        with enable_grad():
            out = f(*args)
    finally:
        _depth.value -= 1
    return out, new_trees, leaves, nested


def _unflatten(trees, flat):
    """Give ``flat`` (one entry per leaf of ``trees``) the nesting of ``trees``."""
    it = iter(flat)
    return [tree_map(lambda _: next(it), tree) for tree in trees]


def _zeros_like(x):
    return Tensor(np.zeros(x.shape, dtype=x.dtype))


def _scalar_output(out, who):
    if not isinstance(out, Tensor) or out.data.size != 1:
        shape = out.shape if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{who}: f must return a single-element Tensor (a scalar loss), got "
                         f"{shape}; use tg.func.vjp or jacobian for other outputs")
    return out


def _gradients(outputs, leaves, grad_outputs, create_graph, retain_graph=True):
    """The gradient of each leaf (zeros where unused), on the tape if ``create_graph``. A
    last pass frees the graph as it goes (``retain_graph=False``): less memory, and faster."""
    live = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not live:
        return [_zeros_like(x) for x in leaves]
    grads = _grad([o for o, _ in live], leaves, grad_outputs=[g for _, g in live],
                  retain_graph=retain_graph or create_graph, create_graph=create_graph,
                  allow_unused=True)
    return [_zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def _pick(trees, single):
    return trees[0] if single else tuple(trees)


# --- the transforms ----------------------------------------------------------------------------

def value_and_grad(f, argnums=0):
    """``value_and_grad(f)(*args) -> (f(*args), gradient)``: the gradient of a scalar ``f``
    with respect to ``args[argnums]`` (an int: one gradient; a tuple: a tuple of them), each
    with the nesting of its argument."""
    def wrapper(*args):
        nums, single = _argnums(argnums, len(args), "value_and_grad")
        out, trees, leaves, nested = _call(f, args, nums, "value_and_grad")
        out = _scalar_output(out, "value_and_grad")
        grads = _gradients([out], leaves, [None], nested, retain_graph=nested)
        return out, _pick(_unflatten(trees, grads), single)
    return wrapper


def grad(f, argnums=0):
    """``grad(f)(*args)``: the gradient of a scalar ``f`` with respect to ``args[argnums]``.
    ``grad(grad(f))`` is the second derivative (of a function of one scalar)."""
    value_and_grad_f = value_and_grad(f, argnums)

    def wrapper(*args):
        return value_and_grad_f(*args)[1]
    return wrapper


def vjp(f, *primals):
    """``(out, vjp_fn) = vjp(f, *primals)``: ``out = f(*primals)`` and ``vjp_fn(cotangents)``,
    with the nesting of ``out``, returns ``J^T cotangents`` for every primal (a tuple, one
    per primal, each with its nesting). One backward per call; ``vjp_fn`` may be called
    again (the graph is retained)."""
    nums = tuple(range(len(primals)))
    out, trees, leaves, nested = _call(f, primals, nums, "vjp")
    outputs = tree_leaves(out)

    def vjp_fn(cotangents):
        cts = tree_leaves(cotangents)
        if len(cts) != len(outputs):
            raise ValueError(f"vjp_fn: got {len(cts)} cotangents for {len(outputs)} outputs")
        cts = [_as_tensor(c, "vjp_fn") for c in cts]
        for o, c in zip(outputs, cts):
            if c.shape != o.shape:
                raise ValueError(f"vjp_fn: a cotangent has shape {c.shape}, its output {o.shape}")
        create = nested or any(c.requires_grad for c in cts)
        grads = _gradients(outputs, leaves, cts, create)
        return tuple(_unflatten(trees, grads))
    return out, vjp_fn


def jvp(f, primals, tangents):
    """``(out, tangents_out) = jvp(f, primals, tangents)``: ``f(*primals)`` and the
    directional derivative ``J t`` (forward mode), with the nesting of ``out``.

    Computed by the double-vjp trick, not a forward-mode interpreter: ``J^T u`` is recorded
    for a dummy cotangent ``u`` (a backward with ``create_graph``), and since it is linear in
    ``u``, its vjp with ``t`` is ``J t``. The cost: one forward, one recording backward and
    one backward through that gradient's graph, about 3-4 times a plain vjp, whatever the
    number of outputs (a true forward mode would be about 1.5 forwards).
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"jvp: got {len(primals)} primals but {len(tangents)} tangents")
    nums = tuple(range(len(primals)))
    out, trees, leaves, nested = _call(f, primals, nums, "jvp")
    tans = [_as_tensor(t, "jvp") for t in tree_leaves(tangents)]
    if len(tans) != len(leaves) or any(t.shape != x.shape for t, x in zip(tans, leaves)):
        raise ValueError(f"jvp: tangents must match the primals' structure and shapes "
                         f"{[x.shape for x in leaves]}, got {[t.shape for t in tans]}")
    outputs = tree_leaves(out)
    dummies = [Tensor._from_op(np.zeros(o.shape, dtype=o.dtype), None, True) for o in outputs]
    vjps = _gradients(outputs, leaves, dummies, create_graph=True)   # J^T u, linear in u
    total = None
    for g, t in zip(vjps, tans):
        if g.requires_grad:
            term = (g * t).sum()
            total = term if total is None else total + term
    if total is None:
        tangents_out = [_zeros_like(o) for o in outputs]
    else:
        tangents_out = _grad(total, dummies, create_graph=nested or any(t.requires_grad for t in tans),
                             retain_graph=nested, allow_unused=True)
        tangents_out = [_zeros_like(o) if g is None else g for g, o in zip(tangents_out, outputs)]
    return out, _unflatten([out], tangents_out)[0]


def hvp(f, primals, tangents):
    """``(value, Hv) = hvp(f, primals, tangents)``: a scalar ``f(*primals)`` and its Hessian
    times ``tangents`` (with the primals' nesting), by reverse over reverse: the gradient is
    recorded (``create_graph``), then differentiated along ``v`` (``H`` is symmetric, so the
    vjp of the gradient is ``Hv``). About one forward and three backwards."""
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"hvp: got {len(primals)} primals but {len(tangents)} tangents")
    nums = tuple(range(len(primals)))
    out, trees, leaves, nested = _call(f, primals, nums, "hvp")
    out = _scalar_output(out, "hvp")
    tans = [_as_tensor(t, "hvp") for t in tree_leaves(tangents)]
    if len(tans) != len(leaves) or any(t.shape != x.shape for t, x in zip(tans, leaves)):
        raise ValueError(f"hvp: tangents must match the primals' structure and shapes "
                         f"{[x.shape for x in leaves]}, got {[t.shape for t in tans]}")
    grads = _gradients([out], leaves, [None], create_graph=True)
    products = _gradients(grads, leaves, tans, create_graph=nested, retain_graph=nested)
    return out, tuple(_unflatten(trees, products))


def jacobian(f, argnums=0):
    """``jacobian(f)(*args)``: for each output of ``f`` (with its nesting), ``d out / d arg``
    of shape ``out.shape + arg.shape`` (a tuple over ``argnums`` if it is a tuple). Reverse
    mode: one backward per output element."""
    def wrapper(*args):
        nums, single = _argnums(argnums, len(args), "jacobian")
        out, trees, leaves, nested = _call(f, args, nums, "jacobian")
        per_output = []
        for o in tree_leaves(out):
            rows = []
            for k in range(o.data.size):
                onehot = np.zeros(o.data.size, dtype=o.dtype)
                onehot[k] = 1
                rows.append(_gradients([o], leaves, [Tensor(onehot.reshape(o.shape))], nested))
            blocks = []
            for j, x in enumerate(leaves):
                if rows:
                    blocks.append(stack([row[j] for row in rows]).reshape(o.shape + x.shape))
                else:                                           # an empty output
                    blocks.append(Tensor(np.zeros(o.shape + x.shape, dtype=x.dtype)))
            per_output.append(_pick(_unflatten(trees, blocks), single))
        return _unflatten([out], per_output)[0]
    return wrapper


def hessian(f, argnums=0):
    """``hessian(f)(*args)``: the matrix of second derivatives of a scalar ``f``,
    ``jacobian(grad(f))``, of shape ``arg.shape + arg.shape``."""
    return jacobian(grad(f, argnums), argnums)
