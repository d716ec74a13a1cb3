"""A custom cell in ten lines: the minimal gated unit (MGU), property-tested, then trained.

A cell is its forward equations and nothing else: no backward, no unroll loop. The MGU
(Zhou et al., 2016) is a GRU with one gate doing the work of two:

    f_t  = sigmoid(W_f [x_t, h_{t-1}] + b_f)
    h~_t = tanh(W_h [x_t, f_t * h_{t-1}] + b_h)
    h_t  = (1 - f_t) * h_{t-1} + f_t * h~_t

``tg.testing.check_cell`` then property-tests it (BPTT gradients against finite
differences, Unroll against a hand loop, padding, truncated BPTT), and it trains on a
many-to-many task: at every step, output the symbol seen 6 steps earlier (an echo of one
of 8 symbols), which needs the state to hold the last 6 symbols at once.

    python examples/06_custom_cell_mgu.py    # ~15 s
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: BLAS threads cost more than they give

import time

import numpy as np

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.nn import functional as F

from _common import compiled, fit, parse_args  # this folder's shared helpers

DTYPE = np.float32


class MGUCell(tg.Cell):
    """Minimal gated unit: x (B, I), h (B, H) -> output h_t, state h_t."""

    def __init__(self, input_size, hidden_size, dtype=None):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size, dtype=dtype)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size, dtype=dtype)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size, dtype=self.W_f.weight.dtype)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


def property_test(max_examples):
    """Run check_cell on small float64 MGUs; it raises AssertionError on any failure."""
    try:
        from tinygrad_rnn.testing import check_cell
    except ImportError as exc:      # check_cell needs hypothesis, a test-time dependency
        print(f"skipping check_cell ({exc}); pip install hypothesis to run it")
        return False
    start = time.perf_counter()
    check_cell(lambda: MGUCell(3, 4), max_examples=max_examples, gradcheck_examples=2)
    print(f"check_cell(MGUCell): all properties hold ({max_examples} examples each, "
          f"{time.perf_counter() - start:.1f} s)")
    return True


def echo_batch(rng, batch_size, T, symbols, delay):
    """xs (T, B, symbols) one-hot; targets (T, B): the symbol of step t - delay; a mask
    (T, B) that leaves out the first ``delay`` steps, which have nothing to echo."""
    seq = rng.integers(0, symbols, (T, batch_size))
    targets = np.zeros_like(seq)
    targets[delay:] = seq[:-delay]
    mask = np.zeros((T, batch_size), bool)
    mask[delay:] = True
    return tg.Tensor(np.eye(symbols, dtype=DTYPE)[seq]), targets, mask


def main(steps=1000, seed=0, quick=False, out_dir=None, check_examples=10, eager=False):
    """Property-test and train the MGU; return {"accuracy", "checked", "loss_first", ...}."""
    symbols, delay, T, hidden, batch = (4, 2, 8, 16, 16) if quick else (8, 6, 24, 48, 64)
    if quick:
        check_examples = min(check_examples, 3)
    checked = property_test(check_examples) if check_examples else False

    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rnn = tg.Unroll(compiled(MGUCell(symbols, hidden, dtype=DTYPE), eager))
    readout = nn.Linear(hidden, symbols, dtype=DTYPE)
    gru_params = tg.GRUCell(symbols, hidden).num_parameters()
    print(f"MGU with {rnn.num_parameters()} parameters (a GRU of the same size has {gru_params})")

    def batch_loss():
        xs, targets, mask = echo_batch(rng, batch, T, symbols, delay)
        ys, _ = rnn(xs)                                       # many-to-many: every step's output
        return F.cross_entropy(readout(ys), targets, mask=mask)

    start = time.perf_counter()
    losses, _ = fit(rnn.parameters() + readout.parameters(), batch_loss, steps, lr=1e-2)
    print(f"trained in {time.perf_counter() - start:.1f} s")

    with tg.no_grad():
        xs, targets, mask = echo_batch(rng, 1000, T, symbols, delay)
        ys, _ = rnn(xs)
        predicted = readout(ys).data.argmax(-1)
    acc = float((predicted == targets)[mask].mean())
    seq_acc = float(((predicted == targets) | ~mask).all(axis=0).mean())
    print(f"echo with delay {delay} over {symbols} symbols: per-step accuracy {acc:.1%} "
          f"(chance {1 / symbols:.1%}), whole sequences right {seq_acc:.1%}")
    return {"accuracy": acc, "sequence_accuracy": seq_acc, "chance": 1 / symbols, "checked": checked,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


if __name__ == "__main__":
    args = parse_args(__doc__, steps=1000)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
