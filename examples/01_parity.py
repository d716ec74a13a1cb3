"""Many-to-one: is the number of ones in a bit string odd or even?

The seed's many-to-one RNN: a whole sequence goes in, one answer comes out. Two stacked
GRU layers (``tg.Stack``: the seed's multi-layer RNN) read bit strings of 1 to 20 bits,
one bit per step, and the top layer's final state (for each string, the state at that
string's own last bit) is classified by a Linear readout. Parity cannot be read off any
fixed window of the input: the state must carry one bit of memory, flipped by every 1,
through the whole string. After training we also try strings longer than any seen in
training.

    python examples/01_parity.py            # ~10 s
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


def make_batch(rng, batch_size, min_len, max_len):
    """One-hot bit strings padded to max_len: xs (T, B, 2), lengths (B,), parity labels (B,)."""
    lengths = rng.integers(min_len, max_len + 1, batch_size)
    bits = rng.integers(0, 2, (max_len, batch_size))
    bits[np.arange(max_len)[:, None] >= lengths[None, :]] = 0       # padding
    xs = np.eye(2, dtype=DTYPE)[bits]
    return tg.Tensor(xs), lengths, bits.sum(axis=0) % 2


class ParityClassifier(nn.Module):
    def __init__(self, hidden_size, layers=2, eager=False):
        # A multi-layer RNN: layer k's output is layer k+1's input at every step.
        cells = [tg.GRUCell(2 if k == 0 else hidden_size, hidden_size, dtype=DTYPE) for k in range(layers)]
        self.rnn = tg.Unroll(compiled(tg.Stack(cells), eager))
        self.readout = nn.Linear(hidden_size, 2, dtype=DTYPE)

    def forward(self, xs, lengths):
        # Many-to-one: keep only the final state (a tuple, one per layer) and classify the
        # top layer's. With `lengths` it is each string's state at its own last bit (ys[-1]
        # would be the zeros Unroll emits past the end of a short string).
        _, final_states = self.rnn(xs, lengths=lengths)
        return self.readout(final_states[-1])                         # (B, 2) logits


def accuracy(model, rng, n, min_len, max_len):
    with tg.no_grad():
        xs, lengths, labels = make_batch(rng, n, min_len, max_len)
        return float((model(xs, lengths).data.argmax(-1) == labels).mean())


def main(steps=400, seed=0, quick=False, out_dir=None, eager=False):
    """Train, then return {"accuracy", "accuracy_longer", "loss_first", "loss_last", ...}."""
    hidden, batch, max_len = (8, 16, 6) if quick else (32, 64, 20)
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ParityClassifier(hidden, eager=eager)

    def batch_loss():
        xs, lengths, labels = make_batch(rng, batch, 1, max_len)
        return F.cross_entropy(model(xs, lengths), labels)

    start = time.perf_counter()
    losses, _ = fit(model.parameters(), batch_loss, steps, lr=1e-2)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    acc = accuracy(model, rng, 2000, 1, max_len)
    acc_longer = accuracy(model, rng, 2000, max_len + 1, 2 * max_len)
    print(f"test accuracy, strings of 1..{max_len} bits:        {acc:.1%}  (chance 50%)")
    print(f"test accuracy, longer strings ({max_len + 1}..{2 * max_len} bits): {acc_longer:.1%}  "
          "(never seen in training)")
    return {"accuracy": acc, "accuracy_longer": acc_longer, "chance": 0.5,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


if __name__ == "__main__":
    args = parse_args(__doc__, steps=400)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
