"""The BPTT ledger: how much of a shared weight's gradient came from each time step.

An unrolled cell uses the same Parameter at every step, so its ``.grad`` is a sum over
steps. ``Unroll`` tags every op it runs with its step, and each use of a parameter is one
tape node; so the gradient a node hands a parameter during backward is exactly that step's
term of the sum. The ledger adds those terms up per step:

    with ledger(model) as led:
        ys, _ = rnn(xs)
        loss = criterion(readout(ys), targets)
        loss.backward()
    print(led)                                  # a table, one row per step
    led.param_grad("cell.weight_hh", 7)         # dL/dW_hh through step 7's use of W_hh
    led.state_grad_norms()                      # ||dL/dh_t|| for every t

``sum over t of led.param_grad(name, t)`` plus ``led.param_grad(name, "outside")`` (uses
outside any step: the readout after the Unroll, a learned initial state) equals the
parameter's ``.grad`` from that backward, to float rounding; the tests check it. Run both the
forward and the backward inside the block. Several Unrolls in one forward (Bidirectional,
Seq2Seq) share step indices: their terms add up under the same t, and their states are named
``unroll1.h``, ... after the first Unroll's ``h``. A hook that replaces a leaf's gradient
changes ``.grad`` but not the ledger. Memory: one array per parameter per step.

Each row also gives the fraction of saturated units among the step's sigmoid and tanh
outputs (|tanh| > ``saturation``, sigmoid outside [1 - s, s]): where their derivative is
nearly 0 and the gradient through them dies.
"""

from html import escape

import numpy as np

from .._display import html_table
from ..tensor import Tensor
from ._common import (
    ObserverContext,
    annotate,
    parameter_names,
    scope_of,
    state_leaves,
    state_names,
)

OUTSIDE = "outside"
NOTHING_RECORDED = "ledger: nothing recorded (run forward and backward inside the block)"


class ledger(ObserverContext):
    """Record, per time step, each parameter's gradient term, ``||dL/dh_t||`` and saturation.

    ``params``: a Module, a dict name -> Parameter, or a list of Parameters to account for
    (default: every leaf that receives a gradient, named by ``.name`` or ``leaf<i>``).
    """

    def __init__(self, params=None, saturation=0.99):
        if not 0.5 < saturation < 1.0:
            raise ValueError(f"ledger: saturation must lie in (0.5, 1), got {saturation}")
        self.saturation = saturation
        self._names = parameter_names(params)
        self._track_all = params is None
        self._contrib = {}        # name -> {step or OUTSIDE: summed gradient array}
        self._state_norms = {}    # state name -> {step: ||dL/d state||}
        self._saturated = {}      # step or OUTSIDE -> [sat. tanh, tanh units, sat. sigmoid, sigmoid units]
        self._unrolls = []        # the Unroll modules seen, in order (state names get a prefix)
        self.h_name = None        # the state tensor the cell also emits: ``h``
        self.steps_seen = set()
        self._active = False
        self.backward_calls = 0

    def __enter__(self):
        self._active = True
        return super().__enter__()

    def __exit__(self, exc_type, exc, tb):
        self._active = False
        return super().__exit__(exc_type, exc, tb)

    # --- observer ------------------------------------------------------------------------
    def on_forward(self, ctx, inputs, out):
        step, _ = annotate(ctx)
        name = type(ctx).op_name()
        if name not in ("tanh", "sigmoid"):
            return
        y = out.data
        if name == "tanh":
            sat = np.abs(y) > self.saturation
        else:
            sat = np.minimum(y, 1.0 - y) < 1.0 - self.saturation
        counts = self._saturated.setdefault(OUTSIDE if step is None else step, [0, 0, 0, 0])
        k = 0 if name == "tanh" else 2
        counts[k] += int(sat.sum())
        counts[k + 1] += int(y.size)

    def on_step(self, unroll, t, out, state):
        self.steps_seen.add(t)
        if not any(u is unroll for u in self._unrolls):
            self._unrolls.append(unroll)
        u = next(i for i, x in enumerate(self._unrolls) if x is unroll)
        prefix = "" if u == 0 else f"unroll{u}."
        leaves = state_leaves(state)
        names = state_names(unroll.cell, state)
        for leaf, name in zip(leaves, names):
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                leaf.register_hook(self._state_hook(prefix + name, t))
        if u == 0 and self.h_name is None and names:
            # h is the state tensor the cell also emits as its output (else the first one).
            self.h_name = next((n for leaf, n in zip(leaves, names) if leaf is out), names[0])

    def _state_hook(self, name, t):
        def hook(g):
            if self._active:
                self._state_norms.setdefault(name, {})[t] = float(np.linalg.norm(g))
        return hook

    def on_backward(self, ctx, out_grads, in_grads, outs):
        self.backward_calls += 1
        step = None
        for p, g in zip(ctx.parents, in_grads):
            if g is None or p._ctx is not None or not p.requires_grad:
                continue
            name = self._names.get(id(p))
            if name is None:
                if not self._track_all:
                    continue
                name = p.name or f"leaf{len(self._names)}"
                self._names[id(p)] = name
            if step is None:
                s, _ = scope_of(ctx)
                step = OUTSIDE if s is None else s
            terms = self._contrib.setdefault(name, {})
            if step in terms:
                terms[step] = terms[step] + g.astype(p.dtype, copy=False)
            else:
                terms[step] = np.array(g, dtype=p.dtype, copy=True)

    # --- queries -------------------------------------------------------------------------
    @property
    def steps(self):
        """The time steps seen, in order."""
        keys = set(self.steps_seen)
        for terms in self._contrib.values():
            keys.update(k for k in terms if k != OUTSIDE)
        return sorted(keys)

    @property
    def param_names(self):
        """The parameters that received a gradient, in the order they were given."""
        order = list(dict.fromkeys(self._names.values()))
        return [n for n in order if n in self._contrib]

    def _terms(self, name):
        if name not in self._contrib:
            if not self.backward_calls:
                raise RuntimeError("ledger: no backward ran inside the `with ledger(...)` block; "
                                   "run loss.backward() inside it")
            raise KeyError(f"ledger: no gradient reached parameter {name!r}; known: "
                           f"{', '.join(self._contrib) or 'none'}")
        return self._contrib[name]

    def param_grad(self, name, step):
        """The gradient ``name`` received through its use(s) at ``step`` (or ``"outside"``)."""
        terms = self._terms(name)
        if step in terms:
            return terms[step]
        shape_of = next(iter(terms.values()))
        return np.zeros_like(shape_of)

    def param_grads(self, name):
        """Array (T, *shape): the per-step terms of ``name``'s gradient, steps in order."""
        return np.stack([self.param_grad(name, t) for t in self.steps])

    def param_grad_norms(self, name):
        """``||dL/dW at step t||`` for every step t (Frobenius norm), shape (T,)."""
        return np.array([float(np.linalg.norm(self.param_grad(name, t))) for t in self.steps])

    def total(self, name):
        """Sum of all the terms (steps and outside): the ``.grad`` of that backward."""
        terms = self._terms(name)
        return sum(terms.values())

    def state_grad_norms(self, name=None):
        """``||dL/d state_t||`` for every step, shape (T,) (NaN where none flowed). ``name``:
        a state tensor's name (``h``, ``c``, ``layer1.h``, ...); default the one the cell also
        emits as output (``h``)."""
        if name is None:
            name = self.h_name
        if name is None or name not in self._state_norms:
            if not self.backward_calls:
                raise RuntimeError("ledger: no backward ran inside the `with ledger(...)` block")
            raise KeyError(f"ledger: no state gradient recorded for {name!r}; known: "
                           f"{', '.join(self._state_norms) or 'none (was an Unroll run inside?)'}")
        norms = self._state_norms[name]
        return np.array([norms.get(t, np.nan) for t in self.steps])

    @property
    def state_names(self):
        return list(self._state_norms)

    def saturation_fraction(self, step=None):
        """Fraction of saturated sigmoid/tanh units at each step (shape (T,)), or at one step."""
        def frac(key):
            st, nt, ss, ns = self._saturated.get(key, (0, 0, 0, 0))
            return (st + ss) / (nt + ns) if nt + ns else np.nan
        if step is not None:
            return frac(step)
        return np.array([frac(t) for t in self.steps])

    # --- report --------------------------------------------------------------------------
    def table(self, params=None):
        """A text table: one row per step, then the outside terms and the totals."""
        head, rows = self._table_rows(params)
        widths = [max(8, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])

    def _table_rows(self, params=None):
        """(header, rows of cell texts) of `table`, shared by the text and the HTML form."""
        names = list(params) if params is not None else self.param_names
        h = self.h_name
        has_h = h in self._state_norms
        head = ["step"] + ([f"|dL/d{h}_t|"] if has_h else []) + [f"|dL/d{n}|" for n in names] + ["saturated"]
        rows = []
        hn = self.state_grad_norms(h) if has_h else None
        for i, t in enumerate(self.steps):
            row = [str(t)] + ([f"{hn[i]:.3e}"] if has_h else [])
            row += [f"{np.linalg.norm(self.param_grad(n, t)):.3e}" for n in names]
            row.append(f"{self.saturation_fraction(t):.1%}" if not np.isnan(self.saturation_fraction(t))
                       else "-")
            rows.append(row)
        rows.append([OUTSIDE] + (["-"] if has_h else []) +
                    [f"{np.linalg.norm(self.param_grad(n, OUTSIDE)):.3e}" for n in names] + ["-"])
        rows.append(["sum=.grad"] + (["-"] if has_h else []) +
                    [f"{np.linalg.norm(self.total(n)):.3e}" for n in names] + ["-"])
        return head, rows

    def __str__(self):
        if not self._contrib:
            return NOTHING_RECORDED
        return self.table()

    __repr__ = __str__

    def _repr_html_(self):
        """Jupyter's display: the table as HTML, one row per time step."""
        if not self._contrib:
            return f"<p>{escape(NOTHING_RECORDED)}</p>"
        head, rows = self._table_rows()
        return html_table(head, rows, caption="BPTT ledger: each parameter's gradient, split by "
                                              "the time step that used it (Frobenius norms)")
