"""The pieces of truncated-BPTT training on text, each usable and testable alone: the
batches (`Streams`), one optimizer step (`train_step`) and the validation (`evaluate`).

``tinygrad-rnn train`` (`tinygrad_rnn.cli.train`) strings them together with checkpoints
(`tinygrad_rnn.training.checkpoint`) and progress reports.
"""

import math

import numpy as np

from .. import optim
from ..grad_mode import no_grad
from ..nn import functional as F
from ..rnn.cell import detach_state


class TrainError(ValueError):
    """A problem with the options or the checkpoint, reported without a traceback."""


class Streams:
    """``batch`` contiguous streams through ``ids``; window ``w`` of every stream is
    ``ids[w*T : w*T + T]`` -> targets shifted by one. Step s reads window ``s mod windows``,
    so the data position is a function of the step (resume needs nothing else)."""

    def __init__(self, ids, batch, seq_len, what="training"):
        length = len(ids) // batch
        if length < seq_len + 1:
            raise TrainError(f"the {what} text has {len(ids):,} characters, too short for "
                             f"--batch {batch} x --seq-len {seq_len} (needs at least "
                             f"{batch * (seq_len + 1):,}); use a smaller --batch or --seq-len")
        self.data = np.ascontiguousarray(ids[:length * batch].reshape(batch, length).T)  # (L, B)
        self.seq_len = seq_len
        self.windows = (length - 1) // seq_len

    def window(self, step):
        """(inputs (T, B), targets (T, B), whether this window starts the streams anew)."""
        w = step % self.windows
        s = w * self.seq_len
        return self.data[s:s + self.seq_len], self.data[s + 1:s + self.seq_len + 1], w == 0


def train_step(model, optimizer, inputs, targets, state, clip=None):
    """One step of truncated BPTT: forward over the window from ``state``, mean cross-entropy,
    backward, optional gradient-norm clipping, optimizer step.

    Returns (loss in nats per character, the final state cut from the graph for the next
    window). A non-finite loss raises FloatingPointError before any weight changes.
    """
    logits, new_state = model(inputs, state)
    loss = F.cross_entropy(logits, targets)
    value = float(loss.data)
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss is {value}")
    optimizer.zero_grad()
    loss.backward()
    if clip:
        optim.clip_grad_norm(optimizer.params, clip)
    optimizer.step()
    return value, detach_state(new_state)


def evaluate(model, ids, seq_len, batch=64, stop=None):
    """Bits per character of ``model`` on ``ids`` (every position but the first of each of
    ``batch`` contiguous streams), the state carried across windows. Returns (bits, targets)
    or None if ``stop()`` became true on the way."""
    nb = max(1, min(batch, (len(ids) - 1) // max(seq_len, 1)))
    length = len(ids) // nb
    data = ids[:length * nb].reshape(nb, length).T
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            state = None
            for s in range(0, length - 1, seq_len):
                if stop is not None and stop():
                    return None
                x, y = data[s:s + seq_len], data[s + 1:s + seq_len + 1]
                x = x[:len(y)]
                logits, state = model(x, state)
                total += float(F.cross_entropy(logits, y, reduction="sum").data)
                count += y.size
    finally:
        model.train(was_training)
    return total / count / math.log(2), data[1:].ravel()
