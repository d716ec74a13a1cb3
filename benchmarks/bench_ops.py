"""Per-op overhead: one op's forward + backward through the tape vs the same arithmetic in numpy.

    python benchmarks/bench_ops.py [--quick]

For each op, the baseline is the bare numpy forward and backward arithmetic (what a
hand-written backward would compute, no graph); ours is ``out = op(x, y); out.backward(g)``
with fresh ``.grad`` each time. The table gives microseconds per forward+backward and the
ratio ours/numpy, for a tiny (4, 4) case, where Python overhead is everything, and a medium
(32, 512) case, where the arithmetic should dominate. No assertions: numbers to read.
"""

import argparse
import os
import platform
import sys
import timeit
from pathlib import Path

# One BLAS thread unless told otherwise: on a busy 2-core machine OpenBLAS's spinning worker
# threads made a (32, 512) @ (512, 512) product 70x slower (46 ms instead of 0.66 ms), which
# would measure the scheduler, not the op. Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tinygrad_rnn as tg  # noqa: E402
from tinygrad_rnn import Tensor  # noqa: E402


def _numpy_sigmoid(a):
    return 1 / (1 + np.exp(-a))


# name -> (our forward, numpy forward+backward, shapes of the inputs at size "n" x "m")
def cases(n, m):
    idx = (slice(1, n - 1), slice(None, None, 2))

    def np_tanh(a, b, g):
        y = np.tanh(a)
        return y, g * (1 - y * y)

    def np_sigmoid(a, b, g):
        s = _numpy_sigmoid(a)
        return s, g * s * (1 - s)

    def np_relu(a, b, g):
        return np.maximum(a, 0), np.where(a > 0, g, 0)

    def np_add(a, b, g):
        return a + b, g, g

    def np_mul(a, b, g):
        return a * b, g * b, g * a

    def np_matmul(a, b, g):
        return a @ b, g @ b.T, a.T @ g

    def np_getitem(a, b, g):
        out = a[idx]
        ga = np.zeros_like(a)
        ga[idx] = g
        return out, ga

    def np_sum(a, b, g):
        return a.sum(axis=0), np.broadcast_to(g, a.shape)

    return {
        "tanh": (lambda x, y: x.tanh(), np_tanh, [(n, m)]),
        "sigmoid": (lambda x, y: x.sigmoid(), np_sigmoid, [(n, m)]),
        "relu": (lambda x, y: x.relu(), np_relu, [(n, m)]),
        "add": (lambda x, y: x + y, np_add, [(n, m), (n, m)]),
        "mul": (lambda x, y: x * y, np_mul, [(n, m), (n, m)]),
        "matmul": (lambda x, y: x @ y, np_matmul, [(n, m), (m, m)]),
        "getitem": (lambda x, y: x[idx], np_getitem, [(n, m)]),
        "sum(axis=0)": (lambda x, y: x.sum(axis=0), np_sum, [(n, m)]),
    }


def _calibrate(fn, min_time):
    """A loop count that makes one timing of ``fn`` last about min_time / 5."""
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= min_time / 5:
            return number
        number *= 2 if t == 0 else max(2, int(min_time / 5 / t))


def bench_interleaved(fns, min_time, repeat=7):
    """Best per-call time of each function; the repeats alternate between the functions, so
    that a busy neighbour on the machine slows all of them alike."""
    numbers = [_calibrate(f, min_time) for f in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, (f, n) in enumerate(zip(fns, numbers)):
            best[i] = min(best[i], timeit.timeit(f, number=n) / n)
    return best


def time_case(ours, ref, arrays, min_time):
    a, b = arrays[0], arrays[-1]
    xs = [Tensor(arr, requires_grad=True) for arr in arrays]
    x, y = xs[0], xs[-1]
    g = np.ones(ours(x, y).shape, a.dtype)

    def step():
        for t in xs:
            t.grad = None
        ours(x, y).backward(g)

    def forward_only():
        with tg.no_grad():
            ours(x, y)

    return bench_interleaved([step, lambda: ref(a, b, g), forward_only], min_time)


def run(n, m, dtype, min_time):
    rng = np.random.default_rng(0)
    rows = []
    for name, (ours, ref, shapes) in cases(n, m).items():
        arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
        t_ours, t_np, t_fwd = time_case(ours, ref, arrays, min_time)
        rows.append((name, t_np * 1e6, t_ours * 1e6, t_ours / t_np, (t_ours - t_np) * 1e6,
                     t_fwd * 1e6))
    return rows


def print_table(title, rows):
    print(f"\n{title}")
    print("| op | numpy fwd+bwd (µs) | tinygrad_rnn fwd+bwd (µs) | ratio | overhead (µs) "
          "| ours, forward only under no_grad (µs) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t_np, t_ours, ratio, over, fwd in rows:
        print(f"| {name} | {t_np:.2f} | {t_ours:.2f} | {ratio:.1f}x | {over:.1f} | {fwd:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    args = ap.parse_args()
    min_time = 0.05 if args.quick else 0.4
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"numba kernels {'on' if tg.kernels.NUMBA_ENABLED else 'off'}, {platform.machine()}, "
          f"{os.cpu_count()} cpus, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"load average {os.getloadavg()[0]:.1f}")
    # warm-up: compile / load the Numba kernels before timing
    run(4, 4, np.float64, 0.001)
    run(4, 4, np.float32, 0.001)
    for (n, m) in [(4, 4), (32, 512)]:
        for dtype in (np.float64, np.float32):
            print_table(f"### ({n}, {m}) {np.dtype(dtype).name}", run(n, m, dtype, min_time))


if __name__ == "__main__":
    main()
