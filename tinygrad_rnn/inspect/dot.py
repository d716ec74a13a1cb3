"""Draw the graph that produced a tensor: Graphviz DOT text, and SVG/PNG through ``dot``.

``to_dot(loss, names=model)`` walks back from ``loss`` through the tape: one box per op (its
name, output shape and dtype), one ellipse per leaf (parameters by name, filled when they
require grad; constants grey), edges in the direction data flows. An unrolled sequence can be
drawn with one box per time step (``collapse_steps=True``) so that a 100-step graph stays
readable; the steps are known only if the forward ran under an observer that records them:

    with record_steps():
        ys, h = rnn(xs)
    render(ys.sum(), "graph.svg", names=rnn, collapse_steps=True)

Draw before ``backward`` (which frees the graph) or pass ``retain_graph=True`` to it.

In Jupyter, the `DotSource` that ``to_dot`` returns draws itself: as SVG when Graphviz's
``dot`` program is installed, as its DOT text otherwise.
"""

import os
import shutil
import subprocess
from collections import Counter
from html import escape

from ..tensor import Tensor
from ._common import ObserverContext, annotate, fmt_shape, parameter_names, scope_of


class record_steps(ObserverContext):
    """``with record_steps():`` tags every op made inside ``Unroll``/``Stack`` with its time
    step and layer, for ``to_dot(..., collapse_steps=True)`` (``trace``, ``ledger`` and
    ``detect_anomaly`` tag them too)."""

    def on_forward(self, ctx, inputs, out):
        annotate(ctx)


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _roots(tensors):
    if isinstance(tensors, Tensor):
        return [tensors]
    if isinstance(tensors, (tuple, list)):
        return [t for part in tensors for t in _roots(part)]
    raise TypeError(f"to_dot: expected a Tensor or a (nested) tuple of Tensors, got "
                    f"{type(tensors).__name__}")


class _Graph:
    """The part of the tape reachable from some tensors: nodes, leaves and edges."""

    def __init__(self, roots):
        self.ops = []                # Functions, in discovery order
        self.op_outputs = {}         # Function -> {index: Tensor}
        self.leaves = []             # leaf tensors that feed some op
        self.edges = []              # (source, Function, tensor): source is a Function or a leaf
        seen_ops, seen_leaves = set(), set()
        stack = []
        for r in roots:
            if r._ctx is None:
                if id(r) not in seen_leaves:     # a leaf asked for directly
                    seen_leaves.add(id(r))
                    self.leaves.append(r)
            else:
                self.op_outputs.setdefault(r._ctx, {})[r._index] = r
                if r._ctx not in seen_ops:
                    seen_ops.add(r._ctx)
                    stack.append(r._ctx)
        while stack:
            ctx = stack.pop()
            if ctx.freed:
                raise RuntimeError(
                    f"to_dot: the graph through '{type(ctx).op_name()}' was freed by backward; "
                    "draw it before backward, or call backward(retain_graph=True)")
            self.ops.append(ctx)
            for p in ctx.parents:
                pctx = p._ctx
                if pctx is None:
                    if id(p) not in seen_leaves:
                        seen_leaves.add(id(p))
                        self.leaves.append(p)
                    self.edges.append((p, ctx, p))
                    continue
                self.op_outputs.setdefault(pctx, {})[p._index] = p
                self.edges.append((pctx, ctx, p))
                if pctx not in seen_ops:
                    seen_ops.add(pctx)
                    stack.append(pctx)
        self.ops.reverse()           # roughly forward order, for a tidier layout


class DotSource(str):
    """DOT text: a ``str`` like any other (write it, print it, compare it), which a Jupyter
    notebook draws inline as SVG when Graphviz's ``dot`` is on PATH and shows as text when
    it is not."""

    def svg(self):
        """The graph as SVG text (rendered once, then cached), or None without ``dot``."""
        if "_svg" not in self.__dict__:
            exe = shutil.which("dot")
            self._svg = None if exe is None else _run_dot(exe, self, ["-Tsvg"]).decode("utf-8")
        return self._svg

    def _repr_svg_(self):
        return self.svg()

    def _repr_html_(self):
        # Only without Graphviz: notebooks rank HTML above SVG, and the SVG should win.
        if self.svg() is not None:
            return None
        return ('<pre class="tinygrad-rnn-dot" title="install Graphviz (the dot program) to see '
                f'this graph drawn">{escape(str(self))}</pre>')


def _run_dot(exe, text, args):
    done = subprocess.run([exe, *args], input=text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed (exit code {done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def to_dot(tensors, names=None, collapse_steps=False, rankdir="TB"):
    """DOT text of the graph that produced ``tensors`` (a Tensor or a tuple of them), as a
    `DotSource` (a ``str`` that Jupyter draws).

    ``names``: a Module (or a dict name -> Tensor) whose parameters are labelled by name.
    ``collapse_steps``: draw each time step of an ``Unroll`` as one box (the forward must
    have run under ``record_steps()``, ``trace()``, ``ledger()`` or ``detect_anomaly()``).
    Without it, steps that were recorded are drawn as clusters around their ops.
    """
    roots = _roots(tensors)
    graph = _Graph(roots)
    param_names = parameter_names(names)
    ids = {}

    def node_id(obj):
        key = id(obj)
        if key not in ids:
            ids[key] = f"n{len(ids)}"
        return ids[key]

    lines = ["digraph tinygrad_rnn {", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']

    groups = {}
    if collapse_steps:
        for ctx in graph.ops:
            step, _ = scope_of(ctx)
            if step is not None:
                groups.setdefault(step, []).append(ctx)
        if not groups:
            raise ValueError("to_dot: collapse_steps=True needs the time step of each op; run the "
                             "forward inside `with tinygrad_rnn.inspect.record_steps():` (or trace(), "
                             "ledger(), detect_anomaly())")
    grouped = {ctx: step for step, members in groups.items() for ctx in members}

    # A constant (x_t, a zero initial state) used inside one collapsed step only is folded into
    # that step's box rather than drawn 100 times.
    folded = {}
    if grouped:
        used_by = {}
        for src, dst, _ in graph.edges:
            if isinstance(src, Tensor):
                used_by.setdefault(id(src), set()).add(grouped.get(dst, dst))
        for t in graph.leaves:
            users = used_by.get(id(t), set())
            if not t.requires_grad and len(users) == 1 and isinstance(next(iter(users)), int):
                folded[id(t)] = next(iter(users))

    # Leaves: parameters by name, inputs and constants.
    for t in graph.leaves:
        if id(t) in folded:
            continue
        name = param_names.get(id(t)) or t.name
        if t.requires_grad:
            title = name or "leaf"
            style = 'style=filled, fillcolor="#cfe2f3"'
            note = "requires grad"
        else:
            title = name or ("const" if t.size == 1 else "input")
            style = 'style=filled, fillcolor="#eeeeee"'
            note = f"{t.data.item():g}" if t.size == 1 else "no grad"
        label = f"{title}\n{fmt_shape(t.shape)} {t.dtype}\n{note}"
        lines.append(f"  {node_id(t)} [shape=ellipse, {style}, label={_quote(label)}];")

    def op_label(ctx):
        outs = graph.op_outputs.get(ctx, {})
        if not outs:
            return type(ctx).op_name()
        first = next(iter(outs.values()))
        if ctx.n_outputs > 1:
            return (f"{type(ctx).op_name()}\n{ctx.n_outputs} outputs, e.g. {fmt_shape(first.shape)}"
                    f"\n{first.dtype}")
        return f"{type(ctx).op_name()}\n{fmt_shape(first.shape)} {first.dtype}"

    # Ops: one box each, or one box per collapsed step; clusters when steps are known.
    clusters = {}
    for ctx in graph.ops:
        if ctx in grouped:
            continue
        step, _ = scope_of(ctx)
        line = f"  {node_id(ctx)} [shape=box, label={_quote(op_label(ctx))}];"
        if step is not None:
            clusters.setdefault(step, []).append(line)
        else:
            lines.append(line)
    for step in sorted(clusters):
        lines.append(f"  subgraph cluster_step_{step} {{")
        lines.append(f"    label={_quote(f'time step {step}')}; style=dashed; color=gray50;")
        lines += ["  " + line for line in clusters[step]]
        lines.append("  }")
    for step in sorted(groups):
        members = groups[step]
        counts = Counter(type(c).op_name() for c in members)
        ops_text = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in counts.most_common())
        label = f"time step {step}\n{len(members)} ops: {ops_text}"
        consts = [t for t in graph.leaves if folded.get(id(t)) == step]
        if consts:
            label += "\nconstants: " + ", ".join(fmt_shape(t.shape) for t in consts)
        lines.append(f"  step{step} [shape=box3d, style=filled, fillcolor=\"#fff2cc\", "
                     f"label={_quote(label)}];")

    def endpoint(obj):
        if not isinstance(obj, Tensor) and obj in grouped:
            return f"step{grouped[obj]}"
        return node_id(obj)

    # Edges: data flows from an input (leaf or op) into the op that used it. Edges into or
    # out of a collapsed step are drawn once per pair of boxes.
    seen = set()
    for src, dst, tensor in graph.edges:
        if isinstance(src, Tensor) and id(src) in folded:
            continue
        a, b = endpoint(src), endpoint(dst)
        if a == b:
            continue                 # inside one collapsed step
        collapsed = a.startswith("step") or b.startswith("step")
        label = ""
        if not collapsed and not isinstance(src, Tensor) and src.n_outputs > 1:
            label = f"[{tensor._index}] {fmt_shape(tensor.shape)}"   # which output of split/unbind
        key = (a, b) if collapsed else (a, b, label)
        if key in seen:
            continue
        seen.add(key)
        attrs = f" [label={_quote(label)}]" if label else ""
        if collapsed and isinstance(src, Tensor):
            attrs = " [color=gray60]"        # a shared parameter feeding every step
        lines.append(f"  {a} -> {b}{attrs};")

    # The tensors asked for, as output nodes.
    for i, r in enumerate(roots):
        out_id = f"out{i}"
        title = r.name or ("output" if len(roots) == 1 else f"output {i}")
        label = f"{title}\n{fmt_shape(r.shape)} {r.dtype}"
        lines.append(f"  {out_id} [shape=ellipse, style=bold, label={_quote(label)}];")
        lines.append(f"  {endpoint(r._ctx if r._ctx is not None else r)} -> {out_id};")
    lines.append("}")
    return DotSource("\n".join(lines) + "\n")


_FORMATS = ("svg", "png", "pdf")


def render(tensors, path, names=None, collapse_steps=False, rankdir="TB"):
    """Write the graph as SVG, PNG or PDF (by ``path``'s suffix) with Graphviz's ``dot``."""
    fmt = os.path.splitext(str(path))[1].lstrip(".").lower()
    if fmt not in _FORMATS:
        raise ValueError(f"render: cannot tell the format from {str(path)!r}; use a path ending "
                         f"in {', '.join('.' + f for f in _FORMATS)} (or to_dot() for DOT text)")
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("render: the Graphviz program 'dot' was not found on PATH. Install "
                           "Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
                           "graphviz; conda: conda install graphviz), or write the DOT text with "
                           "to_dot() and render it elsewhere")
    text = to_dot(tensors, names=names, collapse_steps=collapse_steps, rankdir=rankdir)
    try:
        _run_dot(exe, text, [f"-T{fmt}", "-o", str(path)])
    except RuntimeError as exc:
        raise RuntimeError(f"render: {exc}") from None
    return path
