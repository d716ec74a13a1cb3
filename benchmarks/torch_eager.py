"""PyTorch reference timings for bench_rnn.py, run in a subprocess of their own.

Two families, each in its own process (bench_rnn.py starts one per family, so the thread
pools of torch, OpenBLAS and OpenMP never share a process and never fight):

* ``eager``: the same equations as our cells, written with torch ops in a Python loop over
  time. This is the same job as our eager tape: one op at a time, a tape, autograd walking
  it backwards. It is the target our eager mode has to meet.
* ``nn``: ``torch.nn.RNN/LSTM/GRU``: PyTorch's own fused C++ loop, for reference.

Usage (bench_rnn.py does this): ``python torch_eager.py JOBS_JSON`` where JOBS_JSON is
``{"family": "eager", "threads": 1, "warmup": 1, "repeats": 7, "jobs": [{"cell": "lstm",
"T": 50, "B": 16, "I": 16, "H": 32, "dtype": "float32"}, ...], "clock": "wall"}``; prints one
JSON object per job on stdout with the median and minimum milliseconds of forward+backward.

The equations (``*_equations``) are also imported by tests/test_benchmarks_baseline.py, which
checks them against the numpy baseline: the comparison is only fair if they agree.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def rnn_equations(xs, W_ih, W_hh, b_ih, b_hh):
    h = xs.new_zeros(xs.shape[1], W_hh.shape[1])
    ys = []
    for x in xs.unbind(0):
        h = (F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh)).tanh()
        ys.append(h)
    return torch.stack(ys)


def lstm_equations(xs, W_ih, W_hh, b_ih, b_hh):
    h = xs.new_zeros(xs.shape[1], W_hh.shape[1])
    c = h
    ys = []
    for x in xs.unbind(0):
        gates = F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        ys.append(h)
    return torch.stack(ys)


def gru_equations(xs, W_ih, W_hh, b_ih, b_hh):
    h = xs.new_zeros(xs.shape[1], W_hh.shape[1])
    ys = []
    for x in xs.unbind(0):
        x_r, x_z, x_n = F.linear(x, W_ih, b_ih).chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, W_hh, b_hh).chunk(3, dim=-1)
        r = (x_r + h_r).sigmoid()
        z = (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys)


EQUATIONS = {"rnn": rnn_equations, "lstm": lstm_equations, "gru": gru_equations}
MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(fn, warmup, repeats, clock):
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2], 1e3 * times[0]


def make_step(family, job):
    """A no-argument function doing one forward+backward of ``job``, parameters' grads reset."""
    dtype = getattr(torch, job["dtype"])
    T, B, I, H = job["T"], job["B"], job["I"], job["H"]
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(T, B, I, generator=gen, dtype=dtype)
    dys = torch.randn(T, B, H, generator=gen, dtype=dtype)
    if family == "nn":
        module = MODULES[job["cell"]](I, H).to(dtype)
        params = list(module.parameters())

        def step():
            for p in params:
                p.grad = None
            ys, _ = module(xs)
            ys.backward(dys)
        return step

    G, k = GATES[job["cell"]], H ** -0.5       # PyTorch's init: uniform(-1/sqrt(H), 1/sqrt(H))
    shapes = [(G * H, I), (G * H, H), (G * H,), (G * H,)]
    params = [((torch.rand(s, generator=gen, dtype=dtype) * 2 - 1) * k).requires_grad_()
              for s in shapes]
    equations = EQUATIONS[job["cell"]]

    def step():
        for p in params:
            p.grad = None
        ys = equations(xs, *params)
        ys.backward(dys)
    return step


def main(argv):
    spec = json.loads(argv[1])
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    for job in spec["jobs"]:
        median, best = _timed(make_step(spec["family"], job), spec["warmup"], spec["repeats"],
                              spec.get("clock", "wall"))
        print(json.dumps({**job, "family": spec["family"], "median_ms": median, "min_ms": best,
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
