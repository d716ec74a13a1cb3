"""The compiler's rule table against the eager ops: every elementwise entry's forward and
adjoint text, evaluated with numpy, equals that op's own forward and backward (broadcasting
included); every op of ops.py has an entry; every structural entry is exercised inside the
loop by a cell of test_compile.py (which compares compiled with eager)."""

import inspect

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import ops
from tinygrad_rnn.autograd import Function
from tinygrad_rnn.compile import graph as compile_graph
from tinygrad_rnn.compile.rules import RULES, Copy, Rule, numpy_namespace
from tinygrad_rnn.ops import unbroadcast

ELEMENTWISE = [r for r in RULES.values() if r.kind == "elementwise"]
STRUCTURAL = [r for r in RULES.values() if r.kind == "structural"]


def _inputs(rule, rng, shapes):
    """Random inputs in each op's domain: positive for log/sqrt/pow, away from 0 and kinks."""
    arrays = {}
    for name, shape in zip(rule.inputs, shapes):
        if name == "m":
            arrays[name] = rng.random(shape) > 0.5
            continue
        a = rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        if rule.op in (ops.Log, ops.Sqrt) or (rule.op is ops.Pow and name == "a"):
            a = np.abs(a)
        arrays[name] = a
    return arrays


def check_rule(rule, shapes, seed=0):
    """Raise AssertionError if the rule's text disagrees with the op's forward or backward."""
    rng = np.random.default_rng(seed)
    arrays = _inputs(rule, rng, shapes)
    ns = numpy_namespace()
    names = {n: n for n in rule.inputs}
    y_rule = eval(rule.forward.format(**names), ns, dict(arrays))
    if rule.op is Copy:                           # the compiler's own identity: no eager op
        y, eager_grads = arrays["a"], None
    else:
        ctx = rule.op()
        ctx.needs_input_grad = tuple(n != "m" for n in rule.inputs)
        y = ctx.forward(*[arrays[n] for n in rule.inputs])
    np.testing.assert_allclose(y_rule, y, rtol=1e-12, err_msg=f"{rule}: forward")
    g = rng.standard_normal(np.shape(y))
    if rule.op is not Copy:
        eager_grads = ctx.backward(g)
    for k, (name, grad) in enumerate(zip(rule.inputs, rule.grads)):
        if grad is None:
            assert eager_grads is None or eager_grads[k] is None
            continue
        local = dict(arrays, g=g, y=y)
        contribution = np.broadcast_to(eval(grad.format(**names, g="g", y="y"), ns, local),
                                       np.shape(y))
        mine = unbroadcast(np.array(contribution), np.shape(arrays[name]))
        want = g if eager_grads is None else eager_grads[k]
        np.testing.assert_allclose(mine, want, rtol=1e-12, atol=1e-14,
                                   err_msg=f"{rule}: adjoint of {name}")


SHAPE_CASES = [((3, 4), (3, 4), (3, 4)), ((3, 4), (1, 4), (3, 1)), ((3, 4), (), (4,))]


@pytest.mark.parametrize("rule", ELEMENTWISE, ids=lambda r: r.op.__name__)
@pytest.mark.parametrize("shapes", SHAPE_CASES, ids=["same", "broadcast", "scalar"])
def test_every_elementwise_rule_matches_the_eager_op(rule, shapes):
    if rule.op is ops.Where:
        shapes = (shapes[2],) + shapes[:2]
    check_rule(rule, shapes[:len(rule.inputs)])


def test_a_planted_wrong_rule_fails():
    right = RULES[ops.Tanh]
    wrong = Rule(ops.Tanh, "elementwise", forward=right.forward, grads=["{g} * (1.0 - {y})"])
    with pytest.raises(AssertionError, match="adjoint"):
        check_rule(wrong, [(3, 4)])
    swapped = RULES[ops.Div]
    wrong_div = Rule(ops.Div, "elementwise", forward=swapped.forward,
                     grads=[swapped.grads[0], "{g} * {y} / {b}"], inputs=("a", "b"))
    with pytest.raises(AssertionError, match="adjoint of b"):
        check_rule(wrong_div, [(3, 4), (3, 4)])


def test_every_op_has_a_rule():
    """A primitive added to ops.py without a compile rule fails here (not silently later)."""
    primitives = [obj for _, obj in inspect.getmembers(ops, inspect.isclass)
                  if issubclass(obj, Function) and obj.__module__ == ops.__name__
                  and not obj.__name__.startswith("_")]
    missing = [p.__name__ for p in primitives if p not in RULES]
    assert not missing, f"ops without a compile rule (tinygrad_rnn/compile/rules.py): {missing}"


def test_the_table_covers_the_primitives_the_issue_lists():
    inside = {r.op for r in ELEMENTWISE + STRUCTURAL}
    wanted = [ops.Cat, ops.Split, ops.GetItem, ops.Add, ops.Sub, ops.Mul, ops.Div, ops.Neg,
              ops.Relu, ops.Abs, ops.Exp, ops.Where, ops.Sum, ops.Max, ops.Tanh, ops.Sigmoid,
              ops.Linear, ops.MatMul]
    assert [op.__name__ for op in wanted if op not in inside] == []


def test_every_structural_rule_runs_inside_a_tested_loop():
    """test_compile.py compares these cells compiled and eager; here: that, between them,
    every structural rule is used on carry-dependent values (inside the generated loop)."""
    import test_compile as cells
    seen = set()
    for factory in list(cells.CUSTOM.values()) + list(cells.BUILTIN.values()):
        tg.manual_seed(0)
        cell = factory()
        with tg.no_grad():
            state = cell.init_state(2)
        g = compile_graph.build(cell, 2, cells.I, np.float64, state)
        seen |= {n.op for n in g.nodes if n.outputs[0].kind == compile_graph.CARRY}
    assert [r.op.__name__ for r in STRUCTURAL if r.op not in seen] == []
