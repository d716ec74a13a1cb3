"""The compiler's derivative-rule table: one entry per primitive op of `tinygrad_rnn.ops`.

Each entry says how the compiler may use the op:

- ``elementwise``: the op runs inside the fused loops. ``forward`` is a scalar expression of
  the inputs (``{a}``, ``{b}``, ``{m}`` for a mask), ``grads`` one scalar expression per input
  for its share of the adjoint, in terms of the output's adjoint ``{g}``, the inputs and the
  output ``{y}`` (None: the input gets no gradient). The names are the generated code's math
  helpers (`tinygrad_rnn._numba_math`); the same text evaluated with numpy arrays is checked
  against the op's eager backward by tests/test_compile_rules.py, so the two cannot drift.
- ``structural``: a shape op the code generator lays out itself (a GEMM, views for split and
  column slices, a concatenation, a reduction over the feature axis).
- ``outside``: allowed only where it does not depend on the carried state; such values are
  computed before the loop by running the op itself (loop-invariant weights, the hoisted
  per-step inputs).

``attrs(ctx, out)`` recovers an op's keyword arguments from a recorded node, so the compiler
can apply it again to new inputs (the hoisted per-step ops run once over all T·B rows).
"""

import re

import numpy as np

from .. import ops


class Rule:
    def __init__(self, op, kind, attrs=None, forward=None, grads=(), inputs=("a",)):
        self.op, self.kind = op, kind
        self._attrs = attrs
        self.forward, self.grads, self.inputs = forward, tuple(grads), tuple(inputs)

    def attrs(self, ctx, out):
        return {} if self._attrs is None else self._attrs(ctx, out)

    @property
    def needs(self):
        """Names (inputs, ``y``) that the adjoint expressions read: what forward must save."""
        found = set()
        for g in self.grads:
            if g is not None:
                found.update(re.findall(r"\{(\w+)\}", g))
        return found - {"g"}

    def __repr__(self):
        return f"Rule({self.op.__name__}, {self.kind})"


def _ew(op, forward, *grads, inputs=None):
    names = inputs or ("a", "b")[:len(grads)]
    return Rule(op, "elementwise", forward=forward, grads=grads, inputs=names)


class Copy:
    """The identity, inserted by the compiler where a GEMM needs a contiguous copy of a view."""

    __name__ = "Copy"


def _axes(ctx, out):
    return {"axis": ctx.axes, "keepdims": ctx.keepdims}


RULES = {rule.op: rule for rule in [
    _ew(ops.Add, "{a} + {b}", "{g}", "{g}"),
    _ew(ops.Sub, "{a} - {b}", "{g}", "-{g}"),
    _ew(ops.Mul, "{a} * {b}", "{g} * {b}", "{g} * {a}"),
    _ew(ops.Div, "{a} / {b}", "{g} / {b}", "-{g} * {y} / {b}"),
    _ew(ops.Pow, "{a} ** {b}", "{g} * {b} * {a} ** ({b} - 1.0)", "{g} * {y} * log({a})"),
    _ew(ops.Neg, "-{a}", "-{g}"),
    _ew(ops.Tanh, "tanh({a})", "{g} * (1.0 - {y} * {y})"),
    _ew(ops.Sigmoid, "sigmoid({a})", "{g} * {y} * (1.0 - {y})"),
    _ew(ops.Relu, "relu({a})", "select({a} > 0.0, {g}, 0.0)"),
    _ew(ops.Exp, "exp({a})", "{g} * {y}"),
    _ew(ops.Log, "log({a})", "{g} / {a}"),
    _ew(ops.Sqrt, "sqrt({a})", "{g} * 0.5 / {y}"),
    _ew(ops.Abs, "abs({a})", "{g} * sign({a})"),
    _ew(ops.Where, "select({m}, {a}, {b})", None, "select({m}, {g}, 0.0)",
        "select({m}, 0.0, {g})", inputs=("m", "a", "b")),
    _ew(Copy, "{a}", "{g}"),
    Rule(ops.Linear, "structural"),
    Rule(ops.MatMul, "structural"),
    Rule(ops.Split, "structural", lambda ctx, out: {"sizes": ctx.sizes, "axis": ctx.axis}),
    Rule(ops.Cat, "structural", lambda ctx, out: {"axis": ctx.axis}),
    Rule(ops.GetItem, "structural", lambda ctx, out: {"index": ctx.index}),
    Rule(ops.Sum, "structural", _axes),
    Rule(ops.Max, "structural", _axes),
    Rule(ops.Cast, "outside", lambda ctx, out: {"dtype": out.dtype}),
    Rule(ops.Reshape, "outside", lambda ctx, out: {"shape": out.shape}),
    Rule(ops.Transpose, "outside", lambda ctx, out: {"axes": ctx.axes}),
    Rule(ops.Stack, "outside", lambda ctx, out: {"axis": ctx.axis}),
    Rule(ops.Unbind, "outside", lambda ctx, out: {"axis": ctx.axis}),
    Rule(ops.Softmax, "outside", lambda ctx, out: {"axis": ctx.axis}),
    Rule(ops.LogSoftmax, "outside", lambda ctx, out: {"axis": ctx.axis}),
    Rule(ops.ScatterAdd, "outside",        # getitem's gradient, met only in second-order graphs
         lambda ctx, out: {"shape": out.shape, "dtype": out.dtype, "index": ctx.index}),
    Rule(ops.LinearScan, "outside", lambda ctx, out: {"reverse": ctx.reverse}),   # over time
]}


def rule_for(op):
    """The rule of a Function class, or None (the compiler then falls back to eager)."""
    return RULES.get(op)


# The math the rules' text may call, as numpy functions: the reference interpretation of the
# same expressions that the generated Numba code runs with `_numba_math`'s helpers.
def numpy_namespace():
    from ..kernels import numpy_kernels
    return {"tanh": np.tanh, "sigmoid": numpy_kernels.sigmoid, "exp": np.exp, "log": np.log,
            "sqrt": np.sqrt, "abs": np.abs, "relu": lambda a: np.maximum(a, 0),
            "sign": np.sign, "select": np.where}
