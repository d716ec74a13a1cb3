"""Cold compile time of the compiled LSTM, and the warm start of a second process.

Cold: a fresh cache directory, one process that builds ``tg.compile(LSTMCell)`` and runs one
forward+backward (trace, code generation, Numba compiling the forward and reverse loops).
Warm: a second process with the same cache directory doing the same (the machine code comes
from Numba's cache beside the generated file). Each is the time of that first call, measured
inside the process (the interpreter's and numpy's own start are not counted).

    python benchmarks/compile_time.py            # goal: cold < 10 s, warm < 1 s
"""

import os
import subprocess
import sys
import tempfile

CHILD = """
import time, numpy as np, tinygrad_rnn as tg
cell = tg.LSTMCell(64, 128, dtype=np.float32)
xs = tg.Tensor(np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32),
               requires_grad=True)
t0 = time.perf_counter()
ys, _ = tg.Unroll(tg.compile(cell, fallback=False))(xs)
ys.sum().backward()
print(time.perf_counter() - t0)
"""


def first_call(cache):
    env = dict(os.environ, TINYGRAD_RNN_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = first_call(cache)
        warm = [first_call(cache) for _ in range(3)]
    print(f"LSTM cold compile (first process, empty cache): {cold:.2f} s")
    print(f"LSTM warm start (later processes): {', '.join(f'{w:.2f}' for w in warm)} s")


if __name__ == "__main__":
    main()
