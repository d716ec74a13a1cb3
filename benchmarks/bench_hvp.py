"""The cost of a Hessian-vector product through an unrolled LSTM, in units of one
forward+backward of the same unroll.

The job: the LSTM at size M of bench_rnn.py (T=100, B=32, I=64, H=128), float32, loss
``L = sum(ys * dys)`` for a fixed cotangent ``dys``. ``fwd+bwd`` times ``L.backward()`` after
the forward (the first-order path); ``hvp`` times ``tg.func.hvp(L, params, v)``: the forward,
a backward with ``create_graph=True`` (the gradient recorded as ops), and a backward through
that gradient's graph along ``v``. Both run alternately, ``--repeats`` times each after a
warm-up, in one process with one BLAS thread; the table gives medians and the spread
(min..max) and the ratio of medians. Before timing, the HVP is checked against a central
difference of the gradient along ``v`` (in float64).

    python benchmarks/bench_hvp.py                   # LSTM M, 7 repeats
    python benchmarks/bench_hvp.py --cells lstm,gru --sizes S,M --repeats 11 --clock cpu
"""

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402

SIZES = {"S": (50, 16, 16, 32), "M": (100, 32, 64, 128)}      # (T, B, I, H), as bench_rnn.py
CELLS = {"lstm": tg.LSTMCell, "gru": tg.GRUCell, "rnn": tg.RNNCell}


def make_job(cell_name, size, dtype, seed=0):
    T, B, I, H = SIZES[size]
    tg.manual_seed(seed)
    rnn = tg.Unroll(CELLS[cell_name](I, H, dtype=dtype))
    rng = np.random.default_rng(seed)
    xs = tg.Tensor(rng.standard_normal((T, B, I)).astype(dtype))
    dys = tg.Tensor(rng.standard_normal((T, B, H)).astype(dtype))
    params = rnn.parameters()
    vs = [tg.Tensor(rng.standard_normal(p.shape).astype(dtype)) for p in params]

    def loss(*_):
        ys, _ = rnn(xs)
        return (ys * dys).sum()

    def forward_backward():
        for p in params:
            p.grad = None
        loss().backward()

    def hvp():
        return tg.func.hvp(loss, params, vs)[1]

    return rnn, params, vs, loss, forward_backward, hvp


def check_hvp(cell_name, size):
    """The HVP equals (grad(x + eps v) - grad(x - eps v)) / 2 eps, in float64."""
    rnn, params, vs, loss, _, hvp = make_job(cell_name, size, np.float64)
    ours = hvp()
    eps = 1e-6
    grads = []
    for sign in (1, -1):
        with tg.no_grad():
            for p, v in zip(params, vs):
                p.data = p.data + sign * eps * v.data
        grads.append(tg.grad(loss(), params))
        with tg.no_grad():
            for p, v in zip(params, vs):
                p.data = p.data - sign * eps * v.data
    numeric = [(a.data - b.data) / (2 * eps) for a, b in zip(*grads)]
    num = np.concatenate([n.ravel() for n in numeric])
    ana = np.concatenate([h.data.ravel() for h in ours])
    return float(np.abs(ana - num).max() / np.abs(num).max())


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, now):
    start = now()
    fn()
    return now() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm")
    parser.add_argument("--sizes", default="M")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="cpu: this process's CPU time (less sensitive to a loaded machine)")
    args = parser.parse_args()
    now = CLOCKS[args.clock]
    print(f"float32, 1 thread, {args.clock} clock; medians of {args.repeats} (min..max), ms")
    print(f"{'cell':5} {'size':4} {'fwd+bwd':>20} {'hvp':>22} {'hvp / (fwd+bwd)':>16} {'hvp err':>9}")
    for cell_name in args.cells.split(","):
        for size in args.sizes.split(","):
            err = check_hvp(cell_name, size)
            _, _, _, _, forward_backward, hvp = make_job(cell_name, size, np.float32)
            for _ in range(args.warmup):
                forward_backward()
                hvp()
            fb, hv = [], []
            for _ in range(args.repeats):           # alternate, so load hits both alike
                fb.append(timed(forward_backward, now))
                hv.append(timed(hvp, now))
            m_fb, m_hv = statistics.median(fb), statistics.median(hv)

            def cell(ts, m):
                return f"{m * 1e3:7.1f} ({min(ts) * 1e3:.1f}..{max(ts) * 1e3:.1f})"
            print(f"{cell_name:5} {size:4} {cell(fb, m_fb):>20} {cell(hv, m_hv):>22} "
                  f"{m_hv / m_fb:16.2f} {err:9.1e}")


if __name__ == "__main__":
    main()
