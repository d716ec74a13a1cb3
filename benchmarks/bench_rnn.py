"""Recurrent forward+backward through ``Unroll``, ours eager and compiled, against the peers.

For every cell x size it times one forward+backward of ``Unroll(cell)(xs)`` with a fixed
cotangent on the outputs (``ys.backward(dys)``; the gradients of ``xs`` and of every
parameter) and the same job done by

* ``ours compiled``: ``Unroll(tg.compile(cell))``, when ``tg.compile`` exists (issue 10);
* ``numpy``: the hand-written BPTT of ``numpy_bptt.py`` (no tape at all: the arithmetic of
  the same equations, step by step);
* ``torch eager``: the same equations with torch ops in a Python loop (``torch_eager.py``):
  a tape, one op at a time, exactly our eager job;
* ``torch.nn``: ``torch.nn.RNN/LSTM/GRU`` (a fused C++ loop, oneDNN in float32);
* ``JAX``: the same equations under ``lax.scan`` and ``jit`` (``jax_rnn.py``), when jax is
  importable;
* the ``GEMM floor`` (``gemm_floor.py``): only the matrix products an optimal implementation
  must run, timed alone in numpy.

Cells: the RNN, LSTM and GRU at S, M, L, long (and float64 at M); the MGU of README.md written
as equations (``cells.py``) at M and long, against torch.nn.GRU of the same size; minGRU
(``tg.MinGRUCell``, when it exists: issue 11) at M and long, its ``forward_sequence`` (the
"ours compiled" column of its row) against the same cell stepped by eager Unroll (the "ours
eager" column) and torch.nn.GRU. A contestant that does not exist on this branch is named in
the output and its columns read n/a.

Times are medians over ``--repeats`` runs after ``--warmup`` runs. Each family runs in a
worker process of its own (ours, compiled, numpy and the floor share one and alternate run
by run), so thread pools never share a process. The workers take turns job by job: ours does
its runs of one job, then torch eager, then torch.nn, then JAX, then everyone moves to the
next job (each worker waits, idle, while another runs). So a burst of load from another job
on a shared machine lands on a few seconds of one job, not on all of one family's rows (when
whole workers ran one after the other, such bursts moved single rows of the ratio by up to
25 %); ``--rounds`` repeats it all in fresh processes and takes the median. Within a turn the
runs are back to back, as in a training loop (interleaving *single* runs across processes was
also tried: every run then starts with caches and cores taken over by another process, which
cost ours up to 8 % at L and numpy nothing, a condition no training run is in). Every worker
gets the same environment:

* ``--threads`` (default 1) for OMP/OpenBLAS/MKL/Numba, ``torch.set_num_threads`` and XLA
  (``--xla_cpu_multi_thread_eigen=false`` at one thread; see jax_rnn.py);
* glibc's malloc told to keep freed memory (``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_MMAP_THRESHOLD_``; ``--no-malloc-pin`` to leave it alone). By default glibc hands
  the heap back to the OS whenever 128 KiB sit free at its top, and whether that happens
  after each backward depends on what the process allocated before: the same LSTM at size
  M measured 48 or 70 ms in one process or the other, all of it page faults. Since then
  tinygrad_rnn sets the same two values itself at its first Unroll or backward (``engine/malloc.py``), so
  with ``--no-malloc-pin`` only the other families run on glibc's defaults. See
  benchmarks/README.md.

Before timing, every contestant's gradients (of xs and every parameter) are checked against
the numpy BPTT on the same weights and data, in its own process (minGRU's scan: against its
stepped form). The ``grad err`` column is the worst relative error of the row.

    python benchmarks/bench_rnn.py                       # everything (~10 min)
    python benchmarks/bench_rnn.py --quick               # S and M, 3 rounds (~2 min)
    python benchmarks/bench_rnn.py --cells lstm --sizes M,long --repeats 15 --clock cpu
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent

# (T, B, I, H): sequence length, batch, input size, hidden size.
SIZES = {"S": (50, 16, 16, 32), "M": (100, 32, 64, 128), "L": (100, 64, 256, 512),
         "long": (2000, 8, 8, 32)}
CELL_NAMES = ("rnn", "lstm", "gru", "mgu", "mingru")
BUILT_IN = ("rnn", "lstm", "gru")
# The cells whose rows answer one goal each run only at the sizes that goal names.
CELL_SIZES = {"mgu": ("M", "long"), "mingru": ("M", "long")}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# Keep up to 1 GiB of freed heap, and serve allocations below 32 MiB from the heap (setting
# either variable switches off glibc's adaptive thresholds, so both are set).
MALLOC_VARS = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
CLOCKS = ("wall", "cpu")
# Columns: (contestant, header). Ours, compiled, numpy and the floor come from one worker.
PEERS = ("numpy", "torch_eager", "torch_nn", "jax")
COLUMNS = (("eager", "ours eager"), ("compiled", "ours compiled"), ("numpy", "numpy BPTT"),
           ("torch_eager", "torch eager"), ("torch_nn", "torch.nn"), ("jax", "JAX scan+jit"),
           ("floor", "GEMM floor"))
GRAD_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", default=",".join(CELL_NAMES), help="comma-separated: " + ", ".join(CELL_NAMES))
    p.add_argument("--sizes", default="S,M,L,long",
                   help="comma-separated: " + ", ".join(SIZES) + " (mgu and mingru: M and long only)")
    p.add_argument("--float64-sizes", default="M",
                   help="sizes also run in float64 for rnn, lstm, gru, for reference ('' for none)")
    p.add_argument("--repeats", type=int, default=9, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--rounds", type=int, default=None,
                   help="run the workers this many times, taking turns (ours, torch eager, torch.nn, "
                        "JAX, ours, ...), and report the median over rounds: fairer when the machine's "
                        "load changes while the benchmark runs (default 1; 3 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch/XLA threads for everyone")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="wall: time.perf_counter; cpu: time.process_time (the worker's CPU time, "
                        "steadier on a machine shared with other jobs; equal to wall time when idle "
                        "and single-threaded)")
    p.add_argument("--no-malloc-pin", action="store_true",
                   help="leave glibc's heap trimming at its defaults (see the module docstring)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX column")
    p.add_argument("--quick", action="store_true",
                   help="sizes S,M only, no float64, 5 repeats after 2 warmup, 3 rounds (~2 min)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)   # internal: see Worker
    args = p.parse_args(argv)
    if args.serve:
        return args
    if args.quick:
        args.sizes, args.float64_sizes, args.repeats, args.warmup = "S,M", "", 5, 2
    if args.rounds is None:
        args.rounds = 3 if args.quick else 1
    args.cells = _choices(args.cells, CELL_NAMES, "--cells")
    args.sizes = _choices(args.sizes, SIZES, "--sizes")
    args.float64_sizes = _choices(args.float64_sizes, SIZES, "--float64-sizes")
    if args.repeats < 1 or args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats, --rounds and --threads must be >= 1, --warmup >= 0")
    return args


def _choices(text, allowed, flag):
    picked = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in picked if s not in allowed]
    if bad:
        raise SystemExit(f"bench_rnn: {flag}: unknown {bad}; choose from {', '.join(allowed)}")
    return picked


def worker_env(args):
    """The environment every worker runs in (read by numpy, torch, XLA and glibc at start-up)."""
    env = os.environ.copy()
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    env["JAX_PLATFORMS"] = "cpu"
    if args.threads == 1:    # XLA has no thread-count flag; this one keeps its work on one core
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    if not args.no_malloc_pin:
        env.update(MALLOC_VARS)
    return env


def jobs(args):
    out = []
    for cell in args.cells:
        for size in args.sizes:
            if size in CELL_SIZES.get(cell, SIZES):
                out.append({"cell": cell, "size": size, "dtype": "float32"})
        for size in args.float64_sizes if cell in BUILT_IN else ():
            out.append({"cell": cell, "size": size, "dtype": "float64"})
    for job in out:
        job.update(zip("TBIH", SIZES[job["size"]]))
    return out


# --- ours, compiled, numpy and the floor: the worker ------------------------------------------

def _unroll_step(rnn, xs, dys, params):
    """A contestant: one forward+backward of ``rnn`` (an Unroll), returning its gradients."""
    def step():
        xs.grad = None
        for p in params:
            p.grad = None
        ys, _ = rnn(xs)
        ys.backward(dys)
        return [xs.grad] + [p.grad for p in params]
    return step


def build_ours(job):
    """The contestants of this process: ours eager, ours compiled (if ``tg.compile`` exists),
    the numpy BPTT (also the gradient reference) and the GEMM floor; for minGRU its scan
    (``forward_sequence``) and the same cell stepped, the reference."""
    import gemm_floor
    import numpy as np
    import numpy_bptt

    import tinygrad_rnn as tg

    dtype = np.dtype(job["dtype"])
    cell_name, T, B, I, H = job["cell"], job["T"], job["B"], job["I"], job["H"]
    rng = np.random.default_rng(0)
    xs = tg.Tensor(rng.standard_normal((T, B, I)).astype(dtype), requires_grad=True)
    dys = rng.standard_normal((T, B, H)).astype(dtype)
    floor = gemm_floor.gemm_floor(cell_name, T, B, I, H, dtype)     # returns no gradients
    tg.manual_seed(0)
    if cell_name == "mingru":
        from cells import Stepped
        cell = tg.MinGRUCell(I, H, dtype=dtype)
        params = cell.parameters()
        contestants = {"eager": _unroll_step(tg.Unroll(Stepped(cell)), xs, dys, params),
                       "scan": _unroll_step(tg.Unroll(cell), xs, dys, params), "floor": floor}
        return contestants, "eager", []

    if cell_name == "mgu":
        from cells import MGUCell
        cell = MGUCell(I, H, dtype=dtype)
    else:
        cell = {"rnn": tg.RNNCell, "lstm": tg.LSTMCell, "gru": tg.GRUCell}[cell_name](I, H, dtype=dtype)
    named = dict(cell.named_parameters())
    params = [named[name] for name in numpy_bptt.PARAMETER_NAMES[cell_name]]
    contestants = {"eager": _unroll_step(tg.Unroll(cell), xs, dys, params)}
    if hasattr(tg, "compile"):             # else the parent says so once, for every row
        contestants["compiled"] = _unroll_step(tg.Unroll(tg.compile(cell)), xs, dys, params)
    xs_np, weights = xs.data, [p.data for p in params]
    contestants["numpy"] = lambda: numpy_bptt.reference_gradients(cell_name, xs_np, dys, weights)
    contestants["floor"] = floor
    return contestants, "numpy", []


# --- the workers in lockstep ------------------------------------------------------------------

class Worker:
    """A worker process that answers worker.py's requests."""

    def __init__(self, name, command, spec, env):
        self.name = name
        self.proc = subprocess.Popen(command + [json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_rnn: the {self.name} worker exited "
                               f"(code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def job_key(job):
    return (job["cell"], job["size"], job["dtype"])


def measure_round(workers, all_jobs, warmup, repeats):
    """{job key: {"ms": {contestant: median}, "grad_err": {...}, "first_ms": {...},
    "notes": [...]}}, the workers taking turns job by job."""
    out = {}
    for job in all_jobs:
        result = out[job_key(job)] = {"ms": {}, "grad_err": {}, "first_ms": {}, "notes": []}
        for w in workers:
            setup = w.ask({"setup": job})
            w.ask({"runs": warmup})
            times = w.ask({"runs": repeats})["ms"]
            result["ms"].update({name: sorted(ts)[len(ts) // 2] for name, ts in times.items()})
            for field in ("grad_err", "first_ms"):
                result[field].update(setup[field])
            result["notes"] += setup["notes"]
        print(f"  {job['cell']:6} {job['size']:4} {job['dtype']}: "
              + ", ".join(f"{name} {ms:.1f}" for name, ms in result["ms"].items()) + " ms",
              file=sys.stderr, flush=True)
    return out


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def collect_rows(all_jobs, rounds):
    """One row per job: every contestant's median over rounds (and each round's, for the
    spread), the worst gradient error."""
    rows = []
    for job in all_jobs:
        results = [res[job_key(job)] for res in rounds]
        names = {name for res in results for name in res["ms"]}
        row = {**job, "ms": {name: _median(res["ms"].get(name) for res in results) for name in names},
               "ms_rounds": {name: [res["ms"].get(name) for res in results] for name in names},
               "first_ms": {name: _median(res["first_ms"].get(name) for res in results) for name in names},
               "grad_err": {}, "notes": sorted({n for res in results for n in res["notes"]})}
        for name in names:
            errors = [res["grad_err"].get(name) for res in results]
            if any(e is not None for e in errors):
                row["grad_err"][name] = max(e for e in errors if e is not None)
        rows.append(row)
    return rows


# --- report ---------------------------------------------------------------------------------

def _ms(x):
    return "n/a" if x is None else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}"


def fast(row):
    """Our fast path of the row: the compiled cell, or minGRU's scan."""
    return row["ms"].get("scan" if row["cell"] == "mingru" else "compiled")


def best_peer(row):
    """(ms, name) of the fastest peer of the row, or (None, None)."""
    present = [(row["ms"][name], name) for name in PEERS if row["ms"].get(name) is not None]
    return min(present) if present else (None, None)


def cell_label(row):
    return {"mgu": "mgu (eqs)", "mingru": "mingru (scan)"}.get(row["cell"], row["cell"])


def table(rows):
    head = ("| cell | size (T,B,I,H) | dtype | " + " | ".join(h + " ms" for _, h in COLUMNS)
            + " | best peer | compiled / best peer | compiled / floor | eager / torch eager | grad err |")
    lines = [head, "|---|---|---|" + "---:|" * (len(COLUMNS) + 4) + "---|"]
    for r in rows:
        size = f"{r['size']} ({r['T']},{r['B']},{r['I']},{r['H']})"
        cols = [_ms(fast(r) if name == "compiled" else r["ms"].get(name)) for name, _ in COLUMNS]
        peer_ms, peer = best_peer(r)
        peer_text = "n/a" if peer is None else f"{_ms(peer_ms)} ({dict(COLUMNS)[peer]})"
        err = max(r["grad_err"].values(), default=None)
        err_text = "n/a" if err is None else f"{err:.1e}"
        if err is not None and err > GRAD_TOLERANCE[r["dtype"]]:
            err_text += " (!)"
        ratios = [_ratio(fast(r), peer_ms), _ratio(fast(r), r["ms"].get("floor")),
                  _ratio(r["ms"].get("eager"), r["ms"].get("torch_eager"))]
        lines.append(f"| {cell_label(r)} | {size} | {r['dtype']} | " + " | ".join(cols) + f" | {peer_text} | "
                     + " | ".join(_fmt_ratio(x) for x in ratios) + f" | {err_text} |")
    return "\n".join(lines)


def _goal(text, limit, pairs, at_least=False):
    """One line: the goal, then met / missed by row (pairs: [(row label, ratio or None)]);
    a ratio must be <= limit, or >= limit with ``at_least``."""
    measured = [(label, ratio) for label, ratio in pairs if ratio is not None]
    if not pairs:
        return f"- {text}: no such rows in this run"
    if not measured:
        return f"- {text}: not measured (a contestant is unavailable)"
    missed = [f"{label} {ratio:.3f}" for label, ratio in measured
              if (ratio < limit if at_least else ratio > limit)]
    unmeasured = len(pairs) - len(measured)
    verdict = ("met" if not missed else "MISSED in " + ", ".join(missed))
    worst = (min if at_least else max)(ratio for _, ratio in measured)
    return (f"- {text}: {verdict} (worst {worst:.3f}"
            + (f"; {unmeasured} row(s) not measured" if unmeasured else "") + ")")


def goals(rows):
    """The speed goals of issues 10 and 11 against this run."""
    f32 = [r for r in rows if r["dtype"] == "float32"]
    built_in = [r for r in f32 if r["cell"] in BUILT_IN]

    def label(r):
        return f"{r['cell']} {r['size']}"
    lines = [
        _goal("ours eager <= 1.0x torch eager (same equations)", 1.0,
              [(label(r), _ratio(r["ms"].get("eager"), r["ms"].get("torch_eager")))
               for r in built_in + [r for r in f32 if r["cell"] == "mgu"]]),
        _goal("ours compiled <= 1.0x best peer (issue 10)", 1.0,
              [(label(r), _ratio(fast(r), best_peer(r)[0])) for r in built_in]),
        _goal("ours compiled <= 1.3x GEMM floor at M and L (issue 10)", 1.3,
              [(label(r), _ratio(fast(r), r["ms"].get("floor")))
               for r in built_in if r["size"] in ("M", "L")]),
        _goal("MGU compiled <= 1.0x torch.nn.GRU at M and long (issue 10)", 1.0,
              [(label(r), _ratio(fast(r), r["ms"].get("torch_nn"))) for r in f32 if r["cell"] == "mgu"]),
        _goal("minGRU stepped / scan >= 20 at long (issue 11)", 20,
              [(label(r), _ratio(r["ms"].get("eager"), fast(r)))
               for r in f32 if r["cell"] == "mingru" and r["size"] == "long"], at_least=True),
        _goal("minGRU scan < 1.0x torch.nn.GRU at long and M (issue 11)", 1.0,
              [(label(r), _ratio(fast(r), r["ms"].get("torch_nn"))) for r in f32 if r["cell"] == "mingru"]),
    ]
    return "\n".join(lines)


def first_calls(rows):
    """The first call of the compiled path and of JAX: tracing and compiling, once per shape."""
    parts = []
    for r in rows:
        for name in ("compiled", "scan", "jax"):
            if r["first_ms"].get(name) is not None:
                parts.append(f"{r['cell']} {r['size']} {r['dtype']} {name} {r['first_ms'][name] / 1e3:.2f} s")
    return "; ".join(parts)


def worker_commands(args):
    commands = {"ours": [sys.executable, __file__, "--serve"]}
    unavailable = []
    if args.no_torch:
        unavailable.append("torch eager, torch.nn: skipped (--no-torch)")
    elif importlib.util.find_spec("torch") is None:
        unavailable.append("torch eager, torch.nn: unavailable (torch is not installed)")
    else:
        for family in ("eager", "nn"):
            commands["torch_" + family] = [sys.executable, str(HERE / "torch_eager.py"), "--serve", family]
    if args.no_jax:
        unavailable.append("JAX: skipped (--no-jax)")
    elif importlib.util.find_spec("jax") is None:
        unavailable.append("JAX: unavailable (jax is not installed)")
    else:
        commands["jax"] = [sys.executable, str(HERE / "jax_rnn.py"), "--serve"]
    return commands, unavailable


def report(args, rows, unavailable):
    """Print the method, the table, the legend of the rows present, the goals and the notes."""
    import numpy as np

    malloc = "glibc defaults" if args.no_malloc_pin else \
        ", ".join(f"{k}={v}" for k, v in MALLOC_VARS.items())
    print(f"\nforward+backward through Unroll (gradients of xs and every parameter), median of "
          f"{args.repeats} runs after {args.warmup} warmup"
          f"{f' (median over {args.rounds} rounds)' if args.rounds > 1 else ''}; "
          f"{args.clock} clock; threads={args.threads}; malloc: {malloc}; numpy {np.__version__}, "
          f"{os.cpu_count()} cores")
    for text in unavailable:
        print(f"  {text}")
    print()
    print(table(rows))
    legend = {"mgu": "mgu (eqs): the MGU of README.md written as equations; its torch.nn column is "
                     "torch.nn.GRU of the same size.",
              "mingru": "mingru (scan): its compiled column is forward_sequence, its eager column the "
                        "same cell stepped by Unroll; torch.nn is torch.nn.GRU; no numpy, torch eager "
                        "or JAX formulation."}
    present = [text for cell, text in legend.items() if any(r["cell"] == cell for r in rows)]
    print("\n" + "".join(line + "\n" for line in present))
    print("Goals:\n" + goals(rows))
    calls = first_calls(rows)
    if calls:
        print(f"\nFirst call (trace/JIT compile included): {calls}")
    notes = sorted({f"{r['cell']} {r['size']} {r['dtype']}: {n}" for r in rows for n in r["notes"]})
    if notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        sys.path.insert(0, str(HERE))
        import worker
        worker.serve(build_ours, json.loads(args.serve))
        return
    import tinygrad_rnn as tg  # only to ask which contestants exist (numba is not imported)

    all_jobs = jobs(args)
    commands, unavailable = worker_commands(args)
    if not hasattr(tg, "compile"):
        unavailable.append("ours compiled: unavailable (tg.compile is not in this tinygrad_rnn)")
    if not hasattr(tg, "MinGRUCell") and any(job["cell"] == "mingru" for job in all_jobs):
        unavailable.append("minGRU rows: skipped (tg.MinGRUCell is not in this tinygrad_rnn)")
        all_jobs = [job for job in all_jobs if job["cell"] != "mingru"]
    for text in unavailable:
        print(f"bench_rnn: {text}", file=sys.stderr, flush=True)
    env = worker_env(args)
    spec = {"threads": args.threads, "clock": args.clock}
    rounds = []
    for r in range(args.rounds):        # fresh processes each round: process history varies too
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        workers = [Worker(name, command, spec, env) for name, command in commands.items()]
        try:
            rounds.append(measure_round(workers, all_jobs, args.warmup, args.repeats))
        finally:
            for w in workers:
                w.close()
    rows = collect_rows(all_jobs, rounds)
    for r in rows:
        for name, err in r["grad_err"].items():
            if err > GRAD_TOLERANCE[r["dtype"]]:
                print(f"bench_rnn: WARNING: {r['cell']} {r['size']} {r['dtype']}: {name}'s gradients "
                      f"differ from the reference's (relative error {err:.1e})", file=sys.stderr)
    report(args, rows, unavailable)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
