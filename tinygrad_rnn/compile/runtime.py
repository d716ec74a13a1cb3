"""Running a compiled sequence: the work outside the loop and the one tape node.

`Program.run` does, per call:
1. the loop-invariant values (weights, their slices, constants) and the hoisted per-step
   values, as ordinary eager ops: the per-step ones on ``xs`` reshaped to (T·B, I), so each
   hoisted linear is ONE GEMM over all steps and its backward (``dW_ih``, ``dx``, the bias
   sum) comes from the tape as single GEMMs too;
2. one `SequenceFunction` node whose inputs are those hoisted tensors, the initial state's
   leaves and the weights used inside the loop, and whose outputs are every step's outputs
   and the final state. Its forward runs the generated forward loop; its backward the reverse
   loop, then ``dW_hh = sum_t dG_t^T h_{t-1}`` as one GEMM over all T·B rows.
Weights are read from ``param.data`` at every call, so in-place optimizer updates are seen.
"""

import numpy as np

from ..autograd import Function
from ..factories import zeros
from ..functional import stack
from ..grad_mode import is_grad_enabled
from ..higher_order import grad
from ..ops import Reshape
from ..rnn.cell import tree_leaves, tree_map
from ..rnn.unroll import _stop_finished
from ..tensor import Tensor
from . import cache, codegen, rules
from .graph import CARRY, INVARIANT, PERSTEP


class SequenceFunction(Function):
    """The whole compiled recurrence as one tape node (many inputs, many outputs).

    Its inputs: the hoisted per-step values (T, B, n), the initial state's leaves and the
    loop-invariant values the loop reads (weights first of all); its outputs: every step's
    outputs (T, B, n) and the final state's leaves. The first-order backward is the generated
    reverse loop, on arrays. Under ``create_graph=True`` (gradients of gradients) the rule
    falls back to eager: `Program.replay` runs the traced step's ops on the node's own input
    Tensors over the T steps, and the input gradients are taken through that replay, on the
    tape, so they can be differentiated again (the same numbers as the eager cell).
    """

    name = "compiled_sequence"
    differentiable_backward = True      # the walk's Tensor path calls backward on Tensors

    def forward(self, *arrays, program, steps, lengths, train):
        self.program, self.steps, self.lengths = program, steps, lengths
        # The reverse loop reads every input, so the version check watches all of them; on
        # the Tensor path these names hold the node's input Tensors (higher_order.graph_rule).
        self.saved_inputs = tuple(f"input_{k}" for k in range(len(arrays)))
        return program.forward(self, arrays, steps, lengths, train)

    def backward(self, *grads):
        if any(isinstance(g, Tensor) for g in grads):
            return self._backward_on_tensors(grads)
        return self.program.backward(self, grads)

    def _backward_on_tensors(self, grads):
        """create_graph: the input gradients through an eager replay of the sequence."""
        inputs = [getattr(self, name) for name in self.saved_inputs]
        need = self.needs_input_grad
        # Fresh aliases: grad() wrt an alias is the partial derivative wrt that input alone,
        # even where one input is computed from another (a weight and its slice).
        aliases = [Reshape.apply(t, shape=t.shape) if n else t for t, n in zip(inputs, need)]
        results = self.program.replay(aliases, self.steps, self.lengths)
        pairs = [(r, g) for r, g in zip(results, grads) if g is not None and r.requires_grad]
        wanted = [a for a, n in zip(aliases, need) if n]
        if not pairs or not wanted:
            return tuple(None for _ in inputs)
        found = iter(grad([r for r, _ in pairs], wanted, grad_outputs=[g for _, g in pairs],
                          create_graph=True, allow_unused=True))
        return tuple(next(found) if n else None for n in need)


def _tile_rows(t, T, B):
    """A (B, n) loop-invariant tensor repeated for the (T·B, n) rows of a hoisted op."""
    if not t.requires_grad:
        return Tensor(np.tile(t.data, (T, 1)))
    return (zeros(T, 1, 1, dtype=t.dtype) + t.reshape(1, *t.shape)).reshape(T * B, t.shape[1])


class Program:
    """The generated loops of one traced graph, and how to feed them."""

    def __init__(self, graph, title):
        self.graph = graph
        self.layout = codegen.Layout(graph)
        self.writer = codegen.Source(self.layout)
        self.source = self.writer.module(title)
        self._module = None
        L = self.layout
        # The node's tensor inputs: hoisted per-step values, initial state, invariants.
        self.invariant_inputs = []
        for v in L.invariants + L.weights:
            if all(v is not u for u in self.invariant_inputs):
                self.invariant_inputs.append(v)

    @property
    def module(self):
        if self._module is None:
            self._module = cache.load(self.source)
        return self._module

    # -- per call ---------------------------------------------------------------------------
    def run(self, xs, state, lengths):
        g, L = self.graph, self.layout
        T, B = xs.shape[0], xs.shape[1]
        env = self._outside_loop(xs, T, B)
        tensors = ([env[id(v)].reshape(T, B, v.shape[1]) for v in L.perstep]
                   + tree_leaves(state)
                   + [env.get(id(v), v.tensor) for v in self.invariant_inputs])
        lengths = (np.full(B, T, dtype=np.int64) if lengths is None
                   else np.asarray(lengths, dtype=np.int64))
        train = is_grad_enabled() and any(t.requires_grad for t in tensors)
        outs = SequenceFunction.apply(*tensors, program=self, steps=T, lengths=lengths,
                                      train=train)
        n_out = len(L.outputs)
        ys, finals = list(outs[:n_out]), list(outs[n_out:])
        it_y, it_s = iter(ys), iter(finals)
        return (tree_map(lambda _: next(it_y), g.output_tree),
                tree_map(lambda _: next(it_s), g.state_tree))

    def _outside_loop(self, xs, T, B):
        """Every value that does not depend on the state, by the eager ops themselves."""
        g = self.graph
        env = {id(g.x): xs.reshape(T * B, xs.shape[2])}
        for node in g.nodes:
            kind = node.outputs[0].kind
            if kind == CARRY:
                continue
            args = []
            for k, v in enumerate(node.inputs):
                t = env.get(id(v), v.tensor)
                weight_slot = node.op.__name__ in ("Linear", "MatMul") and k > 0
                if (kind == PERSTEP and v.kind == INVARIANT and not weight_slot and B > 1
                        and len(v.shape) == 2 and v.shape[0] == B):
                    t = _tile_rows(t, T, B)
                args.append(t)
            out = node.op.apply(*args, **node.attrs)
            outs = out if isinstance(out, tuple) else (out,)
            for v, t in zip(node.outputs, outs):
                env[id(v)] = t
        return env

    def replay(self, inputs, T, lengths):
        """The sequence run eagerly from the node's input Tensors (``inputs`` in the node's
        order): the traced step's ops, applied step by step with their recorded attributes,
        and the lengths masking of the loop. Returns the node's outputs as Tensors: every
        step's outputs stacked (T, B, n), then the final state's leaves. Used for gradients
        of gradients only (create_graph), where every op must be on the tape."""
        g, L = self.graph, self.layout
        n_p, n_s = len(L.perstep), len(g.states)
        perstep, state = inputs[:n_p], list(inputs[n_p:n_p + n_s])
        invariant = {id(v): t for v, t in zip(self.invariant_inputs, inputs[n_p + n_s:])}
        # The views of hoisted values the loop reads (the GRU's x_r, x_z, x_n slices).
        views = [n for n in g.nodes if n.outputs[0].kind == PERSTEP and n.op.__name__ in
                 ("Split", "GetItem")]
        steps = []
        for t in range(T):
            env = dict(invariant)
            env.update((id(v), p[t]) for v, p in zip(L.perstep, perstep))
            env.update((id(v), s) for v, s in zip(g.states, state))
            for node in views + L.nodes:
                if not all(id(v) in env for v in node.inputs):
                    continue                     # a view the loop does not read
                args = [env[id(v)] for v in node.inputs]
                if node.op is rules.Copy:        # the identity the compiler adds for a GEMM
                    out = args[0]
                else:
                    out = node.op.apply(*args, **node.attrs)
                outs = out if isinstance(out, tuple) else (out,)
                env.update((id(v), o) for v, o in zip(node.outputs, outs))
            out_t = [env[id(v)] for v in L.outputs]
            new_state = [env[id(v)] for v in L.new_states]
            out_t, new_state = _stop_finished(t, lengths, out_t, new_state, state)
            steps.append(out_t)
            state = new_state
        ys = [stack([step[k] for step in steps]) for k in range(len(L.outputs))]
        return ys + list(state)

    # -- the node's forward and backward ------------------------------------------------------
    def _split_inputs(self, arrays):
        L = self.layout
        n_p, n_s = len(L.perstep), len(self.graph.states)
        dt = self.graph.x.dtype
        P = [np.ascontiguousarray(a, dtype=dt) for a in arrays[:n_p]]
        S0 = arrays[n_p:n_p + n_s]
        inv = dict(zip(map(id, self.invariant_inputs), arrays[n_p + n_s:]))
        return P, S0, inv

    def forward(self, ctx, arrays, T, lengths, train):
        L, W = self.layout, self.writer
        P, S0, inv = self._split_inputs(arrays)
        B = len(lengths)
        dt = self.graph.x.dtype
        slots = T + 1 if train else 2
        S = []
        for s0 in S0:
            s = np.empty((slots,) + s0.shape, dtype=dt)
            s[0] = s0
            S.append(s)
        V = [np.ascontiguousarray(inv[id(v)].reshape(codegen.norm2d(v.shape))) for v in L.invariants]
        WF = []
        for item in W.gemms():
            w = inv[id(item.node.inputs[1])]
            WF.append(np.ascontiguousarray(w.T if item.transposed else w, dtype=dt))
        A = [np.empty(((T if (train and v.saved) else 1), B, v.shape[1]), dtype=dt) for v in L.stored]
        Y = [np.empty((T, B, v.shape[1]), dtype=dt) for v in L.outputs]
        run = self.module.forward_train if train else self.module.forward_infer
        run(lengths, *P, *S, *V, *WF, *A, *Y)
        last = T if train else T & 1
        finals = [s[last].copy() for s in S]
        if train:
            ctx.saved = (T, lengths, P, S, V, inv, A)
        return tuple(Y) + tuple(finals)

    def backward(self, ctx, grads):
        L, W = self.layout, self.writer
        T, lengths, P, S, V, inv, A = ctx.saved
        B = len(lengths)
        dt = self.graph.x.dtype
        n_out = len(L.outputs)

        def given(g, shape):
            return np.zeros(shape, dt) if g is None else np.ascontiguousarray(g, dtype=dt)

        gY = [given(g, (T, B, v.shape[1])) for g, v in zip(grads[:n_out], L.outputs)]
        GSi = [given(g, s.shape[1:]).copy() for g, s in zip(grads[n_out:], S)]
        GSo = [np.empty_like(x) for x in GSi]
        # the buffers the reverse loop assigns element by element need no zeros
        done = W.assigned
        GP = [(np.empty_like if f"GP{v.num}" in done else np.zeros_like)(p)
              for v, p in zip(L.perstep, P)]
        GV = [np.zeros_like(v) for v in V]
        WB, DG, TMP = [], [], []
        for item in W.gemms():
            w = inv[id(item.node.inputs[1])]
            WB.append(np.ascontiguousarray(w if item.transposed else w.T, dtype=dt))
            out = item.node.outputs[0]
            DG.append((np.empty if f"DG{out.num}" in done else np.zeros)((T, B, out.shape[1]), dt))
            TMP.append(np.empty((B, item.node.inputs[0].shape[1]), dt))
        G = [np.empty((B, v.shape[1]), dt) for v in W.adjoint_buffers()]
        d_state = self.module.backward(lengths, *P, *S, *V, *WB, *A, *gY, *GSi, *GSo, *GP, *GV,
                                       *G, *DG, *TMP)
        need = ctx.needs_input_grad
        n_front = len(P) + len(S)
        wanted = {id(v) for v, n in zip(self.invariant_inputs, need[n_front:]) if n}
        grads_inv = {}
        for v, gv in zip(L.invariants, GV):
            if v.requires_grad and id(v) in wanted:
                grads_inv[id(v)] = gv.reshape(v.shape)
        stored = {id(v): a for v, a in zip(L.stored, A)}
        for item, dg in zip(W.gemms(), DG):
            x, w = item.node.inputs
            if id(w) not in wanted:
                continue                                  # a frozen weight: no GEMM
            xs = S[self.graph.states.index(x)][:T] if x.source == "state" else stored[id(x)]
            dg2, x2 = dg.reshape(T * B, -1), xs.reshape(T * B, -1)
            dw = dg2.T @ x2 if item.transposed else x2.T @ dg2       # one GEMM over all T·B
            grads_inv[id(w)] = dw if id(w) not in grads_inv else grads_inv[id(w)] + dw
        out = list(GP) + list(d_state) + [grads_inv.get(id(v)) for v in self.invariant_inputs]
        return tuple(g if n else None for g, n in zip(out, need))

