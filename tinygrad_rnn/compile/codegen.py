"""From a classified step graph to the Python source of two Numba loops over time.

Layout first (`Layout`): the carry-dependent nodes, in trace order, become a schedule of
items: a GEMM with a loop-invariant weight (numpy's own BLAS, `blas.py`, into a preallocated buffer), a fused
elementwise group (maximal runs of elementwise ops of one width: one ``for b, for j`` loop
nest whose intermediate values are scalars in registers), a concatenation, a reduction over
the feature axis. ``split``/``chunk`` and column slices make no code: they are views, a
column offset into the array they came from. A value gets an array only when it must: read
by a later item, read by the reverse loop (what the rules' adjoints need is saved for all
steps), or the source of a view.

Then `source()` writes ``forward_train`` (saves what backward needs), ``forward_infer``
(saves nothing: two state slots, per-step buffers) and ``backward`` (the reverse loop: per
step the adjoints of the carry-dependent values only; the weight gradients are left to one
GEMM over all T·B rows afterwards, in `runtime`).
"""

import re

import numpy as np

from ..ops import Cat, GetItem, Linear, MatMul, Max, Split, Sum
from . import blas, rules
from .graph import CARRY, INVARIANT, PERSTEP, Node, Value, column_slice

_FLOAT_LITERAL = re.compile(r"(?<![\w.])(\d+\.\d*(?:e[-+]?\d+)?)")


class Group:
    """A fused elementwise loop nest: nodes of one output width n, over (b, j) in (B, n)."""

    def __init__(self, width):
        self.width, self.nodes = width, []
        self.inlined = []           # wider groups this one computes at its views' columns
        self.offsets = None         # set on a group that is inlined: the columns it is read at
        self.forward_inline = True  # False: inlined in the reverse loop only


class Gemm:
    def __init__(self, node, transposed):
        self.node, self.transposed = node, transposed     # Linear: x @ W.T; MatMul: x @ W


class Layout:
    """Where every value of the loop lives and the order of the items of one step."""

    def __init__(self, graph):
        self.graph = graph
        self.B = graph.batch
        self.dtype = graph.x.dtype
        self.nodes = [n for n in graph.nodes if n.outputs[0].kind == CARRY]
        self._number_values()
        self._views()
        self._copy_gemm_views()
        self._schedule()
        self._inline_wide_groups()
        self._storage()
        self._inline_forward()
        self._arrays()

    # -- values ---------------------------------------------------------------------------
    def _number_values(self):
        count = 0
        for v in self.graph.states + [out for n in self.nodes for out in n.outputs]:
            v.num, count = count, count + 1
            v.base, v.col, v.group = v, 0, None
            v.stored = v.saved = v.has_adjoint = False
        self.count = count

    def _views(self):
        # Views of hoisted per-step values too (the GRU's x_r, x_z, x_n): the loop then reads
        # the one hoisted (T, B, 3H) array at column offsets, and its adjoint is one array.
        perstep = [n for n in self.graph.nodes if n.outputs[0].kind == PERSTEP]
        for node in perstep + self.nodes:
            if node.op is Split:
                src, off = node.inputs[0], 0
                for out, size in zip(node.outputs, node.attrs["sizes"]):
                    out.base, out.col = src.base, src.col + off
                    off += size
            elif node.op is GetItem:
                src = node.inputs[0]
                start, _ = column_slice(node.attrs["index"], src.shape)
                out = node.outputs[0]
                out.base, out.col = src.base, src.col + start

    @staticmethod
    def is_view(v):
        return v.kind == CARRY and v.base is not v

    @staticmethod
    def is_inlined(v):
        """A value of a group computed inside the group that reads its views."""
        return v.group is not None and v.group.offsets is not None

    def _copy_gemm_views(self):
        """A GEMM reads a whole contiguous array: copy a view (a gate block) first."""
        nodes = []
        for node in self.nodes:
            if node.op in (Linear, MatMul) and self.is_view(node.inputs[0]):
                src = node.inputs[0]
                copy = Node(rules.Copy, [src], {}, node.site)
                out = Value("op", src.shape, src.dtype, node=copy)
                copy.outputs[0] = out
                out.kind, out.num, self.count = CARRY, self.count, self.count + 1
                out.base, out.col, out.group = out, 0, None
                out.stored = out.saved = out.has_adjoint = False
                node.inputs[0] = out
                nodes.append(copy)
            nodes.append(node)
        self.nodes = nodes

    # -- schedule -------------------------------------------------------------------------
    def _schedule(self):
        self.items = []
        group = None
        for node in self.nodes:
            if node.op in (Split, GetItem):
                continue                                    # views: no code
            if node.rule.kind == "elementwise":
                out = node.outputs[0]
                width = out.shape[1]
                fits = group is not None and group.width == width and not any(
                    self.is_view(v) and v.base.group is group for v in node.inputs)
                if not fits:
                    group = Group(width)
                    self.items.append(group)
                group.nodes.append(node)
                out.group = group
                continue
            group = None
            if node.op in (Linear, MatMul):
                self.items.append(Gemm(node, transposed=node.op is Linear))
            else:
                self.items.append(node)                     # Cat, Sum, Max

    def _inline_wide_groups(self):
        """A group whose values are read only through column views by ONE narrower group
        (the LSTM's ``gates = h W_hh^T + b + x W_ih^T`` of width 4H, read as four H-wide
        chunks) is computed inside that group, once per view's column offset: its values are
        registers there, not a (B, 4H) array written by one loop and read back by the next,
        and in the reverse loop its adjoints are registers too (no gate-gradient buffer)."""
        readers = {}
        for node in self.nodes:
            for v in node.inputs:
                readers.setdefault(id(v), []).append(node)
        results = {id(v) for v in self.graph.results}
        group_of = {id(n): item for item in self.items if isinstance(item, Group)
                    for n in item.nodes}

        def consumer_groups(v, offsets):
            """The groups reading ``v`` other than through its own group; None if anything
            else reads it (a GEMM, a reduction, a result, a view of another width)."""
            if id(v) in results:
                return None
            found = set()
            for node in readers.get(id(v), []):
                if node.op in (Split, GetItem):
                    for out in node.outputs:
                        sub = consumer_groups(out, offsets)
                        if sub is None:
                            return None
                        for g in sub:
                            if g.width != out.shape[1]:
                                return None
                        if sub:
                            offsets.add(out.col)
                        found |= sub
                elif node.rule.kind == "elementwise" and self.is_view(v):
                    found.add(group_of[id(node)])
                elif id(group_of.get(id(node))) != id(v.group):
                    return None
            return found

        for group in [item for item in self.items if isinstance(item, Group)]:
            offsets, targets = set(), set()
            for node in group.nodes:
                found = consumer_groups(node.outputs[0], offsets)
                if found is None:
                    break
                targets |= found
            else:
                if len(targets) != 1:
                    continue
                (target,) = targets
                if (target is group or target.width == group.width or group.inlined
                        or self.items.index(target) < self.items.index(group)):
                    continue
                group.offsets = sorted(offsets)
                target.inlined.append(group)
                self.items.remove(group)

    def _inline_forward(self):
        """An inlined group whose values backward needs stays its own loop in the forward
        functions (only its reverse is inlined): LLVM vectorized the GRU's gate loop with the
        saved (B, 3H) stores at three column offsets in it behind run-time overlap checks
        that then failed, so that loop ran scalar, 5x slower."""
        for group in self.items:
            for inner in getattr(group, "inlined", ()):
                inner.forward_inline = not any(n.outputs[0].saved for n in inner.nodes)
                if not inner.forward_inline:
                    for node in inner.nodes:
                        node.outputs[0].stored = True

    # -- which values need arrays ---------------------------------------------------------
    def _storage(self):
        item_of = {}
        for item in self.items:
            for node in self._item_nodes(item):
                item_of[id(node)] = item
            for inner in getattr(item, "inlined", ()):
                for node in inner.nodes:
                    item_of[id(node)] = item
        for node in self.nodes:
            if node.op in (Split, GetItem):
                continue
            mine = item_of[id(node)]
            for v in node.inputs:
                if v.kind != CARRY:
                    continue
                base = v.base
                if self.is_inlined(base):
                    continue                                # a register of this group
                if base.group is None or base.group is not mine or self.is_view(v):
                    base.has_adjoint = True                 # read by another item
                    base.stored = True
            for name in node.rule.needs if node.rule.kind == "elementwise" else ():
                v = node.outputs[0] if name == "y" else node.inputs[node.rule.inputs.index(name)]
                if v.kind == CARRY:
                    v.base.stored = v.base.saved = True
            if node.op in (Linear, MatMul):
                node.inputs[0].base.saved = True            # dW = sum_t dG_t^T x_t
            if node.op is Max:
                node.inputs[0].base.saved = node.outputs[0].saved = True
        for node in self.nodes:
            for out in node.outputs:
                if out.base is out and out.group is None and out.node is not None:
                    out.stored = True                       # GEMM, cat, reduction outputs

    @staticmethod
    def _item_nodes(item):
        if isinstance(item, Group):
            return item.nodes
        return [item.node] if isinstance(item, Gemm) else [item]

    # -- arrays the functions take ----------------------------------------------------------
    def _arrays(self):
        g = self.graph
        read_in_loop = []
        for node in self.nodes:
            read_in_loop += node.inputs
        read_in_loop += g.results
        self.perstep, self.invariants, seen = [], [], set()
        for node in self.nodes:
            for k, v in enumerate(node.inputs):
                if node.op in (Linear, MatMul) and k == 1:
                    continue
                self._register(v, seen)
        for v in g.results:
            self._register(v, seen)
        self.weights = [item.node.inputs[1] for item in self.items if isinstance(item, Gemm)]
        self.outputs = list(_leaves(g.output_tree))
        self.new_states = list(_leaves(g.state_tree))
        self.stored = [v for n in self.nodes for v in n.outputs if v.stored]

    def _register(self, v, seen):
        if v.kind == PERSTEP:
            v = v.base
        if v.kind == CARRY or id(v) in seen:
            return
        seen.add(id(v))
        v.num, self.count = self.count, self.count + 1
        (self.perstep if v.kind == PERSTEP else self.invariants).append(v)


def _leaves(tree):
    from ..rnn.cell import tree_leaves
    return tree_leaves(tree)


def norm2d(shape):
    """An invariant's shape as the 2-D array the loops index: () -> (1, 1), (n,) -> (1, n)."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    return tuple(shape)


# --- source -------------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.lines = []

    def __call__(self, depth, text):
        self.lines.append("    " * depth + text)


_LOOP = re.compile(r"\s*for j in range\((\d+)\):$")
_ADD_INTO = re.compile(r"\s*([A-Z]+\d+)\[(?:t, )?b, (?:(\d+) \+ )?j\] \+= .*")


def _assign_single_writes(lines, widths, assigned):
    """The reverse loop with ``+=`` turned into ``=`` for the adjoint buffers that each step
    writes exactly once per element (``widths``: buffer name -> columns), whose zeroing then
    goes: the LSTM's gate gradients and their (T, B, 4H) histories are written, not read,
    modified and written after a memset (2.5 of 14.5 ms of its backward at M). A buffer
    qualifies when every write to it is a whole ``for j`` loop of column range [off, off + n),
    the ranges are disjoint, and together they cover the buffer. Adds the names to
    ``assigned`` (the runtime allocates those without zeros)."""
    writes = {name: [] for name in widths}
    disqualified = set()
    width = None
    for k, line in enumerate(lines):
        loop = _LOOP.match(line)
        if loop:
            width = int(loop.group(1))
            continue
        m = _ADD_INTO.fullmatch(line)
        if m and m.group(1) in writes:
            writes[m.group(1)].append((int(m.group(2) or 0), width, k))
            continue
        stripped = line.strip()
        for name in writes:     # any other write (a broadcast column, BLAS's output): keep +=
            if stripped == f"{name}[:] = fl(0.0)":
                continue
            if stripped.startswith(f"{name}[") or re.search(rf"gemm(_acc)?\(.*\b{name}\)$", stripped):
                disqualified.add(name)
    result = list(lines)
    for name, found in writes.items():
        if name in disqualified or not found:
            continue
        spans = sorted((off, off + n) for off, n, _ in found)
        covered = spans[0][0] == 0 and spans[-1][1] == widths[name] and all(
            a[1] == b[0] for a, b in zip(spans, spans[1:]))
        if not covered:
            continue
        assigned.add(name)
        for _, _, k in found:
            result[k] = result[k].replace(" += ", " = ", 1)
    return [line for line in result
            if not any(line.strip() == f"{name}[:] = fl(0.0)" for name in assigned)]


_OUTLINE, _END = "#<outline>", "#</outline>"
_ARRAY = re.compile(r"\b([A-Z][A-Za-z]*\d+|gY\d+|lengths)\[")
_SCALARS = ("t", "cur", "nxt", "B")


def _outline(lines, prefix):
    """The regions between _OUTLINE and _END markers made functions of their own (compiled
    with the noalias flag), each replaced by a call: returns (the lines, the functions)."""
    main, functions, region = [], [], None
    for line in lines:
        stripped = line.strip()
        if stripped == _OUTLINE:
            region, indent = [], line[:len(line) - len(line.lstrip())]
            continue
        if stripped == _END:
            name = f"{prefix}_{len(functions)}"
            text = "\n".join(region)
            arrays = list(dict.fromkeys(_ARRAY.findall(text)))
            scalars = [v for v in _SCALARS if re.search(rf"\b{v}\b", text)]
            args = ", ".join(scalars + arrays)
            functions.append(["@njit(**NOALIAS)", f"def {name}({args}):"]
                             + [r[4:] for r in region])
            main.append(f"{indent}{name}({args})")
            region = None
            continue
        (main if region is None else region).append(line)
    return main, functions


class Source:
    """Writes the three functions of one Layout."""

    def __init__(self, layout):
        self.L = layout
        self.float = "float32" if layout.dtype == np.float32 else "float64"
        self.assigned = set()       # adjoint buffers the reverse loop assigns (no zeros needed)
        L = layout
        self.arg_names = {
            "lengths": "lengths",
            "perstep": [f"P{v.num}" for v in L.perstep],
            "states": [f"S{v.num}" for v in L.graph.states],
            "invariants": [f"V{v.num}" for v in L.invariants],
            "stored": [f"A{v.num}" for v in L.stored],
            "outputs": [f"Y{k}" for k in range(len(L.outputs))],
        }

    # -- the argument lists (runtime builds the arrays in the same order) ------------------
    def forward_args(self):
        L = self.L
        return (["lengths"] + self.arg_names["perstep"] + self.arg_names["states"]
                + self.arg_names["invariants"] + [f"WF{k}" for k in range(len(L.weights))]
                + self.arg_names["stored"] + self.arg_names["outputs"])

    def backward_args(self):
        L = self.L
        return (["lengths"] + self.arg_names["perstep"] + self.arg_names["states"]
                + self.arg_names["invariants"] + [f"WB{k}" for k in range(len(L.weights))]
                + self.arg_names["stored"]
                + [f"gY{k}" for k in range(len(L.outputs))]
                + [f"GSi{v.num}" for v in L.graph.states] + [f"GSo{v.num}" for v in L.graph.states]
                + [f"GP{v.num}" for v in L.perstep] + [f"GV{v.num}" for v in L.invariants]
                + [f"G{v.num}" for v in self.adjoint_buffers()]
                + [f"DG{item.node.outputs[0].num}" for item in self.gemms()]
                + [f"TMP{k}" for k in range(len(self.gemms()))])

    def gemms(self):
        return [item for item in self.L.items if isinstance(item, Gemm)]

    def adjoint_buffers(self):
        """Per-step adjoint arrays (B, n): values read by another item, except GEMM outputs,
        whose adjoints are kept for every step (DG) for the weight-gradient GEMM."""
        gemm_outs = set(id(g.node.outputs[0]) for g in self.gemms())
        return [v for v in self.L.stored if v.has_adjoint and id(v) not in gemm_outs]

    # -- value access -----------------------------------------------------------------------
    @staticmethod
    def _cols(v, width, j=None):
        """The column subscript of ``v`` at loop column ``j`` (default: the loop's ``j``, or
        0 where ``v`` has one column and broadcasts along the row), plus a view's offset."""
        cols = norm2d(v.shape)[1] if v.kind == INVARIANT else v.shape[1]
        off = v.col if v.kind != INVARIANT else 0
        if j is None:
            j = "j" if cols == width else "0"
        if j == "0":
            return str(off)
        return j if off == 0 else f"{off} + {j}"

    def _index(self, v, width, ts, cur, j=None):
        """``[rows, cols]`` subscript of a value read at (b, j) in a loop of ``width``."""
        rows = norm2d(v.shape)[0] if v.kind == INVARIANT else v.shape[0]
        # Values of the loop are (B, n): indexed by b even when B = 1, so that every batch
        # size shares one source (and one compilation); invariants broadcast by shape.
        r = "b" if rows > 1 or v.kind != INVARIANT else "0"
        c = self._cols(v, width, j)
        if v.kind == CARRY:
            base = v.base
            if base.source == "state":
                return f"S{base.num}[{cur}, {r}, {c}]"
            t = ts if base.saved else "0"
            return f"A{base.num}[{t}, {r}, {c}]"
        if v.kind == PERSTEP:
            return f"P{v.base.num}[t, {r}, {c}]"
        return f"V{v.num}[{r}, {c}]"

    def read(self, v, width, group, mode, j=None):
        """A forward value: a register if made in this group (forward), else its array."""
        if mode != "backward" and group is not None and v.group is group and not self.L.is_view(v):
            return f"v{v.num}"
        if mode != "backward" and self.L.is_inlined(v.base) and v.base.group.forward_inline:
            return f"v{v.base.num}_{v.col}"
        ts = "t" if mode in ("train", "backward") else "0"
        cur = "t" if mode in ("train", "backward") else "cur"
        return self._index(v, width, ts, cur, j)

    def adjoint(self, v, width, group, j=None):
        """Where the adjoint of ``v`` at (b, j) accumulates; None if nobody wants it."""
        if v.kind == INVARIANT:
            return None if not v.requires_grad else "G" + self._index(v, width, "", "", j)
        if v.kind == PERSTEP:
            return "G" + self._index(v, width, "t", "", j)
        if group is not None and v.group is group and not self.L.is_view(v):
            return f"g{v.num}"
        if self.L.is_inlined(v.base):
            return f"g{v.base.num}_{v.col}"
        c = self._cols(v, width, j)
        base = v.base
        if base.source == "state":
            return f"GSo{base.num}[b, {c}]"
        if base.node is not None and base.node.op in (Linear, MatMul):
            return f"DG{base.num}[t, b, {c}]"
        return f"G{base.num}[b, {c}]"

    def _at(self, v, group, off):
        """The column subscript of ``v`` read by ``group`` (inlined) at columns off + j."""
        cols = norm2d(v.shape)[1] if v.kind == INVARIANT else v.shape[1]
        if cols == 1 and group.width != 1:
            return "0"
        return f"{off} + j" if off else "j"

    def read_at(self, v, group, off, mode):
        if mode != "backward" and v.group is group and not self.L.is_view(v):
            return f"v{v.num}_{off}"
        ts = "t" if mode in ("train", "backward") else "0"
        cur = "t" if mode in ("train", "backward") else "cur"
        return self._index(v, group.width, ts, cur, self._at(v, group, off))

    def adjoint_at(self, v, group, off):
        if v.group is group and not self.L.is_view(v):
            return f"g{v.num}_{off}"
        return self.adjoint(v, group.width, None, j=self._at(v, group, off))

    def _forward_inlined(self, w, group, mode):
        for inner in group.inlined:
            if not inner.forward_inline:
                continue
            w(4, f"# {', '.join(n.name for n in inner.nodes)} (width {inner.width}) at columns "
                 f"{', '.join(f'{off} + j' if off else 'j' for off in inner.offsets)}")
            for off in inner.offsets:
                for node in inner.nodes:
                    out = node.outputs[0]
                    names = {name: self.read_at(v, inner, off, mode)
                             for name, v in zip(node.rule.inputs, node.inputs)}
                    w(4, f"v{out.num}_{off} = {self.lit(node.rule.forward.format(**names))}")
                    if out.stored:
                        col = f"{off} + j" if off else "j"
                        w(4, f"A{out.num}[{self._ts(out, mode)}, b, {col}] = v{out.num}_{off}")

    def _backward_inlined(self, w, group):
        for inner in group.inlined:
            w(4, f"# reverse of: {', '.join(n.name for n in inner.nodes)} at the same columns")
            for off in inner.offsets:
                for node in reversed(inner.nodes):
                    out = node.outputs[0]
                    names = {name: self.read_at(v, inner, off, "backward")
                             for name, v in zip(node.rule.inputs, node.inputs)}
                    names["y"] = self.read_at(out, inner, off, "backward")
                    names["g"] = f"g{out.num}_{off}"
                    for v, grad in zip(node.inputs, node.rule.grads):
                        if grad is None:
                            continue
                        target = self.adjoint_at(v, inner, off)
                        if target is not None:
                            w(4, f"{target} += {self.lit(grad.format(**names))}")

    def lit(self, text):
        return _FLOAT_LITERAL.sub(r"fl(\1)", text)

    # -- the module ---------------------------------------------------------------------------
    def module(self, title):
        bits = "32" if self.float == "float32" else "64"
        w = _Writer()
        w(0, f'"""Generated by tinygrad_rnn.compile for {title}. Do not edit: regenerated."""')
        w(0, "import numpy as np")
        w(0, "from numba import njit")
        w(0, f"from tinygrad_rnn._numba_math import exp{bits} as exp, tanh{bits} as tanh, "
             f"sigmoid{bits} as sigmoid, relu{bits} as relu, select, sign, log, sqrt")
        w(0, f"from tinygrad_rnn.compile.blas import gemm{bits} as gemm, "
             f"gemm_acc{bits} as gemm_acc  # {blas.KIND}")
        w(0, "from tinygrad_rnn.compile.noalias import NoAliasCompiler")
        w(0, "")
        w(0, f"fl = np.{self.float}")
        w(0, 'OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})')
        w(0, "# the fused loop nests: their arrays never overlap (compile/noalias.py)")
        w(0, "NOALIAS = dict(OPTIONS, pipeline_class=NoAliasCompiler)")
        header = w.lines
        mains, nests = [], []
        for mode in ("train", "infer", "backward"):
            fw = _Writer()
            if mode == "backward":
                self._backward(fw)
            else:
                self._forward(fw, mode)
            main, found = _outline(fw.lines, mode)
            mains.append(main)
            nests += found
        blocks = [header] + nests + mains
        return "\n\n\n".join("\n".join(b) for b in blocks) + "\n"

    def _forward(self, w, mode):
        L = self.L
        w(0, "@njit(**OPTIONS)")
        w(0, f"def forward_{mode}({', '.join(self.forward_args())}):")
        w(1, "T, B = Y0.shape[0], Y0.shape[1]")
        w(1, "for t in range(T):")
        if mode == "train":
            w(2, "cur, nxt = t, t + 1")
        else:
            w(2, "cur = t & 1")
            w(2, "nxt = 1 - cur")
        for item in L.items:
            if isinstance(item, Group):
                for inner in item.inlined:
                    if not inner.forward_inline:
                        self._forward_group(w, inner, mode)
                self._forward_group(w, item, mode)
            elif isinstance(item, Gemm):
                self._forward_gemm(w, item, mode)
            else:
                self._forward_structural(w, item, mode)
        self._forward_result_copies(w, mode)

    def _ts(self, v, mode):
        return "t" if (v.saved and mode in ("train", "backward")) else "0"

    def _forward_gemm(self, w, item, mode):
        node = item.node
        x, out = node.inputs[0], node.outputs[0]
        k = self.gemms().index(item)
        src = (f"S{x.num}[cur]" if x.source == "state" else f"A{x.num}[{self._ts(x, mode)}]")
        w(2, f"# {node.name}: x @ W{'.T' if item.transposed else ''}")
        w(2, f"gemm({src}, WF{k}, A{out.num}[{self._ts(out, mode)}])")

    def _result_writes(self, v, expr, depth, w):
        for k, o in enumerate(self.L.outputs):
            if o is v:
                w(depth, f"Y{k}[t, b, j] = {expr} if valid else fl(0.0)")
        for s, n in zip(self.L.graph.states, self.L.new_states):
            if n is v:
                w(depth, f"S{s.num}[nxt, b, j] = {expr} if valid else S{s.num}[cur, b, j]")

    def _forward_group(self, w, group, mode):
        w(2, f"# fused elementwise: {', '.join(n.name for n in group.nodes)}")
        w(2, _OUTLINE)
        w(2, "for b in range(B):")
        w(3, "valid = t < lengths[b]")
        w(3, f"for j in range({group.width}):")
        self._forward_inlined(w, group, mode)
        for node in group.nodes:
            out = node.outputs[0]
            names = {name: self.read(v, group.width, group, mode)
                     for name, v in zip(node.rule.inputs, node.inputs)}
            w(4, f"v{out.num} = {self.lit(node.rule.forward.format(**names))}")
            if out.stored:
                w(4, f"A{out.num}[{self._ts(out, mode)}, b, j] = v{out.num}")
            self._result_writes(out, f"v{out.num}", 4, w)
        w(2, _END)

    def _forward_structural(self, w, node, mode):
        out = node.outputs[0]
        dst = f"A{out.num}[{self._ts(out, mode)}"
        w(2, f"# {node.name}")
        w(2, "for b in range(B):")
        if node.op is Cat:
            off = 0
            for part in node.inputs:
                n = part.shape[1]
                w(3, f"for j in range({n}):")
                w(4, f"{dst}, b, {off} + j] = {self.read(part, n, None, mode)}")
                off += n
        elif node.op is Sum:
            a = node.inputs[0]
            w(3, "acc = fl(0.0)")
            w(3, f"for j in range({a.shape[1]}):")
            w(4, f"acc += {self.read(a, a.shape[1], None, mode)}")
            w(3, f"{dst}, b, 0] = acc")
        elif node.op is Max:
            a = node.inputs[0]
            w(3, f"acc = {self.read(a, a.shape[1], None, mode, j='0')}")
            w(3, f"for j in range({a.shape[1]}):")
            w(4, f"acc = max(acc, {self.read(a, a.shape[1], None, mode)})")
            w(3, f"{dst}, b, 0] = acc")

    def _forward_result_copies(self, w, mode):
        L = self.L
        pending = [v for v in L.outputs + L.new_states if v.group is None or v.kind != CARRY
                   or L.is_view(v)]
        done = set()
        for v in pending:
            if id(v) in done:
                continue
            done.add(id(v))
            n = v.shape[1]
            w(2, "for b in range(B):")
            w(3, "valid = t < lengths[b]")
            w(3, f"for j in range({n}):")
            self._result_writes(v, self.read(v, n, None, mode), 4, w)

    # -- backward ---------------------------------------------------------------------------
    def _backward(self, w):
        L = self.L
        states = L.graph.states
        start = len(w.lines)
        w(0, "@njit(**OPTIONS)")
        w(0, f"def backward({', '.join(self.backward_args())}):")
        w(1, "T, B = gY0.shape[0], gY0.shape[1]")
        w(1, "for t in range(T - 1, -1, -1):")
        for v in self.adjoint_buffers():
            w(2, f"G{v.num}[:] = fl(0.0)")
        w(2, "for b in range(B):")
        w(3, "valid = t < lengths[b]")
        for s in states:
            w(3, f"for j in range({s.shape[1]}):")
            w(4, f"GSo{s.num}[b, j] = fl(0.0) if valid else GSi{s.num}[b, j]")
        seeds = [v for v in L.outputs + L.new_states if v.group is None or v.kind != CARRY
                 or L.is_view(v)]
        done = set()
        for v in seeds:
            if id(v) in done:
                continue
            done.add(id(v))
            target = self.adjoint(v, v.shape[1], None)
            if target is None:
                continue
            w(3, f"for j in range({v.shape[1]}):")
            for term in self._seed_terms(v):
                w(4, f"{target} += {term}")
        for item in reversed(L.items):
            if isinstance(item, Group):
                self._backward_group(w, item)
            elif isinstance(item, Gemm):
                self._backward_gemm(w, item)
            else:
                self._backward_structural(w, item)
        incoming = ", ".join(f"GSi{s.num}" for s in states)
        outgoing = ", ".join(f"GSo{s.num}" for s in states)
        w(2, f"{incoming}, {outgoing} = {outgoing}, {incoming}     # step t-1 receives these")
        w(1, f"return ({incoming},)")
        widths = {f"G{v.num}": v.shape[1] for v in self.adjoint_buffers()}
        widths.update((f"GP{v.num}", v.shape[1]) for v in L.perstep)
        widths.update((f"DG{g.node.outputs[0].num}", g.node.outputs[0].shape[1]) for g in self.gemms())
        w.lines[start:] = _assign_single_writes(w.lines[start:], widths, self.assigned)

    def _seed_terms(self, v):
        terms = []
        for k, o in enumerate(self.L.outputs):
            if o is v:
                terms.append(f"(gY{k}[t, b, j] if valid else fl(0.0))")
        for s, n in zip(self.L.graph.states, self.L.new_states):
            if n is v:
                terms.append(f"(GSi{s.num}[b, j] if valid else fl(0.0))")
        return terms

    def _backward_group(self, w, group):
        w(2, f"# reverse of: {', '.join(n.name for n in group.nodes)}")
        w(2, _OUTLINE)
        w(2, "for b in range(B):")
        w(3, "valid = t < lengths[b]")
        w(3, f"for j in range({group.width}):")
        for node in group.nodes:
            out = node.outputs[0]
            init = [f"G{out.num}[b, j]"] if out.has_adjoint else []
            init += self._seed_terms(out)
            w(4, f"g{out.num} = {' + '.join(init) if init else 'fl(0.0)'}")
        for inner in group.inlined:
            for off in inner.offsets:
                for node in inner.nodes:
                    w(4, f"g{node.outputs[0].num}_{off} = fl(0.0)")
        for node in reversed(group.nodes):
            out = node.outputs[0]
            names = {name: self.read(v, group.width, group, "backward")
                     for name, v in zip(node.rule.inputs, node.inputs)}
            names["y"] = self.read(out, group.width, group, "backward")
            names["g"] = f"g{out.num}"
            for v, grad in zip(node.inputs, node.rule.grads):
                if grad is None:
                    continue
                target = self.adjoint(v, group.width, group)
                if target is not None:
                    w(4, f"{target} += {self.lit(grad.format(**names))}")
        self._backward_inlined(w, group)
        w(2, _END)

    def _backward_gemm(self, w, item):
        node = item.node
        x, out = node.inputs[0], node.outputs[0]
        k = self.gemms().index(item)
        w(2, f"# reverse of {node.name}: dx = dG @ W{'' if item.transposed else '.T'}")
        target = self.adjoint(x, x.shape[1], None)
        whole = re.fullmatch(r"(GSo\d+|G\d+)\[b, j\]", target)
        if whole:                   # a whole (B, n) buffer: BLAS adds into it (beta = 1)
            w(2, f"gemm_acc(DG{out.num}[t], WB{k}, {whole.group(1)})")
            return
        w(2, f"gemm(DG{out.num}[t], WB{k}, TMP{k})")
        w(2, "for b in range(B):")
        w(3, f"for j in range({x.shape[1]}):")
        w(4, f"{target} += TMP{k}[b, j]")

    def _backward_structural(self, w, node):
        out = node.outputs[0]
        width = out.shape[1] if node.op is Cat else node.inputs[0].shape[1]
        g_out = self.adjoint(out, width, None)
        w(2, f"# reverse of {node.name}")
        w(2, "for b in range(B):")
        if node.op is Cat:
            off = 0
            for part in node.inputs:
                n = part.shape[1]
                target = self.adjoint(part, n, None)
                if target is not None:
                    w(3, f"for j in range({n}):")
                    w(4, f"{target} += {self.adjoint(out, width, None, j=f'{off} + j')}")
                off += n
        elif node.op is Sum:
            a = node.inputs[0]
            w(3, f"for j in range({a.shape[1]}):")
            w(4, f"{self.adjoint(a, a.shape[1], None)} += {g_out}")
        elif node.op is Max:
            a = node.inputs[0]
            n = a.shape[1]
            val = self.read(a, n, None, "backward")
            m = self.read(out, n, None, "backward")
            w(3, "count = fl(0.0)")
            w(3, f"for j in range({n}):")
            w(4, f"count += fl(1.0) if {val} == {m} else fl(0.0)")
            w(3, f"for j in range({n}):")
            w(4, f"{self.adjoint(a, n, None)} += ({g_out} / count) if {val} == {m} else fl(0.0)")
