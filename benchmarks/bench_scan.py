"""minGRU through one linear scan, against the same cell stepped and against torch.nn.GRU;
and the scan's kernel variants against each other.

Forward+backward (``ys.backward(dys)``, parameter gradients; float32) of

* ``scan``: ``Unroll(MinGRUCell)``, which runs the cell's ``forward_sequence``: one input
  projection over all T * B rows, the gates elementwise, one ``linear_scan``;
* ``stepped``: the same cell and weights behind a wrapper without ``forward_sequence``, so
  eager ``Unroll`` steps it (T steps of a handful of ops each);
* ``torch.nn.GRU``: PyTorch's fused GRU at the same (T, B, I, H) (a GRU has 3H(I+H+2)
  parameters, the minGRU 2H(I+1): the same job for the user, not the same arithmetic).

Each peer runs in a process of its own with one thread (OMP/OpenBLAS/MKL/Numba and torch),
glibc's malloc pinned as in bench_rnn.py; the peers take turns job by job, ``--rounds``
times, and every timed run is kept: the table gives the median and the 25-75 % range over
all of them. Before timing, the scan worker checks that its gradients equal the stepped
ones (``grad err``).

The kernel section times ``scan_kernels.scan``'s variants (numpy reference, serial,
blocked = prange over columns, chunked = parallel over time) on (T, N) arrays in a process
with ``--kernel-threads`` Numba threads (default 2, the machine's cores).

    python benchmarks/bench_scan.py                  # ~1 minute
    python benchmarks/bench_scan.py --rounds 5 --repeats 15
"""

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rnn import CLOCKS, MALLOC_VARS, THREAD_VARS, Worker, _time_once  # noqa: E402

SIZES = {"long": (2000, 8, 8, 32), "M": (100, 32, 64, 128)}
PEERS = ("scan", "stepped", "torch.nn.GRU")
KERNEL_SHAPES = [(2000, 256), (100, 4096), (2000, 32), (10000, 8), (1000, 65536)]
GOALS = [("long", "stepped", 20.0), ("long", "torch.nn.GRU", 1.0), ("M", "torch.nn.GRU", 1.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=9, help="timed runs per job and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--rounds", type=int, default=3, help="turns of all peers, in fresh processes")
    p.add_argument("--kernel-threads", type=int, default=2, help="Numba threads in the kernel section")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    p.add_argument("--serve", nargs=2, metavar=("PEER", "SPEC"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the workers ------------------------------------------------------------------------------

class _NoSequence:
    """The cell without its forward_sequence: Unroll steps it."""

    def __init__(self, cell):
        self.cell, self.input_size = cell, cell.input_size

    def init_state(self, batch_size):
        return self.cell.init_state(batch_size)

    def __call__(self, x, state):
        return self.cell(x, state)


def make_job(peer, job):
    """(forward+backward function, reply extras) for one peer and size."""
    import numpy as np
    T, B, I, H = job["T"], job["B"], job["I"], job["H"]
    rng = np.random.default_rng(0)
    xs_np = rng.standard_normal((T, B, I)).astype(np.float32)
    dys = rng.standard_normal((T, B, H)).astype(np.float32)
    if peer == "torch.nn.GRU":
        import torch
        torch.manual_seed(0)
        gru = torch.nn.GRU(I, H)
        xs_t, dys_t = torch.from_numpy(xs_np), torch.from_numpy(dys)

        def run_torch():
            gru.zero_grad()
            ys, _ = gru(xs_t)
            ys.backward(dys_t)
        return run_torch, {}

    import tinygrad_rnn as tg
    tg.manual_seed(0)
    cell = tg.MinGRUCell(I, H, dtype=np.float32)
    xs = tg.Tensor(xs_np)

    def forward_backward(runner):
        for p in cell.parameters():
            p.grad = None
        ys, _ = tg.Unroll(runner)(xs)
        ys.backward(dys)
        return np.concatenate([p.grad.ravel() for p in cell.parameters()])

    extras = {}
    if peer == "scan":
        ours, stepped = forward_backward(cell), forward_backward(_NoSequence(cell))
        extras["grad_err"] = float(np.linalg.norm(ours - stepped) / np.linalg.norm(stepped))
        return (lambda: forward_backward(cell)), extras
    runner = _NoSequence(cell)
    return (lambda: forward_backward(runner)), extras


def kernel_timings(spec):
    """{shape: {variant: [ms, ...]}} for scan_kernels.scan's variants."""
    import numpy as np

    from tinygrad_rnn import scan_kernels
    now = CLOCKS[spec["clock"]]
    out = {}
    for T, N in KERNEL_SHAPES:
        rng = np.random.default_rng(0)
        a = rng.uniform(0, 1, (T, N)).astype(np.float32)
        b = rng.standard_normal((T, N)).astype(np.float32)
        h0 = np.zeros(N, np.float32)
        row = out[f"{T}x{N}"] = {}
        for variant in scan_kernels.VARIANTS:
            fn = functools.partial(scan_kernels.scan, a, b, h0, False, variant=variant)
            for _ in range(spec["warmup"]):
                fn()
            row[variant] = [_time_once(fn, now) for _ in range(spec["repeats"])]
        row["chosen"] = scan_kernels.choose_variant(T, N)
    return out


def serve(peer, spec):
    """One JSON request per line: {"setup": job}, {"runs": n}, or {"kernels": true}."""
    now = CLOCKS[spec["clock"]]
    fn = None
    if peer == "torch.nn.GRU":
        import torch
        torch.set_num_threads(1)
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            fn, reply = make_job(peer, request["setup"])
        elif "kernels" in request:
            reply = kernel_timings(spec)
        else:
            reply = {"ms": [[_time_once(fn, now) for _ in range(request["runs"])]]}
        print(json.dumps(reply), flush=True)


# --- the report -------------------------------------------------------------------------------

def quartiles(ts):
    import numpy as np
    return tuple(float(q) for q in np.percentile(ts, [50, 25, 75]))


def _fmt(ms):
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        serve(args.serve[0], json.loads(args.serve[1]))
        return
    env = os.environ.copy()
    env.update({var: "1" for var in THREAD_VARS}, **MALLOC_VARS)
    peers = [p for p in PEERS if p != "torch.nn.GRU" or importlib.util.find_spec("torch")]
    spec = {"clock": args.clock, "warmup": args.warmup, "repeats": args.repeats}
    times = {(peer, size): [] for peer in peers for size in SIZES}
    grad_err = {}
    for r in range(args.rounds):
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        workers = [Worker(peer, [sys.executable, __file__, "--serve", peer], spec, env) for peer in peers]
        try:
            for size, (T, B, I, H) in SIZES.items():
                for w in workers:
                    setup = w.ask({"setup": {"T": T, "B": B, "I": I, "H": H}})
                    grad_err.setdefault(size, setup.get("grad_err"))
                    w.ask({"runs": args.warmup})
                    times[(w.name, size)] += w.ask({"runs": args.repeats})["ms"][0]
        finally:
            for w in workers:
                w.close()

    print(f"\nminGRU forward+backward, float32, one thread; median [25-75 %] of "
          f"{args.rounds} x {args.repeats} runs; {args.clock} clock\n")
    print("| size (T,B,I,H) | " + " | ".join(f"{p} ms" for p in peers)
          + " | stepped/scan | torch.nn.GRU/scan | grad err scan vs stepped |")
    print("|---" * (len(peers) + 4) + "|")
    medians = {key: quartiles(ts)[0] for key, ts in times.items()}
    for size, dims in SIZES.items():
        cells = []
        for p in peers:
            med, lo, hi = quartiles(times[(p, size)])
            cells.append(f"{_fmt(med)} [{_fmt(lo)}-{_fmt(hi)}]")
        ratio = {p: medians[(p, size)] / medians[("scan", size)] for p in peers}
        print(f"| {size} {dims} | " + " | ".join(cells)
              + f" | {ratio['stepped']:.1f} | {ratio.get('torch.nn.GRU', float('nan')):.1f} "
              f"| {grad_err[size]:.1e} |")
    print()
    for size, peer, need in GOALS:
        if ("scan", size) in medians and (peer, size) in medians:
            ratio = medians[(peer, size)] / medians[("scan", size)]
            verdict = "met" if ratio >= need else "MISSED"
            print(f"goal: scan >= {need:g}x faster than {peer} at {size}: {ratio:.1f}x ({verdict})")

    kernel_env = dict(env, NUMBA_NUM_THREADS=str(args.kernel_threads))
    w = Worker("kernels", [sys.executable, __file__, "--serve", "kernels"], spec, kernel_env)
    try:
        rows = w.ask({"kernels": True})
    finally:
        w.close()
    from tinygrad_rnn.scan_kernels import VARIANTS
    print(f"\nscan_kernels.scan on float32 (T, N), {args.kernel_threads} Numba threads; median "
          f"[25-75 %] of {args.repeats} runs, ms\n")
    print("| T x N | " + " | ".join(VARIANTS) + " | chosen |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for shape, row in rows.items():
        cells = []
        for v in VARIANTS:
            med, lo, hi = quartiles(row[v])
            cells.append(f"{med:.3f} [{lo:.3f}-{hi:.3f}]")
        print(f"| {shape} | " + " | ".join(cells) + f" | {row['chosen']} |")


if __name__ == "__main__":
    main()
