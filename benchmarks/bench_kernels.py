"""Kernels: the Numba ufuncs against their numpy references, and why transcendentals stay numpy.

    python benchmarks/bench_kernels.py [--quick]

Each kernel of ``tinygrad_rnn.kernels`` at 16, 16,384 and 1,048,576 elements, float32 and
float64: microseconds per call for the Numba version and the numpy reference, and the ratio
numba/numpy (below 1: Numba is faster). ``sigmoid`` (one Numba pass with its own
vectorized exp, against the numpy form) gets a second table by size. A last table times
``np.tanh`` against a Numba ``math.tanh`` ufunc: why tanh stays in numpy.
"""

import argparse
import functools
import math
import os
import platform
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_rnn import kernels  # noqa: E402
from tinygrad_rnn.kernels import numba_kernels, numpy_kernels  # noqa: E402

SIZES = [16, 16_384, 1_048_576]


def _calibrate(fn, min_time):
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= min_time / 5:
            return number
        number *= 2 if t == 0 else max(2, int(min_time / 5 / t))


def bench_pair(f, g, min_time, repeat=5):
    """Best per-call times of f and g, timed alternately so machine load hits both alike."""
    nf, ng = _calibrate(f, min_time), _calibrate(g, min_time)
    tf = tg = float("inf")
    for _ in range(repeat):
        tf = min(tf, timeit.timeit(f, number=nf) / nf)
        tg = min(tg, timeit.timeit(g, number=ng) / ng)
    return tf, tg


def make_args(name, n, dtype, rng):
    g = rng.standard_normal(n).astype(dtype)
    if name == "sigmoid":
        return [(rng.standard_normal(n) * 4).astype(dtype)]
    if name == "tanh_backward":
        return [g, np.tanh(rng.standard_normal(n)).astype(dtype)]
    if name == "sigmoid_backward":
        return [g, rng.uniform(0, 1, n).astype(dtype)]
    if name == "relu_backward":
        return [g, rng.standard_normal(n).astype(dtype)]
    if name == "sqrt_backward":
        return [g, rng.uniform(0.1, 3, n).astype(dtype)]
    if name == "div_rhs_backward":
        b = rng.uniform(0.5, 2, n).astype(dtype)
        return [g, (rng.standard_normal(n) / b).astype(dtype), b]
    raise KeyError(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    min_time = 0.05 if args.quick else 0.25
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} cpus, NUMBA_ENABLED={kernels.NUMBA_ENABLED}, "
          f"load average {os.getloadavg()[0]:.1f}")
    import numba
    from numba import vectorize
    print(f"numba {numba.__version__}")

    rng = np.random.default_rng(0)
    impls = {name: (getattr(numba_kernels, name), getattr(numpy_kernels, name))
             for name in ["tanh_backward", "sigmoid_backward", "relu_backward", "sqrt_backward",
                          "div_rhs_backward"]}
    impls["sigmoid"] = (numba_kernels.sigmoid, numpy_kernels.sigmoid)

    print("\n| kernel | dtype | n | numba (µs) | numpy (µs) | numba/numpy |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (fast, ref) in impls.items():
        base = name.split(" ")[0]
        for dtype in (np.float32, np.float64):
            fast(*make_args(base, 4, dtype, rng))          # compile / load from cache
            for n in SIZES:
                a = make_args(base, n, dtype, rng)
                t_fast, t_ref = bench_pair(functools.partial(fast, *a), functools.partial(ref, *a),
                                           min_time)
                print(f"| {name} | {np.dtype(dtype).name} | {n:,} | {t_fast * 1e6:.2f} | "
                      f"{t_ref * 1e6:.2f} | {t_fast / t_ref:.2f} |", flush=True)

    print("\nsigmoid by size (512: an LSTM gate at S, 4,096 at M, 32,768 at L)")
    print("\n| n | float32 numba/numpy | float64 numba/numpy |")
    print("|---:|---:|---:|")
    for n in [64, 512, 4096, 32768]:
        ratios = []
        for dtype in (np.float32, np.float64):
            x = make_args("sigmoid", n, dtype, rng)[0]
            t_fast, t_ref = bench_pair(functools.partial(numba_kernels.sigmoid, x),
                                       functools.partial(numpy_kernels.sigmoid, x), min_time)
            ratios.append(t_fast / t_ref)
        print(f"| {n:,} | {ratios[0]:.2f} | {ratios[1]:.2f} |", flush=True)

    @vectorize(["float32(float32)", "float64(float64)"])
    def numba_tanh(x):
        return math.tanh(x)

    # call the plain numpy ufunc inside the DUFunc, as tinygrad_rnn.kernels does
    numba_tanh = getattr(numba_tanh, "ufunc", numba_tanh)

    print("\nTranscendentals: np.tanh vs a Numba @vectorize math.tanh ufunc")
    print("\n| dtype | n | Numba math.tanh (µs) | np.tanh (µs) | numba/numpy | ns per element "
          "(numba / numpy) |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype in (np.float32, np.float64):
        numba_tanh(np.ones(2, dtype))
        for n in SIZES:
            x = rng.standard_normal(n).astype(dtype)
            t_nb, t_np = bench_pair(functools.partial(numba_tanh, x), functools.partial(np.tanh, x),
                                    min_time)
            print(f"| {np.dtype(dtype).name} | {n:,} | {t_nb * 1e6:.2f} | {t_np * 1e6:.2f} | "
                  f"{t_nb / t_np:.2f} | {t_nb / n * 1e9:.2f} / {t_np / n * 1e9:.2f} |", flush=True)


if __name__ == "__main__":
    main()
