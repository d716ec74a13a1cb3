"""One-to-many, autoregressive: fit noisy sine waves, then forecast them closed-loop.

The seed's one-to-many for time series: the input at each step is the lagged value of the
series itself (autoregression). An LSTM learns next-step prediction x_{t-1} -> x_t on noisy
sine waves of random frequency, amplitude and phase (teacher forcing: the input is always
the observed value). To forecast, it first reads an observed stretch of a new series (a
many-to-one warm-up that leaves the wave's frequency and phase in the state), then
``tg.generate`` runs it closed-loop: each prediction is fed back as the next input, with no
observation at all. The plot shows truth vs forecast.

    python examples/02_sine_forecast.py      # ~30 s; writes examples/out/sine_forecast.png
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
NOISE = 0.1


def sine_waves(rng, batch_size, length):
    """(clean, noisy), each (length, B): A sin(2π f t + φ), periods of 15 to 40 steps."""
    freq = rng.uniform(1 / 40, 1 / 15, (1, batch_size))
    phase = rng.uniform(0, 2 * np.pi, (1, batch_size))
    amp = rng.uniform(0.5, 1.5, (1, batch_size))
    clean = amp * np.sin(2 * np.pi * freq * np.arange(length)[:, None] + phase)
    noisy = clean + NOISE * rng.standard_normal(clean.shape)
    return clean.astype(DTYPE), noisy.astype(DTYPE)


def forecast(cell, readout, observed, horizon):
    """Warm up on ``observed`` (T_obs, B), then predict ``horizon`` steps closed-loop."""
    with tg.no_grad():
        lagged = tg.Tensor(observed[:-1, :, None])                     # x_0 .. x_{T-2}
        _, state = tg.Unroll(cell)(lagged)                              # many-to-one warm-up
        x_last = tg.Tensor(observed[-1, :, None])                      # the last observation
        # One-to-many: input x_last, then each prediction readout(h_t) becomes the next input.
        preds, _ = tg.generate(cell, x_last, horizon, state=state, readout=readout)
    return preds.data[:, :, 0]                                          # (horizon, B)


def main(steps=1200, seed=0, quick=False, out_dir=None, eager=False):
    """Train, forecast, plot; return {"forecast_mse", "baseline_zero_mse", ...}."""
    hidden, batch, length = (8, 8, 30) if quick else (32, 32, 100)
    warmup, horizon = (20, 20) if quick else (60, 60)
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cell = tg.LSTMCell(1, hidden, dtype=DTYPE)
    readout = nn.Linear(hidden, 1, dtype=DTYPE)                        # y_t = W_hy h_t

    def batch_loss():
        _, noisy = sine_waves(rng, batch, length)
        xs = tg.Tensor(noisy[:-1, :, None])                             # lagged values (T-1, B, 1)
        ys, _ = tg.Unroll(compiled(cell, eager))(xs)                     # many-to-many
        return F.mse(readout(ys), tg.Tensor(noisy[1:, :, None]))        # predict the next value

    start = time.perf_counter()
    losses, _ = fit(cell.parameters() + readout.parameters(), batch_loss, steps, lr=3e-3,
                    label="next-step mse", show_grad_norm=True)
    print(f"trained in {time.perf_counter() - start:.1f} s "
          f"(the noise alone makes a next-step mse of {NOISE ** 2:.3f})")

    clean, noisy = sine_waves(rng, 256, warmup + horizon)
    preds = forecast(cell, readout, noisy[:warmup], horizon)
    truth = clean[warmup:]
    err = {"forecast_mse": float(((preds - truth) ** 2).mean()),
           # Baselines: forecast 0 (the mean), or repeat the last observation.
           "baseline_zero_mse": float((truth ** 2).mean()),
           "baseline_last_value_mse": float(((truth - noisy[warmup - 1]) ** 2).mean())}
    print(f"closed-loop forecast, {horizon} steps, mse against the clean wave (256 new series):")
    for h in sorted({horizon // 6, horizon // 3, horizon}):
        print(f"  first {h:3d} steps: {((preds[:h] - truth[:h]) ** 2).mean():.4f}")
    print(f"  baselines: predict 0 -> {err['baseline_zero_mse']:.4f}, repeat the last value -> "
          f"{err['baseline_last_value_mse']:.4f}")

    result = dict(err, loss_first=float(np.mean(losses[:10])), loss_last=float(np.mean(losses[-10:])),
                  forecast_shape=preds.shape, plot=None)
    if out_dir is not None:
        result["plot"] = plot(noisy, clean, preds, warmup, out_dir)
    return result


def plot(noisy, clean, preds, warmup, out_dir):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    t_obs, t_fc = np.arange(warmup), np.arange(warmup, warmup + len(preds))
    for b, ax in enumerate(axes.ravel()):
        ax.plot(t_obs, noisy[:warmup, b], ".", color="0.55", ms=3, label="observed (noisy)")
        ax.plot(np.arange(len(clean)), clean[:, b], "k--", lw=1, label="truth (clean)")
        ax.plot(t_fc, preds[:, b], color="tab:red", lw=2, label="closed-loop forecast")
        ax.axvline(warmup - 0.5, color="0.8", lw=1)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.suptitle("LSTM: warm-up on observations, then tg.generate feeds its own predictions back")
    for ax in axes[1]:
        ax.set_xlabel("time step")
    return save_figure(plt, fig, out_dir, "sine_forecast.png")


if __name__ == "__main__":
    args = parse_args(__doc__, steps=1200)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
