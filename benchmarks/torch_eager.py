"""PyTorch reference timings for bench_rnn.py, run in a subprocess of their own.

Two families, each in its own process (bench_rnn.py starts one per family, so the thread
pools of torch, OpenBLAS and OpenMP never share a process and never fight):

* ``eager``: the same equations as our cells, written with torch ops in a Python loop over
  time. This is the same job as our eager tape: one op at a time, a tape, autograd walking
  it backwards. It is the target our eager mode has to meet.
* ``nn``: ``torch.nn.RNN/LSTM/GRU``: PyTorch's own fused C++ loop, for reference.

Usage (bench_rnn.py does this): ``python torch_eager.py --serve FAMILY SPEC`` where SPEC is
``{"threads": 1, "clock": "wall"}``; then the request loop of ``worker.py``: ``{"setup":
{"cell": "lstm", "T": 50, "B": 16, "I": 16, "H": 32, "dtype": "float32", ...}}`` builds that
job and checks its gradients (of xs and every parameter) against the numpy BPTT on the same
weights, ``{"runs": n}`` times n forward+backwards. For the ``mgu`` and ``mingru`` jobs
``nn`` runs torch.nn.GRU of the same (T, B, I, H), the fused cell a user would pick instead;
``eager`` runs the MGU's equations, and has no minGRU.

The equations (``*_equations``) are also imported by tests/test_benchmarks_baseline.py, which
checks them against the numpy baseline: the comparison is only fair if they agree.
"""

import json
import sys

import numpy_bptt
import torch
import torch.nn.functional as F
import worker

GATES = numpy_bptt.GATES


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


def mgu_equations(xs, W_f, b_f, W_h, b_h):
    h = xs.new_zeros(xs.shape[1], W_f.shape[0])
    ys = []
    for x in xs.unbind(0):
        f = F.linear(torch.cat([x, h], dim=-1), W_f, b_f).sigmoid()
        h_tilde = F.linear(torch.cat([x, f * h], dim=-1), W_h, b_h).tanh()
        h = (1 - f) * h + f * h_tilde
        ys.append(h)
    return torch.stack(ys)


EQUATIONS = {"rnn": rnn_equations, "lstm": lstm_equations, "gru": gru_equations, "mgu": mgu_equations}
MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
# The fused torch.nn cell timed against a cell torch.nn does not have.
NN_STAND_IN = {"mgu": "gru", "mingru": "gru"}


def make_step(family, job):
    """(step, cell, params, xs, dys): ``step()`` does one forward+backward of ``job`` (the
    parameters' and xs' grads reset first) and returns ``[dx, *parameter gradients]``."""
    dtype = getattr(torch, job["dtype"])
    T, B, I, H = job["T"], job["B"], job["I"], job["H"]
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(T, B, I, generator=gen, dtype=dtype).requires_grad_()
    dys = torch.randn(T, B, H, generator=gen, dtype=dtype)
    if family == "nn":
        cell = NN_STAND_IN.get(job["cell"], job["cell"])
        module = MODULES[cell](I, H).to(dtype)
        params = list(module.parameters())

        def run():
            ys, _ = module(xs)
            return ys
    else:
        cell = job["cell"]
        k = H ** -0.5 if cell != "mgu" else (I + H) ** -0.5   # PyTorch's init: uniform(-k, k)
        params = [((torch.rand(s, generator=gen, dtype=dtype) * 2 - 1) * k).requires_grad_()
                  for s in numpy_bptt.parameter_shapes(cell, I, H)]
        equations = EQUATIONS[cell]

        def run():
            return equations(xs, *params)

    def step():
        xs.grad = None
        for p in params:
            p.grad = None
        run().backward(dys)
        return [xs.grad] + [p.grad for p in params]
    return step, cell, params, xs, dys


def build(family, job):
    """bench worker contestants for one job: {"torch_eager" or "torch_nn": step}, with the
    numpy BPTT of the same weights as the gradient reference."""
    name = "torch_" + family
    if family == "eager" and job["cell"] not in EQUATIONS:
        return {}, None, []                      # the table's legend says so (minGRU)
    step, cell, params, xs, dys = make_step(family, job)
    reference = numpy_bptt.reference_gradients(cell, xs.detach().numpy(), dys.numpy(),
                                               [p.detach().numpy() for p in params])
    return {name: step}, reference, []


def serve(family, spec):
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    worker.serve(lambda job: build(family, job), spec)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--serve":
        sys.exit("usage: torch_eager.py --serve FAMILY SPEC (bench_rnn.py runs it)")
    serve(sys.argv[2], json.loads(sys.argv[3]))
