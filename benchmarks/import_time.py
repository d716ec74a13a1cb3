"""Import time: what `import tinygrad_rnn` costs, and what the first Numba kernel call costs.

    python benchmarks/import_time.py [--repeat N]

Every number comes from a fresh Python subprocess (median of N runs): the time of the
statements themselves (measured inside the child with perf_counter) and the child's whole
wall time (interpreter start-up included). The kernels are compiled on first use with
``cache=True``; the cold rows point NUMBA_CACHE_DIR at a new empty directory for every run,
the warm rows at a directory filled by one earlier run, so the repository's own
``__pycache__`` is neither read nor written.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIRST_GRAPH = (
    "import numpy as np; import tinygrad_rnn as tg; "
    "x = tg.Tensor(np.random.default_rng(0).standard_normal((4, 4)), requires_grad=True); "
    "(x.tanh() + x.sigmoid() + x.relu()).sum().backward()"
)
ALL_KERNELS = (
    "import numpy as np; from tinygrad_rnn import kernels as k; "
    "x = np.linspace(0.5, 1.0, 8); "
    "[f(*([a] * n)) for f, n in [(k.sigmoid, 1), (k.tanh_backward, 2), (k.sigmoid_backward, 2), "
    "(k.relu_backward, 2), (k.sqrt_backward, 2), (k.div_rhs_backward, 3)] "
    "for a in (x, x.astype(np.float32))]"
)

BREAKDOWN = (
    "import numpy as np; import tinygrad_rnn; _t1 = time.perf_counter(); "
    "import numba; _t2 = time.perf_counter(); "
    "from tinygrad_rnn import kernels as k; x = np.linspace(0.5, 1.0, 8); "
    "k.tanh_backward(x, x); _t3 = time.perf_counter(); "
    "[f(*([x] * n)) for f, n in [(k.sigmoid, 1), (k.sigmoid_backward, 2), (k.relu_backward, 2), "
    "(k.sqrt_backward, 2), (k.div_rhs_backward, 3)]]; _t4 = time.perf_counter(); "
    "import json; print(json.dumps([_t1 - _t0, _t2 - _t1, _t3 - _t2, (_t4 - _t3) / 5])); "
    "import sys; sys.exit(0)"
)

CASES = [
    ("`python -c pass` (interpreter start-up)", "pass", None),
    ("`import numpy`", "import numpy", None),
    ("`import numba`", "import numba", None),
    ("`import tinygrad_rnn`", "import tinygrad_rnn", None),
    ("`import numba; import tinygrad_rnn`", "import numba; import tinygrad_rnn", None),
    ("import + first tanh/sigmoid/relu graph, warm cache", FIRST_GRAPH, "warm"),
    ("import + first tanh/sigmoid/relu graph, cold cache (compiles)", FIRST_GRAPH, "cold"),
    ("import + all 6 kernels x 2 dtypes, warm cache", ALL_KERNELS, "warm"),
    ("import + all 6 kernels x 2 dtypes, cold cache (compiles)", ALL_KERNELS, "cold"),
]


def run_child(stmt, cache_dir, parse=None):
    code = ("import time; _t0 = time.perf_counter()\n" + stmt +
            "\nprint(time.perf_counter() - _t0)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TINYGRAD_RNN_NUMBA", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"child failed:\n{out.stderr}")
    if parse is not None:
        return parse(out.stdout.strip().splitlines()[-1])
    return float(out.stdout.strip().splitlines()[-1]), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, median of {args.repeat} "
          "fresh subprocesses")
    print("\n| what | statements (ms) | whole process (ms) |")
    print("|---|---:|---:|")
    scratch = tempfile.mkdtemp(prefix="tg_import_time_")
    try:
        warm_dir = os.path.join(scratch, "warm")
        run_child(ALL_KERNELS, warm_dir)         # fill the warm cache once
        # Round-robin: every repetition runs every case once, so that a change of load on
        # the machine during the run shifts all rows alike instead of a few.
        inner = {label: [] for label, _, _ in CASES}
        wall = {label: [] for label, _, _ in CASES}
        for i in range(args.repeat):
            for j, (label, stmt, cache) in enumerate(CASES):
                cache_dir = os.path.join(scratch, "unused") if cache is None else warm_dir
                if cache == "cold":
                    cache_dir = os.path.join(scratch, f"cold-{i}-{j}")
                t_in, t_wall = run_child(stmt, cache_dir)
                inner[label].append(t_in)
                wall[label].append(t_wall)
        for label, _, _ in CASES:
            print(f"| {label} | {statistics.median(inner[label]) * 1e3:.0f} | "
                  f"{statistics.median(wall[label]) * 1e3:.0f} |", flush=True)
        print("\nWhere the first-use time goes, one child process (median ms):")
        print("\n| cache | import tinygrad_rnn | import numba | first kernel | "
              "each further kernel (mean of 5) |")
        print("|---|---:|---:|---:|---:|")
        for cache in ("warm", "cold"):
            cols = []
            for i in range(args.repeat):
                cache_dir = warm_dir if cache == "warm" else os.path.join(scratch, f"bd{i}")
                cols.append(run_child(BREAKDOWN, cache_dir, parse=json.loads))
            med = [statistics.median(c[j] for c in cols) * 1e3 for j in range(4)]
            print(f"| {cache} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} |",
                  flush=True)
        mods = subprocess.run(
            [sys.executable, "-c", "import sys, tinygrad_rnn; print('numba' in sys.modules)"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, check=True)
        print(f"\n`import tinygrad_rnn` imports numba: {mods.stdout.strip()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
