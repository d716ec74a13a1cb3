"""``with trace() as t:`` records the tape as it is written and as it is walked back.

Every op applied in forward becomes one numbered line (``#3 tanh  t2 (2, 4) -> t3 (2, 4)``)
and every backward call one line naming the same number, so a learner can follow the
gradient from the loss back to each parameter. Tensors are labelled ``t<n>`` (made by an op
inside the trace), by parameter name (pass ``names=model``), by value (a Python scalar) or
``in<n>`` (anything else that enters from outside).

    with trace(names=rnn) as t:
        ys, _ = rnn(xs)
        ys.sum().backward()
    print(t)
"""

import weakref
from dataclasses import dataclass, field

from .._display import html_table
from ._common import ObserverContext, annotate, describe_scope, fmt_shape, parameter_names, scope_of


@dataclass
class TapeRecord:
    """One line of the tape: a forward op or a backward call.

    ``node`` is the op's number in the forward order (None for a backward through a node
    recorded before the trace began). ``inputs``/``outputs`` are (label, shape) pairs; in
    a backward record they are the gradients (shape None where no gradient flows) and
    ``accumulates`` lists the labels of leaves whose ``.grad`` receives one.
    """

    phase: str
    node: int
    op: str
    inputs: list
    outputs: list
    dtype: str = ""
    step: int = None
    layer: int = None
    on_tape: bool = True
    accumulates: list = field(default_factory=list)

    @property
    def number(self):
        return f"#{self.node}" if self.node is not None else "#?"

    def sides(self):
        """The two sides of the arrow, as text: inputs -> outputs in forward; the gradients
        arriving at the op's outputs -> those it passes to its inputs in backward."""
        if self.phase == "forward":
            ins = ", ".join(lab if s == () and _is_number(lab) else f"{lab} {fmt_shape(s)}"
                            for lab, s in self.inputs)
            outs = ", ".join(f"{lab} {fmt_shape(s)}" for lab, s in self.outputs)
            return ins, outs
        outs = ", ".join(f"dL/d{lab} {fmt_shape(s)}" for lab, s in self.outputs if s is not None)
        ins = ", ".join(self._grad_in(lab, s) for lab, s in self.inputs)
        return outs, ins

    def format(self):
        left, right = self.sides()
        text = f"{self.number:>5} {self.op:<11} {left}  ->  {right}"
        if self.phase == "forward":
            text += f" {self.dtype}"
            if not self.on_tape:
                text += "  (not on the tape: no input requires grad)"
        where = describe_scope(self.step, self.layer)
        return text + (f"   [{where}]" if where else "")

    def _grad_in(self, label, shape):
        if shape is None:
            return f"dL/d{label} -"
        if label in self.accumulates:
            return f"{label}.grad += {fmt_shape(shape)}"
        return f"dL/d{label} {fmt_shape(shape)}"


def _is_number(label):
    try:
        float(label)
    except ValueError:
        return False
    return True


class trace(ObserverContext):
    """Record every op run in forward and every backward call inside the block, in order.

    ``names``: a Module (or dict name -> Tensor, or list) whose parameters are printed by
    name. ``t.forward`` and ``t.backward`` are lists of `TapeRecord`; ``t.records`` both,
    in the order they happened; ``print(t)`` shows the tape.
    """

    def __init__(self, names=None):
        self._param_names = parameter_names(names)
        self.records = []
        self._labels = weakref.WeakKeyDictionary()   # tensor -> label; dead tensors drop out
        self._nodes = weakref.WeakKeyDictionary()    # node (Function) -> its forward number
        self._n_tensors = 0
        self._n_forward = 0
        self._n_inputs = 0

    @property
    def forward(self):
        return [r for r in self.records if r.phase == "forward"]

    @property
    def backward(self):
        return [r for r in self.records if r.phase == "backward"]

    def __len__(self):
        return len(self.records)

    def __str__(self):
        fwd, bwd = self.forward, self.backward
        lines = [f"forward: {len(fwd)} ops, in the order they ran"]
        lines += [r.format() for r in fwd]
        if bwd:
            lines.append(f"backward: {len(bwd)} calls, in the order the walk ran them "
                         "(#n = the forward op it differentiates)")
            lines += [r.format() for r in bwd]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self):
        """Jupyter's display: the forward and the backward tape as two HTML tables."""
        fwd, bwd = self.forward, self.backward
        rows = [[r.number, r.op, *r.sides(), r.dtype, "yes" if r.on_tape else "no (no input requires grad)",
                 describe_scope(r.step, r.layer) or ""] for r in fwd]
        parts = [html_table(["#", "op", "inputs", "outputs", "dtype", "on the tape", "where"], rows,
                            caption=f"forward: {len(fwd)} ops, in the order they ran")]
        if bwd:
            rows = [[r.number, r.op, *r.sides(), describe_scope(r.step, r.layer) or ""] for r in bwd]
            parts.append(html_table(["#", "op", "gradients arriving", "gradients passed on", "where"],
                                    rows, caption=f"backward: {len(bwd)} calls, in the order the walk "
                                                  "ran them (#n = the forward op it differentiates)"))
        return "\n".join(parts)

    # --- labels --------------------------------------------------------------------------
    def _label(self, t):
        label = self._labels.get(t)
        if label is not None:
            return label
        name = self._param_names.get(id(t)) or t.name
        if name is None:
            if t._ctx is None and not t.requires_grad and t.data.size == 1 and t.ndim == 0:
                name = repr(t.data.item())           # a Python scalar operand: show its value
            else:
                self._n_inputs += 1
                name = f"in{self._n_inputs}"
        self._labels[t] = name
        return name

    def _new_label(self, t):
        self._n_tensors += 1
        label = f"t{self._n_tensors}"
        self._labels[t] = label
        return label

    # --- observer ------------------------------------------------------------------------
    def on_forward(self, ctx, inputs, out):
        step, layer = annotate(ctx)
        self._n_forward += 1
        number = self._n_forward
        if ctx.parents:
            self._nodes[ctx] = number
        outs = out if isinstance(out, tuple) else (out,)
        ins = [(self._label(t), t.shape) for t in inputs]
        outputs = [(self._new_label(o), o.shape) for o in outs]
        self.records.append(TapeRecord("forward", number, type(ctx).op_name(), ins, outputs,
                                       str(outs[0].dtype), step, layer, bool(ctx.parents)))

    def on_backward(self, ctx, out_grads, in_grads, outs):
        node = self._nodes.get(ctx)
        step, layer = scope_of(ctx)
        grads_out = [(self._label(t), None if out_grads[t._index] is None else out_grads[t._index].shape)
                     for t in outs]
        grads_in, leaves = [], []
        for p, g in zip(ctx.parents, in_grads):
            if not p.requires_grad:
                continue
            label = self._label(p)
            grads_in.append((label, None if g is None else g.shape))
            if p._ctx is None and g is not None:
                leaves.append(label)
        self.records.append(TapeRecord("backward", node, type(ctx).op_name(), grads_in, grads_out,
                                       "", step, layer, True, leaves))
