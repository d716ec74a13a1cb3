"""What every example shares and none is about: its command line and where plots go.

The models, data and training loops stay in the examples themselves, so each one reads
top to bottom on its own.
"""

import argparse
import os
import sys

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parse_args(doc, steps):
    """``--steps``, ``--seed``, ``--out`` and ``--quick``, with the example's docstring as help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for plots (default examples/out)")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke test")
    return parser.parse_args()


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
