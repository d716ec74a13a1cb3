"""JAX reference timings for bench_rnn.py: the same equations under ``lax.scan`` and ``jit``.

Each cell is PyTorch's (and ours): the same parameter layouts, gate orders (LSTM i, f, g, o;
GRU r, z, n with the reset gate after the matmul) and the MGU of ``cells.py``, written as the
torch eager equations are, one step as the body of ``lax.scan``. One forward+backward is
``jax.vjp(run, params, xs)`` with the benchmark's fixed cotangent ``dys`` on the outputs,
jit-compiled as one function per shape (the compile is the first call, reported apart from the
timing), then ``block_until_ready`` on every gradient.

Hoisting the input side out of the scan (one matmul over all T·B rows first, as torch.nn and
our compiled path do) was tried and dropped: XLA ran it slower (LSTM, CPU ms, medians of 15
alternating runs: M 80 hoisted against 57 as written here, long 92 against 52, S 2.2 / 2.1,
L 1247 / 1273), so the peer is the plain form, at its best.

Threads: bench_rnn.py starts this worker with ``JAX_PLATFORMS=cpu`` and, at ``--threads 1``,
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``; the worker also turns off
``jax_cpu_enable_async_dispatch``, so that the computation runs on the calling thread, as
torch's and numpy's do. Measured with jax 0.10 (LSTM M, wall / CPU ms per forward+backward,
on the shared 2-core machine): by default 62-108 / 74-79 (two cores busy); eigen off alone
151-209 / 75-79 (one core computing, the Python thread waiting on another thread's hand-over,
slow under load); both off 76 / 75 (one thread). ``intra_op_parallelism_threads`` is not an
XLA flag: added to XLA_FLAGS it left two cores busy, and ``--xla_cpu_use_thunk_runtime`` is
no longer supported.

Usage (bench_rnn.py does this): ``python jax_rnn.py --serve SPEC``, then the request loop of
``worker.py``. tests/test_benchmarks_baseline.py checks these equations against the numpy
BPTT.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Importing jax must not need jax's x64 mode; the worker turns it on for float64 rows.


def _linear(x, W, b):
    return x @ W.T + b                                 # torch.nn.functional.linear


def rnn_sequence(params, xs):
    W_ih, W_hh, b_ih, b_hh = params

    def step(h, x_t):
        h = jnp.tanh(_linear(x_t, W_ih, b_ih) + _linear(h, W_hh, b_hh))
        return h, h
    return lax.scan(step, jnp.zeros((xs.shape[1], W_hh.shape[1]), xs.dtype), xs)[1]


def lstm_sequence(params, xs):
    W_ih, W_hh, b_ih, b_hh = params

    def step(carry, x_t):
        h, c = carry
        i, f, g, o = jnp.split(_linear(x_t, W_ih, b_ih) + _linear(h, W_hh, b_hh), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h
    zeros = jnp.zeros((xs.shape[1], W_hh.shape[1]), xs.dtype)
    return lax.scan(step, (zeros, zeros), xs)[1]


def gru_sequence(params, xs):
    W_ih, W_hh, b_ih, b_hh = params

    def step(h, x_t):
        x_r, x_z, x_n = jnp.split(_linear(x_t, W_ih, b_ih), 3, axis=-1)
        h_r, h_z, h_n = jnp.split(_linear(h, W_hh, b_hh), 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, h
    return lax.scan(step, jnp.zeros((xs.shape[1], W_hh.shape[1]), xs.dtype), xs)[1]


def mgu_sequence(params, xs):
    W_f, b_f, W_h, b_h = params

    def step(h, x_t):
        f = jax.nn.sigmoid(_linear(jnp.concatenate([x_t, h], axis=-1), W_f, b_f))
        h_tilde = jnp.tanh(_linear(jnp.concatenate([x_t, f * h], axis=-1), W_h, b_h))
        h = (1 - f) * h + f * h_tilde
        return h, h
    return lax.scan(step, jnp.zeros((xs.shape[1], W_f.shape[0]), xs.dtype), xs)[1]


SEQUENCES = {"rnn": rnn_sequence, "lstm": lstm_sequence, "gru": gru_sequence, "mgu": mgu_sequence}


@functools.cache
def forward_backward(cell):
    """A jitted ``(params, xs, dys) -> (ys, (dparams, dxs))``: outputs and the VJP of dys
    (one per cell, so that jit compiles once per shape and dtype)."""
    sequence = SEQUENCES[cell]

    def run(params, xs, dys):
        ys, vjp = jax.vjp(sequence, params, xs)
        return ys, vjp(dys)
    return jax.jit(run)


def build(job):
    """bench worker contestants for one job: {"jax": step}, checked against the numpy BPTT."""
    import numpy_bptt

    cell = job["cell"]
    if cell not in SEQUENCES:
        return {}, None, []                      # the table's legend says so (minGRU)
    dtype = np.dtype(job["dtype"])
    T, B, I, H = job["T"], job["B"], job["I"], job["H"]
    rng = np.random.default_rng(0)
    xs_np = rng.standard_normal((T, B, I)).astype(dtype)
    dys_np = rng.standard_normal((T, B, H)).astype(dtype)
    params_np = numpy_bptt.init_parameters(cell, I, H, dtype, rng)
    reference = numpy_bptt.reference_gradients(cell, xs_np, dys_np, params_np)

    params = tuple(jnp.asarray(p) for p in params_np)
    xs, dys = jnp.asarray(xs_np), jnp.asarray(dys_np)
    fn = forward_backward(cell)

    def step():
        _, (dparams, dxs) = jax.block_until_ready(fn(params, xs, dys))
        return [dxs, *dparams]
    return {"jax": step}, reference, []


def serve(spec):
    import worker

    jax.config.update("jax_enable_x64", True)          # float64 rows; float32 arrays stay float32
    if spec["threads"] == 1:
        jax.config.update("jax_cpu_enable_async_dispatch", False)   # compute on this thread
    worker.serve(build, spec)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        sys.exit("usage: jax_rnn.py --serve SPEC (bench_rnn.py runs it)")
    serve(json.loads(sys.argv[2]))
