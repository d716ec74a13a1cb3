"""What every example shares and none is about: its command line, the plain training loop
and where plots go.

The models, the data and the loss of one batch stay in the examples themselves, so each one
reads top to bottom on its own; `fit` is only the loop around them (zero_grad, backward,
clip, step) that every example would otherwise repeat.
"""

import argparse
import os
import sys

import numpy as np

import tinygrad_rnn as tg
from tinygrad_rnn.optim import Adam, clip_grad_norm

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parse_args(doc, steps):
    """``--steps``, ``--seed``, ``--out``, ``--quick``, ``--eager``; the example's docstring as help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for plots (default examples/out)")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke test")
    parser.add_argument("--eager", action="store_true",
                        help="step the cells op by op instead of the compiled path (tg.compile)")
    return parser.parse_args()


def compiled(cell, eager=False):
    """``tg.compile(cell)``: whole sequences in generated loops, the same numbers and Parameters;
    with ``eager`` the cell itself, stepped op by op (the readable ground truth)."""
    return cell if eager else tg.compile(cell)


def fit(params, batch_loss, steps, lr, label="loss", show_grad_norm=False, log=True):
    """Adam at ``lr`` on ``params`` for ``steps`` steps, each on the scalar loss Tensor that
    ``batch_loss()`` returns for a fresh batch, the gradient norm clipped to 1.0.

    Eight times along the way it prints the mean ``label`` over the steps since the last
    print (and, with ``show_grad_norm``, that step's gradient norm before clipping); with
    ``log=False`` it prints nothing. Returns (losses, gradient norms before clipping), one of
    each per step.
    """
    opt = Adam(params, lr=lr)
    losses, grad_norms = [], []
    every = max(1, steps // 8)
    for step in range(1, steps + 1):
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        grad_norms.append(clip_grad_norm(params, 1.0))
        opt.step()
        losses.append(loss.item())
        if log and step % every == 0:
            line = f"step {step:5d}  {label} {np.mean(losses[-every:]):.4f}"
            if show_grad_norm:
                line += f"  grad norm {grad_norms[-1]:.3f}"
            print(line)
    return losses, grad_norms


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (with a message) without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def save_figure(plt, fig, out_dir, name):
    """Write ``fig`` to ``out_dir/name`` (creating the directory) and return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path}")
    return path
