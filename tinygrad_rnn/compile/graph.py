"""Trace a cell's step once into a small op graph, then sort and rewrite its values.

Tracing runs ``cell(x, state)`` eagerly, on random Tensors that all require grad, with an
autograd observer that records every op applied (its Function class, inputs, outputs, the
keyword arguments recovered by its rule, and the line of the cell that applied it). Tensors
that no recorded op made are leaves: the input ``x``, the state's leaves, and everything
else (Parameters, constants), which is loop-invariant.

Each value is then one of three kinds (JAX's partial evaluation of ``scan``):
``invariant`` (depends on neither x nor the state: weights, constants, and ops of them),
``perstep`` (depends on x but not on the state: hoisted out of the loop and run once over all
T·B rows), ``carry`` (depends on the state: inside the loop).
"""

import contextlib

import numpy as np

from .. import kernels, observers
from ..grad_mode import enable_grad
from ..inspect._common import user_site
from ..ops import Add, GetItem, Linear, MatMul
from ..rnn.cell import tree_leaves, tree_map
from ..tensor import Tensor
from . import rules

INVARIANT, PERSTEP, CARRY = 0, 1, 2
KIND_NAMES = ("invariant", "perstep", "carry")


class CompileError(Exception):
    """The cell uses something the compiler cannot run inside its loop (names the op and
    the cell's line); `tg.compile(cell)` then runs eager, ``fallback=False`` raises this."""


class Value:
    """One array of the traced step. ``source``: "x", "state", "leaf" or "op"."""

    def __init__(self, source, shape, dtype, tensor=None, node=None, index=0, state_index=None):
        self.source, self.shape, self.dtype = source, tuple(shape), np.dtype(dtype)
        self.tensor = tensor            # leaves: the Tensor itself (its .data is read per call)
        self.node, self.index = node, index
        self.state_index = state_index
        self.kind = None
        self.requires_grad = tensor.requires_grad if tensor is not None else True
        # Set by codegen.Layout: number, the array holding it (a view's base) and column
        # offset, its fused group, and whether it gets an array / keeps it for backward.
        self.num, self.base, self.col, self.group = None, self, 0, None
        self.stored = self.saved = self.has_adjoint = False

    def __repr__(self):
        kind = KIND_NAMES[self.kind] if self.kind is not None else "?"
        return f"Value({self.source}, {self.shape}, {kind})"


class Node:
    def __init__(self, op, inputs, attrs, site, n_outputs=1, outputs=None):
        self.op, self.inputs, self.attrs, self.site = op, list(inputs), dict(attrs), site
        self.rule = rules.rule_for(op)
        self.outputs = outputs if outputs is not None else [None] * n_outputs

    @property
    def name(self):
        return getattr(self.op, "op_name", lambda: self.op.__name__.lower())()

    def __repr__(self):
        return f"Node({self.name}, {self.inputs} -> {self.outputs})"


class Graph:
    def __init__(self, x, states, nodes, output_tree, state_tree, batch):
        self.x, self.states, self.nodes = x, states, nodes
        self.output_tree, self.state_tree = output_tree, state_tree
        self.batch = batch

    @property
    def results(self):
        return tree_leaves(self.output_tree) + tree_leaves(self.state_tree)


class _Recorder:
    """The autograd observer of one trace: every op applied, in order."""

    def __init__(self):
        self.events = []

    def on_forward(self, ctx, inputs, out):
        outs = out if isinstance(out, tuple) else (out,)
        rule = rules.rule_for(type(ctx))
        attrs = rule.attrs(ctx, outs[0]) if rule is not None else {}
        self.events.append((type(ctx), list(inputs), outs, attrs, user_site()))

    def on_backward(self, ctx, out_grads, in_grads, outs):
        pass


@contextlib.contextmanager
def _reference_kernels():
    """The trace needs the graph, not speed: run its ops on the numpy reference kernels, so
    a process that only runs compiled sequences never builds the eager Numba ufuncs (the
    sigmoid's took 1.3 s of a 1.7 s warm start). Same values to rounding; restored after."""
    names = [n for n in vars(kernels.numpy_kernels) if not n.startswith("_")]
    fast = {n: getattr(kernels, n) for n in names}
    try:
        for n in names:
            setattr(kernels, n, getattr(kernels.numpy_kernels, n))
        yield
    finally:
        for n, f in fast.items():
            setattr(kernels, n, f)


def trace(cell, batch, input_size, dtype, state_template, seed):
    """Run one step of ``cell`` and return its `Graph` (unpruned, unclassified)."""
    rng = np.random.default_rng(seed)
    x = Tensor(rng.uniform(-1, 1, (batch, input_size)).astype(dtype), requires_grad=True)
    state = tree_map(lambda s: Tensor(rng.uniform(-1, 1, s.shape).astype(s.dtype),
                                      requires_grad=True), state_template)
    recorder = _Recorder()
    with enable_grad(), _reference_kernels():
        observers.add_observer(recorder)
        try:
            out, new_state = cell(x, state)
        finally:
            observers.remove_observer(recorder)
    values = {id(x): Value("x", x.shape, x.dtype, tensor=x)}
    states = []
    for k, s in enumerate(tree_leaves(state)):
        values[id(s)] = Value("state", s.shape, s.dtype, tensor=s, state_index=k)
        states.append(values[id(s)])
    # (The recorder holds every tensor until we return, so no id is reused meanwhile.)
    nodes = []
    for op, inputs, outs, attrs, site in recorder.events:
        ins = []
        for t in inputs:
            v = values.get(id(t))
            if v is None:
                v = values[id(t)] = Value("leaf", t.shape, t.dtype, tensor=t)
            ins.append(v)
        node = Node(op, ins, attrs, site, n_outputs=len(outs))
        for i, t in enumerate(outs):
            node.outputs[i] = values[id(t)] = Value("op", t.shape, t.dtype, node=node, index=i)
        nodes.append(node)

    def as_value(t):
        if not isinstance(t, Tensor):
            raise CompileError(f"the cell returned a {type(t).__name__}, not a Tensor")
        v = values.get(id(t))
        if v is None:                          # a Tensor made without any op: a constant
            v = values[id(t)] = Value("leaf", t.shape, t.dtype, tensor=t)
        return v

    graph = Graph(values[id(x)], states, nodes, tree_map(as_value, out),
                  tree_map(as_value, new_state), batch)
    graph.constants = [v for v in values.values()
                       if v.source == "leaf" and not v.tensor.requires_grad]
    return graph


def prune(graph):
    """Keep only the nodes that the results depend on (in their order)."""
    live = set()
    stack = [v for v in graph.results if v.node is not None]
    while stack:
        node = stack.pop().node
        if id(node) in live:
            continue
        live.add(id(node))
        stack.extend(v for v in node.inputs if v.node is not None)
    graph.nodes = [n for n in graph.nodes if id(n) in live]


def classify(graph):
    graph.x.kind = PERSTEP
    for s in graph.states:
        s.kind = CARRY
    for node in graph.nodes:
        for v in node.inputs:
            if v.kind is None:                 # a leaf: weights and constants
                v.kind = INVARIANT
        kind = max(v.kind for v in node.inputs)
        for out in node.outputs:
            out.kind = kind
    for v in graph.results:
        if v.kind is None:
            v.kind = INVARIANT


def _where(node):
    return f" (at {node.site})" if node.site else ""


def check(graph):
    """Raise CompileError naming the first op the generated loop cannot run."""
    B = graph.batch
    for node in graph.nodes:
        out = node.outputs[0]
        if node.rule is None:
            raise CompileError(f"op '{node.name}'{_where(node)} has no compile rule")
        if out.kind == INVARIANT:
            continue                            # run by the op itself, before the loop
        what = f"op '{node.name}'{_where(node)} on the {KIND_NAMES[out.kind]} values"
        if node.rule.kind == "outside":
            raise CompileError(f"{what}: the compiler runs it only on loop-invariant values "
                               "(weights), not inside the recurrence")
        for v in node.outputs + [v for v in node.inputs if v.kind != INVARIANT]:
            if len(v.shape) != 2 or v.shape[0] != B or v.dtype != graph.x.dtype:
                raise CompileError(f"{what}: every value that depends on x or the state must "
                                   f"be (B, n) = ({B}, n) of dtype {graph.x.dtype}, got shape "
                                   f"{v.shape} and dtype {v.dtype}")
        _check_structural(node, what)


def _check_structural(node, what):
    op, a = node.op, node.inputs[0]
    if op in (Linear, MatMul):
        if any(v.kind != INVARIANT for v in node.inputs[1:]):
            raise CompileError(f"{what}: the weight (and bias) must be loop-invariant")
        if len(node.inputs[1].shape) != 2:
            raise CompileError(f"{what}: the weight must be 2-D, got {node.inputs[1].shape}")
    elif op.__name__ == "Split" and node.attrs["axis"] != 1:
        raise CompileError(f"{what}: split/chunk only along the feature axis (-1)")
    elif op.__name__ == "Cat" and node.attrs["axis"] not in (1, -1):
        raise CompileError(f"{what}: cat only along the feature axis (-1)")
    elif op is GetItem and column_slice(node.attrs["index"], a.shape) is None:
        raise CompileError(f"{what}: indexing inside the loop must be a column slice "
                           f"x[:, start:stop], got {node.attrs['index']!r}")
    elif op.__name__ in ("Sum", "Max") and (node.attrs["axis"] != (1,) or not node.attrs["keepdims"]):
        raise CompileError(f"{what}: reductions inside the loop must be over the feature axis "
                           "with keepdims=True")


def column_slice(index, shape):
    """(start, stop) if ``index`` takes all rows and a step-1 slice of the columns, else None."""
    index = tuple(index)
    if index and index[0] is Ellipsis:
        index = (slice(None),) * (len(shape) - len(index) + 1) + index[1:]
    if len(index) == 1:
        index = index + (slice(None),)
    if len(index) != 2 or not all(isinstance(i, slice) for i in index):
        return None
    rows, cols = index
    if rows != slice(None):
        return None
    start, stop, step = cols.indices(shape[1])
    if step != 1 or stop <= start:
        return None
    return start, stop


# --- rewrites ----------------------------------------------------------------------------

def _op_value(node, shape, dtype, index=0):
    v = Value("op", shape, dtype, node=node, index=index)
    node.outputs[index] = v
    return v


def split_linear_of_cat(graph):
    """``linear(cat([x_part, h_part]), W, b)`` -> ``linear(x_part, W[:, :I], b) +
    linear(h_part, W[:, I:])``, so that the x part is hoisted (the MGU's gates)."""
    new_nodes = []
    for node in graph.nodes:
        a = node.inputs[0]
        cat = a.node
        if not (node.op is Linear and a.kind == CARRY and cat is not None
                and cat.op.__name__ == "Cat" and cat.attrs["axis"] in (1, -1)
                and len(a.shape) == 2 and any(p.kind != CARRY for p in cat.inputs)):
            new_nodes.append(node)
            continue
        W = node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        out = node.outputs[0]
        terms, off = [], 0
        for part in cat.inputs:
            n = part.shape[1]
            take = GetItem, [W], {"index": (slice(None), slice(off, off + n))}
            get = Node(*take, node.site)
            w_part = _op_value(get, (W.shape[0], n), W.dtype)
            w_part.kind = INVARIANT
            new_nodes.append(get)
            terms.append((part, w_part))
            off += n
        terms.sort(key=lambda t: t[0].kind)     # the hoisted terms first, bias on the first
        acc = None
        for k, (part, w_part) in enumerate(terms):
            args = [part, w_part] + ([bias] if k == 0 and bias is not None else [])
            lin = Node(Linear, args, {}, node.site)
            term = _op_value(lin, out.shape, out.dtype)
            term.kind = max(v.kind for v in args)
            new_nodes.append(lin)
            if acc is None:
                acc = term
                continue
            add = Node(Add, [acc, term], {}, node.site)
            if k == len(terms) - 1:
                add.outputs[0] = out            # the consumers keep their input
                out.node = add
            else:
                _op_value(add, out.shape, out.dtype)
            add.outputs[0].kind = max(acc.kind, term.kind)
            new_nodes.append(add)
            acc = add.outputs[0]
    graph.nodes = new_nodes


def lower_gemms(graph):
    """Inside the loop a Linear is a GEMM plus an elementwise bias add (which fuses)."""
    new_nodes = []
    for node in graph.nodes:
        if node.op is Linear and len(node.inputs) == 3 and node.outputs[0].kind == CARRY:
            out = node.outputs[0]
            gemm = Node(Linear, node.inputs[:2], {}, node.site)
            product = _op_value(gemm, out.shape, out.dtype)
            product.kind = CARRY
            add = Node(Add, [product, node.inputs[2]], {}, node.site)
            add.outputs[0] = out
            out.node = add
            new_nodes += [gemm, add]
        else:
            new_nodes.append(node)
    graph.nodes = new_nodes


def build(cell, batch, input_size, dtype, state_template):
    """The graph the code generator reads; raises CompileError if it cannot be compiled.

    Traced twice on different random inputs: a constant whose data differs between the two
    (a mask computed from the state with ``h > 0``, a random draw) depends on the data and
    would be frozen by the trace, so it is refused.
    """
    graph = trace(cell, batch, input_size, dtype, state_template, seed=1)
    again = trace(cell, batch, input_size, dtype, state_template, seed=2)
    if len(again.constants) != len(graph.constants) or any(
            a.shape != b.shape or not np.array_equal(a.tensor.data, b.tensor.data)
            for a, b in zip(graph.constants, again.constants)):
        raise CompileError("a constant of the step changes with the input data (a comparison "
                           "such as h > 0 used as a mask, or a random draw such as dropout in "
                           "training mode): a trace would freeze it")
    prune(graph)
    classify(graph)
    split_linear_of_cat(graph)
    prune(graph)
    lower_gemms(graph)
    check(graph)
    return graph
