"""``check_cell``: the property suite every recurrent cell should pass, in one call.

A user's test file needs one line per cell::

    from tinygrad_rnn.testing import check_cell

    def test_my_cell():
        check_cell(lambda: MyCell(3, 5))          # input_size read from the cell

Hypothesis draws sequence lengths, batch sizes, inputs, initial states and weight seeds, in
float64, and checks five properties (a sixth for a cell that runs whole sequences, a seventh
for a cell the compiler can run, and an eighth on request):

1. BPTT gradients of every parameter, the inputs and the initial state equal central finite
   differences (every element on a few small cases; the dot-product test
   ``<u, J^T v> = <J u, v>`` on many);
2. ``Unroll`` equals a hand-written step loop (and its ``batch_first`` and full-``lengths``
   forms);
3. the state keeps its structure, shapes and dtype from step to step, batch on axis 0;
4. with ``lengths``, each padded sequence gives the outputs, final state and gradients it
   gives alone (outputs past its length exactly zero);
5. truncated BPTT with a window covering the sequence equals full BPTT, and shorter windows
   equal the sum of the windows' separate gradients;
6. for a cell that defines ``forward_sequence``: it gives the outputs, final state and
   gradients that stepping ``forward`` gives, with and without ``lengths``;
7. ``tg.compile(cell)`` (the generated loops) gives the eager outputs, final state and
   every gradient, with and without ``lengths``. A cell the compiler cannot run is skipped
   with a warning saying why.
8. (``second_order=True``) BPTT's own derivatives: the gradients differentiated again
   (``create_graph``) equal central differences of the first-order gradients
   (``gradgradcheck``), for the parameters, the inputs and the initial state.

A failure raises one ``AssertionError`` naming the property, the error, and hypothesis'
shrunk falsifying example.
"""

import inspect

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..dtypes import default_dtype
from ..functional import stack
from ..grad_mode import no_grad
from ..nn import init
from ..rnn.cell import describe_structure, detach_state, same_structure, tree_leaves, tree_map
from ..rnn.unroll import Unroll
from ..tensor import Tensor
from .gradcheck import check_vjp, gradcheck, gradgradcheck

PROPERTIES = {
    1: "BPTT gradients equal finite differences",
    2: "Unroll equals a hand-written step loop",
    3: "the state keeps its structure, shapes and dtype",
    4: "a padded sequence with lengths equals the unpadded sequence",
    5: "truncated BPTT equals full BPTT when the window covers the sequence",
    6: "forward_sequence equals the stepped forward (values and gradients, with lengths)",
    7: "the compiled cell (tg.compile) equals the eager cell",
    8: "second derivatives of BPTT equal finite differences of its gradients",
}

# Values compared between two computations of the same thing (batched vs one row at a
# time, one backward vs several): they differ only by float64 rounding.
_SAME_RTOL, _SAME_ATOL = 1e-9, 1e-12


def check_cell(factory, input_size=None, *, max_examples=25, gradcheck_examples=3, max_steps=6,
               max_batch=3, derandomize=True, atol=1e-6, rtol=1e-5, second_order=False,
               second_order_examples=2):
    """Property-test a recurrent cell; raise ``AssertionError`` if any property fails.

    ``factory()`` builds a fresh cell (``forward(x, state) -> (output, new_state)`` and
    ``init_state(batch_size)``); it is called with the default dtype set to float64 (and with
    ``dtype=np.float64`` if it takes a ``dtype`` argument), and with the weight seed drawn
    per example (``tg.manual_seed``); the global default dtype and random generator are
    restored afterwards. ``input_size`` defaults to the cell's ``input_size`` attribute.

    ``max_examples`` examples per property (``gradcheck_examples`` for the element-by-element
    gradient check, whose cost grows with the number of parameters); sequences of 1 to
    ``max_steps`` steps and batches of 1 to ``max_batch``. ``derandomize=True`` makes every
    run draw the same examples (deterministic CI); ``False`` explores new ones each run.
    ``atol``/``rtol`` are the finite-difference tolerances of property 1.
    ``second_order=True`` adds property 8 (``second_order_examples`` examples of at most 2
    steps: each costs two backwards per parameter element).

    The cell runs in eval mode (``cell.eval()``): dropout masks would make finite
    differences meaningless.
    """
    __tracebackhide__ = True
    with default_dtype(np.float64):
        probe = _build(factory, seed=0)
        name = type(probe).__name__
        size = input_size if input_size is not None else getattr(probe, "input_size", None)
        if size is None:
            raise ValueError(f"check_cell: cannot tell the input size: {name} has no input_size "
                             "attribute; pass it, as in check_cell(factory, input_size=...)")
        if not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"check_cell: input_size must be a non-negative integer, got {size!r}")
        suite = _Suite(factory, int(size), probe, name, max_steps, max_batch, atol, rtol)
        properties = suite.properties()
        if second_order:
            properties.append((8, suite.second_derivatives, suite.cases(max_steps=2, max_batch=2),
                               True))
        for number, prop, strategy, full_check in properties:
            n = gradcheck_examples if full_check else max_examples
            if number == 8:
                n = second_order_examples
            _run(prop, strategy, n, derandomize, name, number)
        blocker = _compile_blocker(probe, int(size))
        if blocker is None:
            # Few examples: each is cheap, but the first compiles (seconds, then cached).
            _run(suite.compiled_matches_eager, suite.cases(lengths=True), min(max_examples, 8),
                 derandomize, name, 7)
        else:
            import warnings
            warnings.warn(f"check_cell({name}): property (7) skipped, the cell does not compile: "
                          f"{blocker}", stacklevel=2)


# --- building cells --------------------------------------------------------------------

def _takes_dtype(factory):
    try:
        return "dtype" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _build(factory, seed):
    with init.fork_rng(seed):
        cell = factory(dtype=np.float64) if _takes_dtype(factory) else factory()
    if not callable(getattr(cell, "forward", None)) or not callable(getattr(cell, "init_state", None)):
        raise TypeError(f"check_cell: factory() must return a cell with forward(x, state) and "
                        f"init_state(batch_size), got {type(cell).__name__}")
    params = cell.parameters() if callable(getattr(cell, "parameters", None)) else []
    wrong = sorted({str(p.dtype) for p in params if p.dtype != np.float64})
    if wrong:
        raise TypeError(f"check_cell: {type(cell).__name__} has parameters of dtype {', '.join(wrong)}; "
                        "finite differences need float64. Let the factory use the default dtype "
                        "(check_cell sets it to float64) or accept a dtype argument")
    if callable(getattr(cell, "eval", None)):
        cell.eval()
    # gradcheck names a failing tensor by its .name: make it the parameter's path.
    for path, p in _named(cell):
        if p.name is None:
            p.name = path
    return cell


def _parameters(cell):
    return cell.parameters() if callable(getattr(cell, "parameters", None)) else []


# --- examples ----------------------------------------------------------------------------

def _away_from_zero(bound, gap=0.1):
    """Floats with ``gap <= |v| <= bound``."""
    return st.one_of(st.floats(gap, bound), st.floats(-bound, -gap))


def _short(a):
    """An array on one line, every float exactly (shortest round-trip digits)."""
    text = np.array2string(np.asarray(a), separator=", ", floatmode="unique", threshold=200)
    return " ".join(text.split())


class Case:
    """One drawn example. ``state`` None means the cell's own ``init_state(B)``.

    (A plain class, not a dataclass: hypothesis prints dataclasses field by field, and
    this ``__repr__`` is shorter and exact.)
    """

    def __init__(self, T, B, weight_seed, xs, state=None, lengths=None, window=None):
        self.T, self.B, self.weight_seed, self.xs = T, B, weight_seed, xs
        self.state, self.lengths, self.window = state, lengths, window

    def __repr__(self):
        parts = [f"T={self.T}", f"B={self.B}", f"weight_seed={self.weight_seed}",
                 f"xs={_short(self.xs)}"]
        if self.state is None:
            parts.append("state=cell.init_state(B)")
        else:
            parts.append("state=" + repr(tree_map(_short, self.state)).replace("'", ""))
        if self.lengths is not None:
            parts.append(f"lengths={_short(self.lengths)}")
        if self.window is not None:
            parts.append(f"window={self.window}")
        return "Case(" + ", ".join(parts) + ")"


def _leaf(a, requires_grad=True):
    """A fresh leaf Tensor holding a copy of ``a``; only floating leaves require grad."""
    a = np.asarray(a.data if isinstance(a, Tensor) else a)
    return Tensor(a.copy(), requires_grad=requires_grad and a.dtype.kind == "f")


def _unflatten(template, leaves):
    it = iter(leaves)
    return tree_map(lambda _: next(it), template)


class _Suite:
    """The properties, as functions of a drawn ``Case``, and their strategies."""

    def __init__(self, factory, input_size, probe, name, max_steps, max_batch, atol, rtol):
        self.factory, self.input_size, self.name = factory, input_size, name
        self.max_steps, self.max_batch = max_steps, max_batch
        self.atol, self.rtol = atol, rtol
        self.probe = probe

    def properties(self):
        """(property number, function, strategy, is the costly full check) in the order they
        run: structure first, since a cell that breaks it makes the others fail confusingly.
        The element-by-element gradient check runs on short sequences and small batches."""
        small = self.cases(max_steps=min(3, self.max_steps), max_batch=min(2, self.max_batch))
        return [
            (3, self.structure, self.cases(), False),
            (2, self.unroll_matches_loop, self.cases(), False),
            (1, self.gradients_full, small, True),
            (1, self.gradients_vjp, self.cases(lengths=True), False),
            (4, self.lengths_match_unpadded, self.cases(lengths=True), False),
            (5, self.truncated_bptt, self.cases(window=True), False),
        ] + ([(6, self.sequence_matches_steps, self.cases(lengths=True), False)]
             if getattr(self.probe, "forward_sequence", None) is not None else [])

    def build(self, seed):
        with default_dtype(np.float64):
            return _build(self.factory, seed)

    def template(self, B):
        with no_grad(), default_dtype(np.float64):
            return self.probe.init_state(B)

    # --- strategies ----------------------------------------------------------------------

    def cases(self, max_steps=None, max_batch=None, lengths=False, window=False):
        max_steps = max_steps or self.max_steps
        max_batch = max_batch or self.max_batch

        @st.composite
        def draw_case(draw):
            T = draw(st.integers(1, max_steps))
            B = draw(st.integers(1, max_batch))
            seed = draw(st.integers(0, 2 ** 16 - 1))
            # Inputs away from zero: with bias-free relu cells, all-zero inputs and state put
            # every pre-activation on the kink, where finite differences measure nothing.
            xs = draw(hnp.arrays(np.float64, (T, B, self.input_size),
                                 elements=_away_from_zero(2.0)))
            state = None
            if draw(st.booleans()):
                state = tree_map(lambda leaf: self._draw_leaf(draw, leaf), self.template(B))
            case = Case(T, B, seed, xs, state)
            if lengths:
                case.lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)),
                                        dtype=np.int64)
            if window:
                case.window = draw(st.integers(1, T))
            return case

        return draw_case()

    @staticmethod
    def _draw_leaf(draw, leaf):
        if isinstance(leaf, Tensor) and leaf.dtype.kind == "f":
            return draw(hnp.arrays(np.float64, leaf.shape,
                                   elements=_away_from_zero(1.0)))
        return leaf.data if isinstance(leaf, Tensor) else leaf    # e.g. an integer counter

    # --- helpers -------------------------------------------------------------------------

    def initial_state(self, cell, case, requires_grad=False):
        """The case's initial state as Tensors, and the leaves that require grad."""
        if case.state is None:
            return cell.init_state(case.B), []
        state = tree_map(lambda a: _leaf(a, requires_grad), case.state)
        return state, [t for t in tree_leaves(state) if t.requires_grad]

    def unroll_fn(self, cell, case, lengths=None):
        """``fn(xs, *state_leaves) -> (ys, final_state)`` for gradcheck and check_vjp."""
        template = case.state

        def fn(xs, *leaves):
            state = None if template is None else _unflatten(template, leaves)
            return Unroll(cell)(xs, state, lengths)

        leaves = [] if template is None else [_leaf(a) for a in tree_leaves(template)]
        for i, leaf in enumerate(leaves):
            leaf.name = f"initial state leaf {i}"
        return fn, leaves

    # --- property 1 ----------------------------------------------------------------------

    def gradients_full(self, case):
        """Every gradient element against central differences."""
        cell = self.build(case.weight_seed)
        fn, leaves = self.unroll_fn(cell, case)
        gradcheck(fn, Tensor(case.xs, requires_grad=True, name="xs"), *leaves,
                  params=_parameters(cell), atol=self.atol, rtol=self.rtol)

    def gradients_vjp(self, case):
        """The dot-product test, with and without lengths."""
        cell = self.build(case.weight_seed)
        for lengths in (None, case.lengths):
            fn, leaves = self.unroll_fn(cell, case, lengths)
            check_vjp(fn, Tensor(case.xs, requires_grad=True, name="xs"), *leaves,
                      params=_parameters(cell), atol=self.atol, rtol=self.rtol)

    # --- property 8 ----------------------------------------------------------------------

    def second_derivatives(self, case):
        """gradgradcheck of the unroll: d/dx of (dL/dx . u) against finite differences."""
        cell = self.build(case.weight_seed)
        fn, leaves = self.unroll_fn(cell, case)
        # Second differences lose digits: the tolerances of gradgradcheck, not property 1's.
        gradgradcheck(fn, Tensor(case.xs, requires_grad=True, name="xs"), *leaves,
                      params=_parameters(cell), atol=max(self.atol, 1e-5),
                      rtol=max(self.rtol, 1e-4))

    # --- property 2 ----------------------------------------------------------------------

    def unroll_matches_loop(self, case):
        cell = self.build(case.weight_seed)
        s0, _ = self.initial_state(cell, case)
        state, outs = s0, []
        for t in range(case.T):
            out, state = cell(Tensor(case.xs[t].copy()), state)
            outs.append(out)
        expected_ys = tree_map(lambda *o: stack(o), *outs)

        ys, final = Unroll(cell)(Tensor(case.xs), s0)
        _assert_trees_close(ys, expected_ys, "Unroll outputs vs the step loop")
        _assert_trees_close(final, state, "Unroll final state vs the step loop")

        ys_bf, final_bf = Unroll(cell, batch_first=True)(Tensor(case.xs.transpose(1, 0, 2).copy()), s0)
        ys_bf = tree_map(lambda y: y.transpose(1, 0, *range(2, y.ndim)), ys_bf)
        _assert_trees_close(ys_bf, expected_ys, "Unroll(batch_first=True) outputs (transposed back)")
        _assert_trees_close(final_bf, state, "Unroll(batch_first=True) final state")

        full = np.full(case.B, case.T)
        ys_l, final_l = Unroll(cell)(Tensor(case.xs), s0, lengths=full)
        _assert_trees_close(ys_l, expected_ys, "Unroll outputs with lengths = T everywhere")
        _assert_trees_close(final_l, state, "Unroll final state with lengths = T everywhere")

    # --- property 3 ----------------------------------------------------------------------

    def structure(self, case):
        cell = self.build(case.weight_seed)
        B = case.B
        s0 = cell.init_state(B)
        _check_leaves(s0, B, f"init_state({B})")
        other = cell.init_state(B + 1)
        if not same_structure(s0, other, shapes=False):
            raise AssertionError(f"init_state({B}) has structure {describe_structure(s0)} but "
                                 f"init_state({B + 1}) has {describe_structure(other)}")
        for a, b in zip(tree_leaves(s0), tree_leaves(other)):
            if b.shape != (B + 1,) + a.shape[1:]:
                raise AssertionError(f"init_state({B + 1}) leaf has shape {b.shape}; expected "
                                     f"{(B + 1,) + a.shape[1:]} (only the batch axis 0 changes)")
        state = s0 if case.state is None else self.initial_state(cell, case)[0]
        first_out = None
        for t in range(case.T):
            result = cell(Tensor(case.xs[t].copy()), state)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise AssertionError(f"step {t}: forward must return (output, new_state), got "
                                     f"{describe_structure(result)}")
            out, new_state = result
            if not same_structure(new_state, state):
                raise AssertionError(f"step {t}: the state went in as {describe_structure(state)} "
                                     f"and came out as {describe_structure(new_state)}; it must keep "
                                     f"the structure and shapes of init_state({B})")
            for old, new in zip(tree_leaves(state), tree_leaves(new_state)):
                if new.dtype != old.dtype:
                    raise AssertionError(f"step {t}: a state tensor of dtype {old.dtype} came out "
                                         f"as {new.dtype}")
            _check_leaves(out, B, f"the output at step {t}")
            if first_out is None:
                first_out = out
            elif not same_structure(out, first_out):
                raise AssertionError(f"step {t}: the output is {describe_structure(out)} but at "
                                     f"step 0 it was {describe_structure(first_out)}")
            state = new_state

    # --- property 4 ----------------------------------------------------------------------

    def lengths_match_unpadded(self, case):
        cell = self.build(case.weight_seed)
        params = _parameters(cell)
        rng = np.random.default_rng(case.weight_seed)
        lengths = case.lengths
        # Garbage past each length: none of it may leak into outputs, state or gradients.
        xs_np = case.xs.copy()
        for b, n in enumerate(lengths):
            xs_np[n:, b] = rng.uniform(-3.0, 3.0, xs_np[n:, b].shape)

        xs = Tensor(xs_np, requires_grad=True)
        s0, s0_leaves = self.initial_state(cell, case, requires_grad=True)
        ys, final = Unroll(cell)(xs, s0, lengths=lengths)
        v_ys = [rng.standard_normal(y.shape) for y in tree_leaves(ys)]
        v_final = [rng.standard_normal(s.shape) for s in tree_leaves(final)]
        _zero_grads(params)
        _project(tree_leaves(ys) + tree_leaves(final), v_ys + v_final).backward()
        batch_param_grads = _grads(params)

        xs_grad = _grad(xs)
        s0_values = [s.data for s in tree_leaves(s0)]
        summed = [np.zeros(p.shape) for p in params]
        for b, n in enumerate(lengths):
            n = int(n)
            row = slice(b, b + 1)
            for k, y in enumerate(tree_leaves(ys)):
                past = y.data[n:, b]
                if np.any(past != 0):
                    raise AssertionError(f"sequence {b} (length {n}): output leaf {k} is not zero "
                                         f"past its length: {_short(past)}")
            if case.state is None:
                alone_s0 = cell.init_state(1)
                alone_leaves = []
            else:
                alone_s0 = _unflatten(s0, [_leaf(v[row]) for v in s0_values])
                alone_leaves = [t for t in tree_leaves(alone_s0) if t.requires_grad]
            _zero_grads(params)
            if n == 0:
                alone_final = alone_s0
                loss_terms = list(zip(tree_leaves(alone_final), [w[row] for w in v_final]))
                x_alone = None
            else:
                x_alone = Tensor(xs_np[:n, row].copy(), requires_grad=True)
                alone_ys, alone_final = Unroll(cell)(x_alone, alone_s0)
                for k, (y, y1) in enumerate(zip(tree_leaves(ys), tree_leaves(alone_ys))):
                    _assert_close(y.data[:n, row], y1.data, f"sequence {b} (length {n}): outputs "
                                  f"(leaf {k}) in the padded batch vs alone")
                loss_terms = (list(zip(tree_leaves(alone_ys), [v[:n, row] for v in v_ys]))
                              + list(zip(tree_leaves(alone_final), [w[row] for w in v_final])))
            for k, (s, s1) in enumerate(zip(tree_leaves(final), tree_leaves(alone_final))):
                _assert_close(s.data[row], s1.data, f"sequence {b} (length {n}): final state "
                              f"(leaf {k}) in the padded batch vs alone")
            loss = _project([t for t, _ in loss_terms], [v for _, v in loss_terms])
            if loss.requires_grad:
                loss.backward()
            for acc, g in zip(summed, _grads(params)):
                acc += g
            if x_alone is not None:
                _assert_close(xs_grad[:n, row], _grad(x_alone), f"sequence {b} (length {n}): "
                              "input gradient in the padded batch vs alone")
            past = xs_grad[n:, b]
            if np.any(past != 0):
                raise AssertionError(f"sequence {b} (length {n}): the input gradient past its length "
                                     f"is not zero: {_short(past)}")
            for k, (leaf, alone) in enumerate(zip(s0_leaves, alone_leaves)):
                _assert_close(_grad(leaf)[row], _grad(alone), f"sequence {b} (length {n}): "
                              f"initial-state gradient (leaf {k}) in the padded batch vs alone")
        for (pname, _), g_batch, g_sum in zip(_named(cell), batch_param_grads, summed):
            _assert_close(g_batch, g_sum, f"gradient of parameter '{pname}': padded batch vs the "
                          "sum over sequences run alone")

    # --- property 5 ----------------------------------------------------------------------

    def truncated_bptt(self, case):
        cell = self.build(case.weight_seed)
        params = _parameters(cell)
        rng = np.random.default_rng(case.weight_seed + 1)
        T = case.T
        with no_grad():
            ys_shape, final_shape = Unroll(cell)(Tensor(case.xs), self.initial_state(cell, case)[0])
        v_ys = [rng.standard_normal(y.shape) for y in tree_leaves(ys_shape)]
        v_final = [rng.standard_normal(s.shape) for s in tree_leaves(final_shape)]

        def windowed(k):
            """Truncated BPTT as a training loop does it: backward per window, then detach."""
            _zero_grads(params)
            xs = Tensor(case.xs, requires_grad=True)
            state, leaves = self.initial_state(cell, case, requires_grad=True)
            for start in range(0, T, k):
                ys_w, state = Unroll(cell)(xs[start:start + k], state)
                terms = tree_leaves(ys_w)
                vs = [v[start:start + k] for v in v_ys]
                if start + k >= T:
                    terms, vs = terms + tree_leaves(state), vs + v_final
                _project(terms, vs).backward()
                state = detach_state(state)
            return [_grad(xs)] + [_grad(s) for s in leaves] + _grads(params), state

        # A window covering the whole sequence is full BPTT.
        _zero_grads(params)
        xs = Tensor(case.xs, requires_grad=True)
        state, leaves = self.initial_state(cell, case, requires_grad=True)
        ys, final = Unroll(cell)(xs, state)
        _project(tree_leaves(ys) + tree_leaves(final), v_ys + v_final).backward()
        full = [_grad(xs)] + [_grad(s) for s in leaves] + _grads(params)
        names = ["the inputs"] + [f"initial-state leaf {i}" for i in range(len(leaves))] + \
                [f"parameter '{n}'" for n, _ in _named(cell)]
        for k in (T, T + 1):
            got, final_k = windowed(k)
            for name, g, g_full in zip(names, got, full):
                _assert_close(g, g_full, f"gradient of {name}: truncated BPTT with window {k} "
                              f"(T = {T}) vs full BPTT")
            _assert_trees_close(final_k, final, f"final state with window {k} vs full")

        # Shorter windows: the per-window backward calls accumulate exactly the gradients of
        # the windows computed separately, each starting from a fresh leaf.
        k = case.window
        got, final_k = windowed(k)
        _assert_trees_close(final_k, final, f"final state with window {k} vs full (values do not "
                            "depend on truncation)")
        expected = [np.zeros(g.shape) for g in full]
        state, leaves = self.initial_state(cell, case, requires_grad=True)
        for start in range(0, T, k):
            _zero_grads(params)
            x_w = Tensor(case.xs[start:start + k].copy(), requires_grad=True)
            ys_w, new_state = Unroll(cell)(x_w, state)
            terms, vs = tree_leaves(ys_w), [v[start:start + k] for v in v_ys]
            if start + k >= T:
                terms, vs = terms + tree_leaves(new_state), vs + v_final
            _project(terms, vs).backward()
            expected[0][start:start + k] += _grad(x_w)
            if start == 0:
                for i, s in enumerate(leaves):
                    expected[1 + i] += _grad(s)
            for acc, g in zip(expected[1 + len(leaves):], _grads(params)):
                acc += g
            state = tree_map(lambda s: Tensor(s.data.copy()), new_state)
        for name, g, g_sep in zip(names, got, expected):
            _assert_close(g, g_sep, f"gradient of {name}: truncated BPTT with window {k} vs the sum "
                          "of the windows run separately")

    # --- property 6 ----------------------------------------------------------------------

    def sequence_matches_steps(self, case):
        """Unroll runs forward_sequence; the same cell behind `_Stepped` is stepped."""
        cell = self.build(case.weight_seed)
        params = _parameters(cell)
        rng = np.random.default_rng(case.weight_seed + 2)
        for lengths in (None, case.lengths):
            results, cotangents = [], None
            for runner in (cell, _Stepped(cell)):
                _zero_grads(params)
                xs = Tensor(case.xs, requires_grad=True)
                s0, s0_leaves = self.initial_state(cell, case, requires_grad=True)
                ys, final = Unroll(runner)(xs, s0, lengths)
                leaves = tree_leaves(ys) + tree_leaves(final)
                if cotangents is None:                       # the same ones for both runs
                    cotangents = [rng.standard_normal(t.shape) for t in leaves]
                loss = _project(leaves, cotangents)
                if loss.requires_grad:
                    loss.backward()
                results.append((ys, final, [_grad(xs)] + [_grad(s) for s in s0_leaves] + _grads(params)))
            (ys, final, grads), (ys_step, final_step, grads_step) = results
            given = "without lengths" if lengths is None else f"with lengths {_short(lengths)}"
            _assert_trees_close(ys, ys_step, f"outputs of forward_sequence vs stepping, {given}")
            _assert_trees_close(final, final_step, f"final state of forward_sequence vs stepping, {given}")
            n_state = len(grads) - 1 - len(params)
            names = (["the inputs"] + [f"initial-state leaf {i}" for i in range(n_state)]
                     + [f"parameter '{n}'" for n, _ in _named(cell)])
            for name, g, g_step in zip(names, grads, grads_step):
                _assert_close(g, g_step, f"gradient of {name}: forward_sequence vs stepping, {given}")

    # --- property 7 ----------------------------------------------------------------------

    def compiled_matches_eager(self, case):
        from ..compile import compile  # imports numba: only for this property
        cell = self.build(case.weight_seed)
        params = _parameters(cell)
        runs = []
        for runner in (cell, compile(cell, fallback=False)):
            state, leaves = self.initial_state(cell, case, requires_grad=True)
            xs = Tensor(case.xs, requires_grad=True)
            _zero_grads(params)
            ys, final = Unroll(runner)(xs, state, case.lengths)
            outs = tree_leaves(ys) + tree_leaves(final)
            rng = np.random.default_rng(case.weight_seed)
            _project(outs, [rng.standard_normal(o.shape) for o in outs]).backward()
            runs.append(([o.data for o in outs], [_grad(xs)] + [_grad(s) for s in leaves]
                         + _grads(params)))
        (outs_c, grads_c), (outs_e, grads_e) = runs[1], runs[0]
        for k, (a, b) in enumerate(zip(outs_c, outs_e)):
            _assert_close(a, b, f"compiled vs eager: output/final-state leaf {k}")
        names = ["xs"] + [f"initial state leaf {i}" for i in range(len(grads_c) - 1 - len(params))]
        names += [n for n, _ in _named(cell)]
        for name, a, b in zip(names, grads_c, grads_e):
            _assert_close(a, b, f"compiled vs eager: gradient of {name}")


class _Stepped:
    """A cell seen without its forward_sequence, so that Unroll steps it with forward."""

    def __init__(self, cell):
        self.cell = cell
        self.input_size = getattr(cell, "input_size", None)

    def init_state(self, batch_size):
        return self.cell.init_state(batch_size)

    def __call__(self, x, state):
        return self.cell(x, state)


def _compile_blocker(probe, input_size):
    """Why ``tg.compile`` would run this cell eager (a sentence), or None if it compiles."""
    try:
        from ..compile import CompileError, compile
    except ImportError as exc:          # numba missing
        return str(exc)
    try:
        compiled = compile(probe, fallback=False)
        layers = getattr(compiled, "cells", [compiled])
        for layer in layers:
            with no_grad(), default_dtype(np.float64):
                state = layer.init_state(2)
            leaf = tree_leaves(state)[0]
            size = input_size if layer is layers[0] else layer.input_size
            layer.program(2, size, leaf.dtype, state)
    except CompileError as exc:
        return str(exc)
    except Exception as exc:            # the trace itself failed: say how, as the note
        return f"tracing it raised {type(exc).__name__}: {exc}"
    return None


# --- comparison helpers --------------------------------------------------------------------

def _named(cell):
    return list(cell.named_parameters()) if callable(getattr(cell, "named_parameters", None)) else \
        [(str(i), p) for i, p in enumerate(_parameters(cell))]


def _zero_grads(params):
    for p in params:
        p.grad = None


def _grad(t):
    return np.zeros(t.shape) if t.grad is None else np.asarray(t.grad)


def _grads(params):
    return [_grad(p) for p in params]


def _project(tensors, cotangents):
    """``sum_i <tensors_i, cotangents_i>`` as a Tensor (a scalar loss)."""
    total = None
    for t, v in zip(tensors, cotangents):
        term = (t * Tensor(np.asarray(v))).sum()
        total = term if total is None else total + term
    return total if total is not None else Tensor(0.0)


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shapes differ, {actual.shape} vs {expected.shape}")
    if not np.allclose(actual, expected, rtol=_SAME_RTOL, atol=_SAME_ATOL):
        diff = np.abs(actual - expected)
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
        raise AssertionError(f"{what}: differ by up to {diff.max():.3g} (at index {worst}: "
                             f"{actual[worst]!r} vs {expected[worst]!r})")


def _assert_trees_close(actual, expected, what):
    if not same_structure(actual, expected, shapes=False):
        raise AssertionError(f"{what}: structure {describe_structure(actual)} vs "
                             f"{describe_structure(expected)}")
    for k, (a, b) in enumerate(zip(tree_leaves(actual), tree_leaves(expected))):
        _assert_close(a.data, b.data, f"{what} (leaf {k})")


def _check_leaves(tree, B, what):
    for leaf in tree_leaves(tree):
        if not isinstance(leaf, Tensor):
            raise AssertionError(f"{what} holds a {type(leaf).__name__}; states and outputs must be "
                                 "Tensors or nested tuples of Tensors")
        if leaf.ndim == 0 or leaf.shape[0] != B:
            raise AssertionError(f"{what} holds a tensor of shape {leaf.shape}; expected the batch "
                                 f"(B = {B}) on axis 0 ({describe_structure(tree)})")
        if leaf.dtype.kind == "f" and leaf.dtype != np.float64:
            raise AssertionError(f"{what} holds a tensor of dtype {leaf.dtype}; a float64 cell must "
                                 "keep float64 (check_cell runs in float64)")


# --- running hypothesis ----------------------------------------------------------------------

def _run(prop, strategy, max_examples, derandomize, name, number):
    test = given(case=strategy)(prop)
    test = settings(max_examples=max_examples, deadline=None, derandomize=derandomize,
                    database=None, report_multiple_bugs=False, print_blob=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])(test)
    __tracebackhide__ = True        # pytest shows the user's call, not hypothesis' internals
    try:
        test()
    except AssertionError as exc:
        # One of our checks: the message is complete, the traceback inside is noise.
        raise AssertionError(_failure_message(exc, name, number)) from None
    except Exception as exc:
        # The cell raised: keep its traceback, it points at the line in the cell.
        raise AssertionError(_failure_message(exc, name, number)) from exc


def _failure_message(exc, name, number):
    lines = [f"check_cell({name}): property ({number}) failed: {PROPERTIES[number]}."]
    inner = exc
    if _is_group(exc):
        # Flaky: the example failed once and passed when replayed.
        lines.append("Hypothesis saw the failure only sometimes on the same example: is the "
                     "cell deterministic (no randomness in eval mode, no state kept between "
                     "calls)?")
        while _is_group(inner):
            inner = inner.exceptions[0]
    lines.append(f"{type(inner).__name__}: {inner}")
    notes = list(getattr(exc, "__notes__", [])) + (list(getattr(inner, "__notes__", []))
                                                    if inner is not exc else [])
    lines.extend(n for n in notes if n.strip())
    return "\n".join(lines)


def _is_group(exc):
    # An ExceptionGroup (Python 3.11+, or the backport hypothesis uses on 3.10).
    return isinstance(getattr(exc, "exceptions", None), (tuple, list)) and bool(exc.exceptions)
