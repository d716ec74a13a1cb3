"""The compiled path against torch.nn's fused cells: a quick side-by-side, one thread each.

float32, forward+backward of ``Unroll(tg.compile(cell))(xs)`` with ``ys.backward(dys)`` and
``xs`` requiring grad (gradients of x and every parameter), against ``torch.nn.RNN/LSTM/GRU``
doing the same job in a separate process. The MGU (DESIGN.md's custom cell, equations only)
is compared with torch.nn.GRU of the same size. Median and spread (min-max) in ms; the GEMM
floor is the GEMMs alone, in numpy (see `gemm_floor`).

    python benchmarks/compile_speed.py                       # every cell and size
    python benchmarks/compile_speed.py --cells lstm --sizes M,long --repeats 15

The official table is benchmarks/bench_rnn.py's; this script is for working on the compiler.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {"S": (50, 16, 16, 32), "M": (100, 32, 64, 128), "L": (100, 64, 256, 512),
         "long": (2000, 8, 8, 32)}
THREADS = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS")}


def _stats(times):
    times = sorted(times)
    return {"median": times[len(times) // 2] * 1e3, "min": times[0] * 1e3, "max": times[-1] * 1e3}


def _time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return _stats(out)


def mgu_cell(I, H):
    import tinygrad_rnn as tg
    from tinygrad_rnn import nn

    class MGUCell(tg.Cell):
        def __init__(self, input_size, hidden_size):
            self.input_size, self.hidden_size = input_size, hidden_size
            self.W_f = nn.Linear(input_size + hidden_size, hidden_size, dtype="float32")
            self.W_h = nn.Linear(input_size + hidden_size, hidden_size, dtype="float32")

        def init_state(self, batch_size):
            return tg.zeros(batch_size, self.hidden_size, dtype="float32")

        def forward(self, x, h):
            f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
            h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
            h = (1 - f) * h + f * h_tilde
            return h, h

    return MGUCell(I, H)


def ours(cell_name, size, warmup, repeats):
    import numpy as np

    import tinygrad_rnn as tg
    T, B, I, H = SIZES[size]
    tg.manual_seed(0)
    if cell_name == "mgu":
        cell = mgu_cell(I, H)
    else:
        cell = {"rnn": tg.RNNCell, "lstm": tg.LSTMCell, "gru": tg.GRUCell}[cell_name](
            I, H, dtype=np.float32)
    rnn = tg.Unroll(tg.compile(cell, fallback=False))
    rng = np.random.default_rng(0)
    xs = tg.Tensor(rng.standard_normal((T, B, I)).astype(np.float32), requires_grad=True)
    dys = rng.standard_normal((T, B, H)).astype(np.float32)

    def job():
        ys, _ = rnn(xs)
        ys.backward(dys)

    t0 = time.perf_counter()
    job()
    first = time.perf_counter() - t0
    out = _time(job, warmup, repeats)
    out["first_call_s"] = first
    return out


def gemm_floor(cell_name, size, warmup, repeats):
    """The GEMMs any implementation of forward+backward must run, alone, in numpy: the
    hoisted input GEMM, T per-step GEMMs each way, and dW_hh, dW_ih, dx as one GEMM each."""
    import numpy as np
    T, B, I, H = SIZES[size]
    G = {"rnn": 1, "lstm": 4, "gru": 3, "mgu": 2}[cell_name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T * B, I)).astype(np.float32)
    W_ih_T = rng.standard_normal((I, G * H)).astype(np.float32)
    W_hh_T = rng.standard_normal((H, G * H)).astype(np.float32)
    W_hh = np.ascontiguousarray(W_hh_T.T)
    hs = rng.standard_normal((T, B, H)).astype(np.float32)
    dG = rng.standard_normal((T, B, G * H)).astype(np.float32)
    out, dh = np.empty((B, G * H), np.float32), np.empty((B, H), np.float32)

    def job():
        x @ W_ih_T
        for t in range(T):
            np.dot(hs[t], W_hh_T, out=out)
            np.dot(dG[t], W_hh, out=dh)
        dG2 = dG.reshape(T * B, G * H)
        dG2.T @ hs.reshape(T * B, H)
        dG2.T @ x
        dG2 @ W_ih_T.T

    return _time(job, warmup, repeats)


def torch_nn(cell_name, size, warmup, repeats):
    import torch
    torch.set_num_threads(1)
    T, B, I, H = SIZES[size]
    torch.manual_seed(0)
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "mgu": torch.nn.GRU}
    model = kind[cell_name](I, H)
    xs = torch.randn(T, B, I, requires_grad=True)
    dys = torch.randn(T, B, H)

    def job():
        ys, _ = model(xs)
        ys.backward(dys)

    return _time(job, warmup, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm,gru,rnn,mgu")
    p.add_argument("--sizes", default="S,M,L,long")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat each row in fresh processes")
    p.add_argument("--worker", choices=["ours", "torch", "floor"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cells, sizes = args.cells.split(","), args.sizes.split(",")
    if args.worker:
        fn = {"ours": ours, "torch": torch_nn, "floor": gemm_floor}[args.worker]
        rows = {f"{c}/{s}": fn(c, s, args.warmup, args.repeats) for c in cells for s in sizes}
        print(json.dumps(rows))
        return
    env = dict(os.environ, **THREADS)
    # Row by row, the contestants back to back (and --rounds times, median of the medians):
    # on a shared machine the load drifts over minutes, so distant runs do not compare.
    results = {"ours": {}, "torch": {}, "floor": {}}
    for c in cells:
        for s in sizes:
            runs = {who: [] for who in results}
            for _ in range(args.rounds):
                for who in results:
                    cmd = [sys.executable, __file__, "--worker", who, "--cells", c, "--sizes", s,
                           "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    runs[who].append(json.loads(out.stdout.strip().splitlines()[-1])[f"{c}/{s}"])
            for who, rs in runs.items():
                rs.sort(key=lambda r: r["median"])
                results[who][f"{c}/{s}"] = rs[len(rs) // 2]
    print(f"{'row':<10} {'ours ms (min-max)':>22} {'torch.nn ms (min-max)':>24} {'ratio':>6}"
          f" {'GEMM floor':>10} {'/floor':>6} {'first call s':>12}")
    for key, mine in results["ours"].items():
        theirs, floor = results["torch"][key], results["floor"][key]["median"]
        print(f"{key:<10} {mine['median']:9.2f} ({mine['min']:.2f}-{mine['max']:.2f})"
              f" {theirs['median']:10.2f} ({theirs['min']:.2f}-{theirs['max']:.2f})"
              f" {mine['median'] / theirs['median']:6.2f} {floor:10.2f}"
              f" {mine['median'] / floor:6.2f} {mine['first_call_s']:12.2f}")


if __name__ == "__main__":
    main()
