"""``tinygrad-rnn bench``: time forward and forward+backward of an unrolled RNN, LSTM and GRU.

A quick look at one size; the full benchmark suite lives in ``benchmarks/``.
"""

import sys
import time

import numpy as np

from ..nn import init
from ..rnn import GRUCell, LSTMCell, RNNCell, Unroll
from ..tensor import Tensor
from ._threads import blas_threads

CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def add_arguments(p):
    p.add_argument("--cells", default="rnn,lstm,gru",
                   help="comma-separated cells to time (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=100, metavar="T", help="time steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, metavar="B", help="batch size (default: %(default)s)")
    p.add_argument("--input", type=int, default=64, metavar="I", help="input size (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128, metavar="H", help="hidden size (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS threads, 0 leaves the BLAS default (default: %(default)s)")
    p.add_argument("--eager", action="store_true",
                   help="time the eager engine (op by op) instead of the compiled path")
    p.add_argument("--repeats", type=int, default=5, metavar="N",
                   help="timed runs after one warm-up; the median is shown (default: %(default)s)")


def _median_ms(fn, repeats):
    fn()                      # warm-up: Numba compilation, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run(args):
    with blas_threads(args.threads):
        return _bench(args)


def _bench(args):
    names = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in names if c not in CELLS]
    if bad or not names:
        print(f"tinygrad-rnn bench: error: unknown cell(s) {bad}; choose from {sorted(CELLS)}",
              file=sys.stderr)
        return 2
    for name in ("seq_len", "batch", "input", "hidden", "repeats"):
        if getattr(args, name) < 1:
            print(f"tinygrad-rnn bench: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    T, B, I, H = args.seq_len, args.batch, args.input, args.hidden
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    init.manual_seed(0)
    path = "eager" if args.eager else "compiled (tg.compile)"
    print(f"T={T} B={B} I={I} H={H} {dtype.name}, {path}, median of {args.repeats} "
          "(the first call compiles and is not timed)")
    print(f"{'cell':6} {'forward ms':>11} {'fwd+bwd ms':>11} {'chars/s':>10}")
    for name in names:
        cell = CELLS[name](I, H, dtype=dtype)
        if not args.eager:
            from ..compile import compile  # imports numba: only when asked for
            cell = compile(cell)
        rnn = Unroll(cell)
        xs = Tensor(rng.standard_normal((T, B, I)).astype(dtype), requires_grad=True)
        v = rng.standard_normal((T, B, H)).astype(dtype)

        def forward(rnn=rnn, xs=xs):
            return rnn(xs)[0]

        def forward_backward(forward=forward, v=v):
            (forward() * v).sum().backward()

        fwd = _median_ms(forward, args.repeats)
        both = _median_ms(forward_backward, args.repeats)
        print(f"{name:6} {fwd:11.1f} {both:11.1f} {T * B / (both / 1e3):10,.0f}")
    return 0
