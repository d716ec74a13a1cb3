"""RNN, LSTM and GRU forward+backward through ``Unroll``, against numpy and PyTorch.

For every cell x size it times one forward+backward of ``Unroll(cell)(xs)`` with a fixed
cotangent on the outputs (``ys.backward(dys)``; parameter gradients only, ``xs`` does not
require grad) and the same job done by

* ``numpy``: the hand-written BPTT of ``numpy_bptt.py`` (no tape at all: the arithmetic floor
  of the same equations, step by step);
* ``torch eager``: the same equations with torch ops in a Python loop (``torch_eager.py``):
  a tape, one op at a time, exactly our job;
* ``torch.nn``: ``torch.nn.RNN/LSTM/GRU`` (a fused C++ loop), for reference.

Times are medians over ``--repeats`` runs after ``--warmup`` runs. Each family runs in a
worker process of its own (ours and numpy share one and alternate run by run), so thread
pools never share a process. The workers take turns job by job: ours does its runs of one
job, then torch eager, then torch.nn, then everyone moves to the next job (each worker waits,
idle, while another runs). So a burst of load from another job on a shared machine lands on
a few seconds of one job, not on all of one family's rows (when whole workers ran one after
the other, such bursts moved single rows of the ratio by up to 25 %); ``--rounds`` repeats it
all in fresh processes and takes the median. Within a turn the runs are back to back, as in
a training loop (interleaving *single* runs across processes was also tried: every run then
starts with caches and cores taken over by another process, which cost ours up to 8 % at L
and numpy nothing, a condition no training run is in). Every worker gets the same
environment:

* ``--threads`` (default 1) for OMP/OpenBLAS/MKL/Numba and ``torch.set_num_threads``;
* glibc's malloc told to keep freed memory (``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_MMAP_THRESHOLD_``; ``--no-malloc-pin`` to leave it alone). By default glibc hands
  the heap back to the OS whenever 128 KiB sit free at its top, and whether that happens
  after each backward depends on what the process allocated before: the same LSTM at size
  M measured 48 or 70 ms in one process or the other, all of it page faults. Since then
  tinygrad_rnn sets the same two values itself at its first Unroll or backward (``engine/malloc.py``), so
  with ``--no-malloc-pin`` only the other families run on glibc's defaults. See
  benchmarks/README.md.

Before timing, each row checks that our gradients equal the baseline's (the ``grad err``
column: relative error of all parameter gradients).

    python benchmarks/bench_rnn.py                       # everything (a few minutes)
    python benchmarks/bench_rnn.py --quick               # S and M, 3 repeats
    python benchmarks/bench_rnn.py --cells lstm --sizes M,long --repeats 15 --clock cpu
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent

# (T, B, I, H): sequence length, batch, input size, hidden size.
SIZES = {"S": (50, 16, 16, 32), "M": (100, 32, 64, 128), "L": (100, 64, 256, 512),
         "long": (2000, 8, 8, 32)}
CELL_NAMES = ("rnn", "lstm", "gru")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# Keep up to 1 GiB of freed heap, and serve allocations below 32 MiB from the heap (setting
# either variable switches off glibc's adaptive thresholds, so both are set).
MALLOC_VARS = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, lstm, gru")
    p.add_argument("--sizes", default="S,M,L,long", help="comma-separated: " + ", ".join(SIZES))
    p.add_argument("--float64-sizes", default="M",
                   help="sizes also run in float64, for reference ('' for none)")
    p.add_argument("--repeats", type=int, default=9, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the workers this many times, taking turns (ours, torch eager, torch.nn, "
                        "ours, ...), and report the median over rounds: fairer when the machine's "
                        "load changes while the benchmark runs")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads for everyone")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall: time.perf_counter; cpu: time.process_time (the worker's CPU time, "
                        "steadier on a machine shared with other jobs; equal to wall time when idle "
                        "and single-threaded)")
    p.add_argument("--no-malloc-pin", action="store_true",
                   help="leave glibc's heap trimming at its defaults (see the module docstring)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    p.add_argument("--quick", action="store_true", help="sizes S,M only, 3 repeats, 1 warmup, no float64")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)   # internal: see Worker
    args = p.parse_args(argv)
    if args.serve:
        return args
    if args.quick:
        args.sizes, args.float64_sizes, args.repeats, args.warmup = "S,M", "", 3, 1
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
    """The environment every worker runs in (read by numpy, torch and glibc at start-up)."""
    env = os.environ.copy()
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    if not args.no_malloc_pin:
        env.update(MALLOC_VARS)
    return env


def jobs(args):
    out = []
    for cell in args.cells:
        for size in args.sizes:
            out.append({"cell": cell, "size": size, "dtype": "float32"})
        for size in args.float64_sizes:
            out.append({"cell": cell, "size": size, "dtype": "float64"})
    for job in out:
        job.update(zip("TBIH", SIZES[job["size"]]))
    return out


# --- ours and numpy: the worker ---------------------------------------------------------------

def make_pair(job):
    """(ours, numpy_baseline, grad_error): two no-argument forward+backward functions on the
    same weights and data, and the relative error between their parameter gradients."""
    import numpy as np
    import numpy_bptt

    import tinygrad_rnn as tg

    dtype = np.dtype(job["dtype"])
    T, B, I, H = job["T"], job["B"], job["I"], job["H"]
    rng = np.random.default_rng(0)
    xs_np = rng.standard_normal((T, B, I)).astype(dtype)
    dys = rng.standard_normal((T, B, H)).astype(dtype)
    tg.manual_seed(0)
    cell = {"rnn": tg.RNNCell, "lstm": tg.LSTMCell, "gru": tg.GRUCell}[job["cell"]](I, H, dtype=dtype)
    rnn = tg.Unroll(cell)
    xs = tg.Tensor(xs_np)
    params = cell.parameters()
    weights = [cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data, cell.bias_hh.data]
    baseline = numpy_bptt.FORWARD_BACKWARD[job["cell"]]

    def ours():
        for p in params:
            p.grad = None
        ys, _ = rnn(xs)
        ys.backward(dys)

    def numpy_baseline():
        return baseline(xs_np, dys, *weights)

    ours()
    _, grads = numpy_baseline()
    ref = np.concatenate([grads[name].ravel() for name, _ in cell.named_parameters()])
    got = np.concatenate([p.grad.ravel() for p in params])
    error = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return ours, numpy_baseline, error


def serve(spec):
    """The worker for ours and numpy: one JSON request per line on stdin, one reply per line.

    ``{"setup": job}`` builds the pair (reply: the gradient check); ``{"runs": n}`` times n
    runs, alternating the two (reply: milliseconds, one list per function); end of input
    ends the worker.
    """
    sys.path.insert(0, str(HERE))
    now = CLOCKS[spec["clock"]]
    fns = ()
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            job = request["setup"]
            ours, baseline, error = make_pair(job)
            fns = (ours, baseline)
            if error > (1e-4 if job["dtype"] == "float32" else 1e-10):
                print(f"bench_rnn: WARNING: {job['cell']} {job['size']}: our gradients differ from "
                      f"the numpy baseline's (relative error {error:.1e})", file=sys.stderr)
            reply = {"grad_err": error}
        else:
            runs = [[_time_once(fn, now) for fn in fns] for _ in range(request["runs"])]
            reply = {"ms": [list(ts) for ts in zip(*runs)] if runs else [[] for _ in fns]}
        print(json.dumps(reply), flush=True)


def _time_once(fn, now):
    t0 = now()
    fn()
    return 1e3 * (now() - t0)


# --- the workers in lockstep ------------------------------------------------------------------

class Worker:
    """A worker process that answers `serve`'s requests (torch_eager.py speaks the same)."""

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


def measure_round(workers, all_jobs, warmup, repeats):
    """{worker name: {job key: {"ms": [median per function], "grad_err": ...}}}, the workers
    taking turns job by job."""
    out = {w.name: {} for w in workers}
    for job in all_jobs:
        key = (job["cell"], job["size"], job["dtype"])
        for w in workers:
            setup = w.ask({"setup": job})
            w.ask({"runs": warmup})
            per_fn = w.ask({"runs": repeats})["ms"]
            out[w.name][key] = {**setup, "ms": [sorted(ts)[len(ts) // 2] for ts in per_fn]}
        print(f"  {job['cell']:4} {job['size']:4} {job['dtype']}: "
              + ", ".join(f"{w.name} {'/'.join(f'{m:.1f}' for m in out[w.name][key]['ms'])} ms"
                          for w in workers), file=sys.stderr, flush=True)
    return out


# --- report ---------------------------------------------------------------------------------

def _ms(x):
    return "n/a" if x is None else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def table(rows):
    head = ("| cell | size (T,B,I,H) | dtype | ours ms | numpy BPTT ms | torch eager ms | torch.nn ms "
            "| ours/numpy | ours/torch eager | grad err |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        size = f"{r['size']} ({r['T']},{r['B']},{r['I']},{r['H']})"
        err = "n/a" if r["grad_err"] is None else f"{r['grad_err']:.1e}"
        lines.append(f"| {r['cell']} | {size} | {r['dtype']} | {_ms(r['ours_ms'])} | {_ms(r['numpy_ms'])} "
                     f"| {_ms(r['torch_eager_ms'])} | {_ms(r['torch_nn_ms'])} "
                     f"| {_ratio(r['ours_ms'], r['numpy_ms'])} "
                     f"| {_ratio(r['ours_ms'], r['torch_eager_ms'])} | {err} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        serve(json.loads(args.serve))
        return
    all_jobs = jobs(args)
    env = worker_env(args)
    spec = {"threads": args.threads, "clock": args.clock}
    commands = {"ours": [sys.executable, __file__, "--serve"]}
    if importlib.util.find_spec("torch") is not None and not args.no_torch:
        for family in ("eager", "nn"):
            commands[family] = [sys.executable, str(HERE / "torch_eager.py"), "--serve", family]
    rounds = []
    for r in range(args.rounds):        # fresh processes each round: process history varies too
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        workers = [Worker(name, command, spec, env) for name, command in commands.items()]
        try:
            rounds.append(measure_round(workers, all_jobs, args.warmup, args.repeats))
        finally:
            for w in workers:
                w.close()

    def median_over_rounds(name, key, pick):
        values = sorted(pick(res[name][key]) for res in rounds if name in res)
        return values[len(values) // 2] if values else None

    rows = []
    for job in all_jobs:
        key = (job["cell"], job["size"], job["dtype"])
        rows.append({**job, "ours_ms": median_over_rounds("ours", key, lambda r: r["ms"][0]),
                     "numpy_ms": median_over_rounds("ours", key, lambda r: r["ms"][1]),
                     "grad_err": median_over_rounds("ours", key, lambda r: r["grad_err"]),
                     "torch_eager_ms": median_over_rounds("eager", key, lambda r: r["ms"][0]),
                     "torch_nn_ms": median_over_rounds("nn", key, lambda r: r["ms"][0])})

    import numpy as np
    malloc = "glibc defaults" if args.no_malloc_pin else \
        ", ".join(f"{k}={v}" for k, v in MALLOC_VARS.items())
    print(f"\nforward+backward through Unroll, median of {args.repeats} runs after {args.warmup} warmup"
          f"{f' (median over {args.rounds} rounds)' if args.rounds > 1 else ''}; "
          f"{args.clock} clock; threads={args.threads}; malloc: {malloc}; numpy {np.__version__}, "
          f"{os.cpu_count()} cores\n")
    print(table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
