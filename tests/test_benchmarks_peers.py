"""The peers of benchmarks/bench_rnn.py compute what our tape computes, and its plumbing
reports what it measured.

A ratio in the benchmark's table means something only if every contestant does the same job:
the MGU's numpy BPTT, the torch and JAX equations and every worker's contestants must give the
tape's outputs and gradients (of xs and every parameter, in the same order). These are
correctness tests of the benchmark, not timings.
"""

import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_rnn  # noqa: E402
import gemm_floor  # noqa: E402
import numpy_bptt  # noqa: E402
import worker  # noqa: E402
from cells import MGUCell, Stepped  # noqa: E402

BUILT_IN = {"rnn": tg.RNNCell, "lstm": tg.LSTMCell, "gru": tg.GRUCell}
PEER_CELLS = ("rnn", "lstm", "gru", "mgu")


def _make_cell(kind, I, H):
    return MGUCell(I, H, dtype=np.float64) if kind == "mgu" else BUILT_IN[kind](I, H, dtype=np.float64)


def _tape(cell, kind, xs, dys, h0=None):
    """``(ys, [dx, *parameter gradients])`` from Unroll and the tape."""
    xs_t = tg.Tensor(xs, requires_grad=True)
    ys, _ = tg.Unroll(cell)(xs_t, None if h0 is None else tg.Tensor(h0))
    ys.backward(dys)
    named = dict(cell.named_parameters())
    return ys.data, [xs_t.grad] + [named[n].grad for n in numpy_bptt.PARAMETER_NAMES[kind]]


def _problem(kind, T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    params = [p * 2 for p in numpy_bptt.init_parameters(kind, I, H, np.float64, rng)]
    return rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H)), params


def _assert_grads_equal(got, want, what):
    assert len(got) == len(want)
    for name, g, w in zip(("xs",) + numpy_bptt.PARAMETER_NAMES[what[0]], got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-12, err_msg=f"{what}: {name}")


@given(T=st.integers(1, 5), B=st.integers(1, 3), I=st.integers(1, 4), H=st.integers(1, 4),
       with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_mgu_baseline_matches_the_tape(T, B, I, H, with_state, seed):
    rng = np.random.default_rng(seed)
    tg.manual_seed(seed)
    cell = MGUCell(I, H, dtype=np.float64)
    xs, dys = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    h0 = rng.standard_normal((B, H)) if with_state else None
    named = dict(cell.named_parameters())
    params = [named[n].data for n in numpy_bptt.PARAMETER_NAMES["mgu"]]

    ys, grads = numpy_bptt.mgu_forward_backward(xs, dys, *params, h0, need_dx=True)
    ys_ref, grads_ref = _tape(cell, "mgu", xs, dys, h0)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-12)
    _assert_grads_equal([grads["xs"]] + [grads[n] for n in numpy_bptt.PARAMETER_NAMES["mgu"]],
                        grads_ref, ("mgu", "numpy"))


@pytest.mark.parametrize("kind", PEER_CELLS)
def test_reference_gradients_are_the_tapes(kind):
    """``reference_gradients``, which every worker checks against, is in the contestants' order."""
    xs, dys, params = _problem(kind, 4, 3, 5, 6, seed=2)
    cell = _make_cell(kind, 5, 6)
    named = dict(cell.named_parameters())
    for name, value in zip(numpy_bptt.PARAMETER_NAMES[kind], params):
        named[name].data[...] = value
    _assert_grads_equal(numpy_bptt.reference_gradients(kind, xs, dys, params),
                        _tape(cell, kind, xs, dys)[1], (kind, "reference"))


def test_mgu_torch_equations_match_the_baseline():
    torch = pytest.importorskip("torch")
    import torch_eager

    xs, dys, params = _problem("mgu", 4, 3, 5, 6, seed=1)
    ys, _ = numpy_bptt.mgu_forward_backward(xs, dys, *params)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    txs = torch.tensor(xs, requires_grad=True)
    tys = torch_eager.EQUATIONS["mgu"](txs, *tparams)
    tys.backward(torch.tensor(dys))
    np.testing.assert_allclose(tys.detach().numpy(), ys, rtol=1e-12, atol=1e-12)
    _assert_grads_equal([txs.grad] + [p.grad for p in tparams],
                        numpy_bptt.reference_gradients("mgu", xs, dys, params), ("mgu", "torch"))


def _tiny_job(cell, dtype="float64"):
    return {"cell": cell, "size": "tiny", "dtype": dtype, "T": 4, "B": 3, "I": 5, "H": 6}


@pytest.mark.parametrize("kind", PEER_CELLS)
def test_every_workers_contestants_agree_with_the_reference(kind):
    """Each family's contestants, as its worker builds them, return ``[dx, *param grads]``
    equal to the numpy BPTT on their own weights (a wrong order or a missing dx fails)."""
    families = [("ours", bench_rnn.build_ours)]
    try:
        import torch_eager
        families += [("torch_" + f, lambda job, f=f: torch_eager.build(f, job)) for f in ("eager", "nn")]
    except ImportError:
        pass
    for family, build in families:
        _check_contestants(family, build, kind)


def _check_contestants(family, build, kind):
    contestants, reference, _ = build(_tiny_job(kind))
    grads = {name: fn() for name, fn in contestants.items()}
    if isinstance(reference, str):
        reference = grads[reference]
    checked = [name for name, g in grads.items() if g is not None and g is not reference]
    assert checked, f"{family}: nothing checked for {kind}"
    for name in checked:
        # 1e-10: issue 10's float64 contract for the compiled path (the others reach ~1e-15).
        assert worker.relative_error(grads[name], reference) < 1e-10, f"{family}/{name} on {kind}"


def check_jax(kind):
    """The lax.scan formulations give the numpy BPTT's outputs and gradients in float64, and
    the JAX worker's contestant agrees with its reference. Run in a fresh process by
    test_jax_formulations_match_the_baseline."""
    import jax
    import jax_rnn

    with jax.enable_x64(True):
        xs, dys, params = _problem(kind, 4, 3, 5, 6, seed=3)     # the worker's shape: one jit
        ys, _ = numpy_bptt.FORWARD_BACKWARD[kind](xs, dys, *params)
        jys, (dparams, dxs) = jax_rnn.forward_backward(kind)(tuple(params), xs, dys)
        assert jys.dtype == np.float64
        np.testing.assert_allclose(np.asarray(jys), ys, rtol=1e-12, atol=1e-12)
        _assert_grads_equal([dxs, *dparams], numpy_bptt.reference_gradients(kind, xs, dys, params),
                            (kind, "jax"))
        _check_contestants("jax", jax_rnn.build, kind)


def test_jax_formulations_match_the_baseline():
    """In a fresh process: importing jax registers bfloat16 with numpy (ml_dtypes), which
    would change what other tests of this process see (a bf16 checkpoint becomes readable)."""
    if importlib.util.find_spec("jax") is None:           # importorskip would import it here
        pytest.skip("jax is not installed")
    tests = pathlib.Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(tests)!r}); import test_benchmarks_peers as t; "
            f"[t.check_jax(kind) for kind in {PEER_CELLS!r}]")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_stepped_cell_steps_a_cell_that_runs_its_own_sequence():
    """minGRU's stepped baseline must never call the cell's forward_sequence, on the same numbers."""

    class Doubler(tg.Cell):
        calls = 0

        def __init__(self):
            self.W = tg.nn.Linear(2, 2, dtype=np.float64)

        def init_state(self, batch_size):
            return tg.zeros(batch_size, 2, dtype=np.float64)

        def forward(self, x, h):
            h = (self.W(x) + h).tanh()
            return h, h

        def forward_sequence(self, xs, h, lengths=None):
            Doubler.calls += 1
            ys = []
            for x in xs.unbind(0):
                y, h = self.forward(x, h)
                ys.append(y)
            return tg.stack(ys), h

    cell = Doubler()
    xs = tg.randn(3, 2, 2, seed=0, dtype=np.float64)
    ys_seq, _ = tg.Unroll(cell)(xs)
    assert Doubler.calls == 1
    ys_step, _ = tg.Unroll(Stepped(cell))(xs)
    assert Doubler.calls == 1
    np.testing.assert_array_equal(ys_step.data, ys_seq.data)
    assert {id(p) for p in Stepped(cell).parameters()} == {id(p) for p in cell.parameters()}


def test_worker_protocol_times_and_checks(monkeypatch):
    """serve() answers setup with each contestant's gradient error against the reference and
    runs with n times per contestant; a contestant with a wrong gradient shows it."""
    right, wrong, missing = [np.ones(3)], [np.array([1.0, 1.0, 1.5])], [None]

    def build(job):
        contestants = {"right": lambda: right, "wrong": lambda: wrong, "missing": lambda: missing,
                       "floor": lambda: None}
        return contestants, [np.ones(3)], ["n"]

    requests = [{"setup": {}}, {"runs": 2}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    worker.serve(build, {"clock": "cpu"})
    setup, runs = (json.loads(line) for line in out.getvalue().splitlines())
    assert setup["grad_err"]["right"] == 0.0 and setup["grad_err"]["floor"] is None
    assert setup["grad_err"]["wrong"] == pytest.approx(0.5 / np.sqrt(3))
    assert setup["grad_err"]["missing"] == float("inf")
    assert setup["notes"] == ["n"] and set(setup["first_ms"]) == {"right", "wrong", "missing", "floor"}
    assert {name: len(ts) for name, ts in runs["ms"].items()} == {"right": 2, "wrong": 2, "missing": 2,
                                                                    "floor": 2}


def _row(cell, size, **ms):
    T, B, I, H = bench_rnn.SIZES[size]
    return {"cell": cell, "size": size, "dtype": "float32", "T": T, "B": B, "I": I, "H": H,
            "ms": ms, "first_ms": {}, "grad_err": {"compiled": 1e-7}, "notes": []}


def test_report_picks_the_best_peer_and_names_missed_goals():
    rows = [_row("lstm", "M", eager=40.0, compiled=20.0, numpy=35.0, torch_eager=45.0, torch_nn=18.0,
                 jax=25.0, floor=12.0),
            _row("gru", "L", eager=500.0, compiled=300.0, numpy=550.0, torch_nn=600.0, floor=290.0),
            _row("mgu", "long", eager=100.0, compiled=30.0, torch_nn=40.0, floor=5.0)]
    assert bench_rnn.best_peer(rows[0]) == (18.0, "torch_nn")
    assert bench_rnn.best_peer(rows[1]) == (550.0, "numpy")
    text = bench_rnn.table(rows)
    lstm_line = next(line for line in text.splitlines() if line.startswith("| lstm"))
    assert "| 18.0 (torch.nn) | 1.11 | 1.67 | 0.89 |" in lstm_line
    goals = bench_rnn.goals(rows).splitlines()
    assert "MISSED in lstm M 1.111" in goals[1] and "gru L" not in goals[1]
    assert "MISSED in lstm M 1.667" in goals[2] and "worst 1.667" in goals[2]
    assert "met (worst 0.750)" in goals[3]                 # MGU against torch.nn.GRU
    assert "no such rows" in goals[4]


def test_report_checks_the_mingru_speedup_as_a_lower_bound():
    rows = [_row("mingru", "long", eager=300.0, scan=10.0, torch_nn=200.0, floor=2.0)]
    assert bench_rnn.best_peer(rows[0]) == (200.0, "torch_nn")
    goals = bench_rnn.goals(rows).splitlines()
    assert "met (worst 30.000)" in goals[4]                # 300 / 10 >= 20
    assert "met (worst 0.050)" in goals[5]                 # 10 / 200: faster than torch.nn.GRU
    rows[0]["ms"]["scan"] = 20.0
    assert "MISSED in mingru long 15.000" in bench_rnn.goals(rows).splitlines()[4]


def test_report_without_compiled_says_not_measured():
    rows = [_row("rnn", "S", eager=2.0, numpy=1.0, torch_eager=3.0, torch_nn=2.0, floor=0.2)]
    assert "| n/a |" in bench_rnn.table(rows)
    assert "not measured" in bench_rnn.goals(rows).splitlines()[1]


def test_jobs_run_mgu_and_mingru_at_their_sizes_only():
    args = bench_rnn.parse_args(["--sizes", "S,M,long", "--float64-sizes", "M"])
    keys = {(j["cell"], j["size"], j["dtype"]) for j in bench_rnn.jobs(args)}
    assert ("mgu", "M", "float32") in keys and ("mingru", "long", "float32") in keys
    assert not any(cell in ("mgu", "mingru") and (size == "S" or dtype == "float64")
                   for cell, size, dtype in keys)
    assert ("lstm", "M", "float64") in keys


@pytest.mark.parametrize("kind", PEER_CELLS)
def test_gemm_floor_shapes_are_the_cells_products(kind):
    """The floor multiplies by what the cell multiplies by: its x-side and h-side weights."""
    I, H = 5, 6
    n_x, recurrent = gemm_floor.FLOOR_SHAPES[kind]
    shapes = numpy_bptt.parameter_shapes(kind, I, H)
    if kind == "mgu":               # two (H, I + H) weights: x-columns and h-columns of each
        x_rows, h_products = 2 * H, [(H, H), (H, H)]
    else:                           # weight_ih (G H, I), weight_hh (G H, H)
        x_rows, h_products = shapes[0][0], [(shapes[1][1], shapes[1][0])]
    assert n_x * H == x_rows
    assert [(k_in * H, k_out * H) for k_in, k_out in recurrent] == h_products
