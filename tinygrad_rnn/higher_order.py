"""Gradients as values: ``tg.grad``, and backward run on Tensors so a gradient can be
differentiated again (``create_graph=True``).

Why a module of its own: the walk in autograd.py is the whole algorithm, for first-order
gradients and for every higher order alike. What is here decides what the walk is given:
`grad` starts it from several outputs and collects the gradients of chosen inputs (leaves or
intermediate tensors) instead of filling ``.grad``, walking only the nodes that lead to them;
`graph_rule` is the rule the walk runs for a node under ``create_graph``: the node's own
backward, interpreted on Tensors (`ops.TensorMath`), so its gradient is recorded on the tape.
It builds on ops.py, above autograd.py, which imports it last (see the end of autograd.py).
"""

import numpy as np

from .autograd import Function, _as_array, _named, _output, _seed_grad, _walk, _walking
from .ops import TensorMath
from .tensor import Tensor


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
        _walk(roots, seeds, retain_graph, create_graph, capture, _nodes_leading_to(roots, capture))
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


# --- backward on Tensors (create_graph) -------------------------------------------------------

def graph_rule(ctx, outs):
    """``ctx``'s backward as a function of Tensors: run on a copy of the node whose saved
    inputs and output are the graph's Tensors, so every op of the rule is recorded.

    The output Tensor comes from the walk (the tensor the gradient arrived through), not
    from the node: a node never holds its output, so there is no node -> output -> node
    reference cycle, and the copy lives only while the rule runs.
    """
    if not ctx.differentiable_backward:
        return _once_differentiable(ctx)
    view = object.__new__(type(ctx))
    view.__dict__.update(ctx.__dict__)
    view.xp = TensorMath
    for name, p in zip(ctx.saved_inputs, ctx.parents):
        if name is not None:
            setattr(view, name, p)
    if ctx.saved_output is not None:
        setattr(view, ctx.saved_output, outs[0])

    def rule(*grads):
        return tuple(_as_tensor(g) for g in view.backward(*grads))
    return rule


def _as_tensor(g):
    if type(g) is np.ndarray:
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
