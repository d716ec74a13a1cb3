"""PyTorch reference timings for bench_rnn.py, run in a subprocess of their own.

Two families, each in its own process (bench_rnn.py starts one per family, so the thread
pools of torch, OpenBLAS and OpenMP never share a process and never fight):

* ``eager``: the same equations as our cells, written with torch ops in a Python loop over
  time. This is the same job as our eager tape: one op at a time, a tape, autograd walking
  it backwards. It is the target our eager mode has to meet.
* ``nn``: ``torch.nn.RNN/LSTM/GRU``: PyTorch's own fused C++ loop, for reference.

Usage (bench_rnn.py does this): ``python torch_eager.py --serve FAMILY SPEC`` where SPEC is
``{"threads": 1, "clock": "wall"}``; then, like bench_rnn.py's own worker, one JSON request
per line on stdin: ``{"setup": {"cell": "lstm", "T": 50, "B": 16, "I": 16, "H": 32,
"dtype": "float32", ...}}`` builds that job, ``{"runs": n}`` times n forward+backwards
and replies ``{"ms": [[milliseconds, ...]]}``. bench_rnn.py asks its workers in turn.

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


def serve(family, spec):
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    now = CLOCKS[spec.get("clock", "wall")]
    step = None
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            step = make_step(family, request["setup"])
            reply = {"threads": torch.get_num_threads()}
        else:
            times = []
            for _ in range(request["runs"]):
                t0 = now()
                step()
                times.append(1e3 * (now() - t0))
            reply = {"ms": [times]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--serve":
        sys.exit("usage: torch_eager.py --serve FAMILY SPEC (bench_rnn.py runs it)")
    serve(sys.argv[2], json.loads(sys.argv[3]))
