"""Long-range dependence: the adding problem, vanilla RNN vs LSTM vs GRU.

The seed's case for the LSTM. Each input sequence has T = 50 steps of two numbers: a random
value in [0, 1], and a marker that is 1 at exactly two steps (one in each half of the
sequence). The target, read from the final output (many-to-one), is the sum of the two
marked values. Predicting the mean (1.0) scores mse 1/6 ≈ 0.167; beating it means carrying a
value across up to 50 steps.

The seed's formula says why a vanilla RNN struggles: dL_t/dW_hh holds the product
∏ tanh'(·) W_hh over the steps in between, which shrinks (or blows up) geometrically. We
measure it directly: the size of dL/dx_t, the gradient reaching the input t steps before
the loss, at initialisation. Then each cell trains with the same budget, optimizer and
gradient clipping (``clip_grad_norm`` at 1.0; we print the pre-clip norms it returns).
The LSTM's forget-gate bias starts at 1.0 (a common choice: the cell state is kept by
default and the gradient along it does not vanish at the start).

    python examples/05_adding_problem.py     # ~70 s; writes examples/out/adding_problem.png
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: BLAS threads cost more than they give

import time

import numpy as np

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.nn import functional as F

from _common import compiled, fit, parse_args, pyplot, save_figure  # this folder's shared helpers

DTYPE = np.float32
BASELINE = 1 / 6        # the variance of the sum of two uniforms: the mse of always saying 1.0


def adding_batch(rng, batch_size, T):
    """xs (T, B, 2): (value, marker) per step; targets (B, 1): the sum of the marked values."""
    values = rng.uniform(0, 1, (T, batch_size))
    markers = np.zeros((T, batch_size))
    cols = np.arange(batch_size)
    markers[rng.integers(0, T // 2, batch_size), cols] = 1
    markers[rng.integers(T // 2, T, batch_size), cols] = 1
    xs = np.stack([values, markers], axis=-1).astype(DTYPE)
    return tg.Tensor(xs), tg.Tensor((values * markers).sum(axis=0, keepdims=True).T.astype(DTYPE))


def make_cell(kind, hidden):
    if kind == "LSTM":
        cell = tg.LSTMCell(2, hidden, dtype=DTYPE)
        # Gate order i, f, g, o: rows H..2H of the biases are the forget gate's.
        cell.bias_ih.data[hidden:2 * hidden] = 1.0
        cell.bias_hh.data[hidden:2 * hidden] = 0.0
        return cell
    return {"RNN": tg.RNNCell, "GRU": tg.GRUCell}[kind](2, hidden, dtype=DTYPE)


def predict(cell, readout, xs):
    ys, _ = tg.Unroll(cell)(xs)
    return readout(ys[-1])                    # many-to-one: the last step's output


def input_gradient_norms(cell, readout, xs, targets):
    """||dL/dx_t|| for every step t: how much of the loss's gradient reaches step t."""
    xs = tg.Tensor(xs.data.copy(), requires_grad=True)
    F.mse(predict(cell, readout, xs), targets).backward()
    for p in cell.parameters() + readout.parameters():
        p.grad = None
    return np.sqrt((xs.grad.astype(np.float64) ** 2).sum(axis=(1, 2)))


def train(kind, steps, hidden, batch, T, seed, eager=False):
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, hidden)
    readout = nn.Linear(hidden, 1, dtype=DTYPE)
    grad_in = input_gradient_norms(cell, readout, *adding_batch(rng, 256, T))
    fast = compiled(cell, eager)           # the same Parameters, whole sequences compiled

    def batch_loss():
        xs, targets = adding_batch(rng, batch, T)
        return F.mse(predict(fast, readout, xs), targets)

    start = time.perf_counter()
    losses, norms = fit(cell.parameters() + readout.parameters(), batch_loss, steps, lr=1e-2, log=False)
    with tg.no_grad():
        xs, targets = adding_batch(rng, 2000, T)
        test_mse = F.mse(predict(fast, readout, xs), targets).item()
    return {"losses": np.array(losses), "grad_norms": np.array(norms), "input_grad": grad_in,
            "test_mse": test_mse, "seconds": time.perf_counter() - start}


def smooth(x, window):
    window = max(1, min(window, len(x)))
    return np.convolve(x, np.ones(window) / window, mode="valid")


def main(steps=1200, seed=0, quick=False, out_dir=None, T=None, eager=False):
    """Train the three cells; return {kind: {"test_mse", "losses", "grad_norms", ...}, "plot"}."""
    hidden, batch = (8, 16) if quick else (32, 64)
    T = T if T is not None else (10 if quick else 50)
    results = {}
    print(f"adding problem, T = {T}: mse of always predicting the mean = {BASELINE:.3f}")
    for kind in ("RNN", "LSTM", "GRU"):
        r = results[kind] = train(kind, steps, hidden, batch, T, seed, eager)
        g, n = r["input_grad"], r["grad_norms"]
        print(f"\n{kind}: trained {steps} steps in {r['seconds']:.1f} s")
        print(f"  at init, ||dL/dx_t||: t = T-1 (last step) {g[-1]:.2e}, t = T/2 {g[T // 2]:.2e}, "
              f"t = 0 {g[0]:.2e}  (first/last = {g[0] / g[-1]:.1e})")
        print(f"  pre-clip gradient norm: median {np.median(n):.3f}, max {n.max():.3f}, "
              f"clipped at {(n > 1.0).mean():.0%} of the steps")
        curve = smooth(r["losses"], 50)
        print(f"  training loss (avg of 50): start {curve[0]:.4f}, end {curve[-1]:.4f}; "
              f"test mse {r['test_mse']:.4f}  (baseline {BASELINE:.3f})")
    print("\ntest mse: " + ", ".join(f"{k} {r['test_mse']:.4f}" for k, r in results.items()))
    results["plot"] = plot(results, T, out_dir) if out_dir is not None else None
    return results


def plot(results, T, out_dir):
    plt = pyplot()
    if plt is None:
        return None
    colors = {"RNN": "tab:red", "LSTM": "tab:blue", "GRU": "tab:green"}
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, color in colors.items():
        r = results[kind]
        ax_loss.plot(smooth(r["losses"], 50), color=color, label=kind)
        ax_grad.plot(np.arange(T), r["input_grad"], color=color, label=kind)
    ax_loss.axhline(BASELINE, color="k", ls="--", lw=1, label="predict the mean")
    ax_loss.set(yscale="log", xlabel="training step", ylabel="mse (running mean of 50)",
                title=f"adding problem, T = {T} (clip_grad_norm 1.0)")
    ax_grad.set(yscale="log", xlabel="input step t", ylabel="||dL/dx_t||",
                title="at initialisation: the gradient reaching step t")
    ax_loss.legend()
    ax_grad.legend()
    return save_figure(plt, fig, out_dir, "adding_problem.png")


if __name__ == "__main__":
    args = parse_args(__doc__, steps=1200)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
