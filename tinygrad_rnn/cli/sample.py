"""``tinygrad-rnn sample``: continue a prime with a model trained by ``tinygrad-rnn train``."""

import os
import sys

import numpy as np

from ..serialization import CheckpointError
from ..training.checkpoint import DEFAULT_CHECKPOINT, load_run_checkpoint, model_from_checkpoint
from ..training.model import CellSpecError, sample
from ._threads import blas_threads


def add_arguments(p):
    p.add_argument("--checkpoint", metavar="PATH", default=DEFAULT_CHECKPOINT,
                   help="a checkpoint written by tinygrad-rnn train (default: %(default)s)")
    p.add_argument("--prime", default="def ",
                   help="text the model reads before generating (default: %(default)r)")
    p.add_argument("--length", type=int, default=300, metavar="N",
                   help="characters to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="softmax temperature: lower is more conservative, 0 always takes the most "
                        "likely character (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the sampling (default: different every run)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS threads, 0 leaves the BLAS default (default: %(default)s)")


def run(args):
    if args.length < 0:
        print(f"tinygrad-rnn sample: error: --length must be >= 0, got {args.length}", file=sys.stderr)
        return 2
    if not args.temperature >= 0:
        print(f"tinygrad-rnn sample: error: --temperature must be >= 0, got {args.temperature}",
              file=sys.stderr)
        return 2
    try:
        ckpt = load_run_checkpoint(args.checkpoint)
        model, vocab = model_from_checkpoint(ckpt, args.checkpoint)
    except FileNotFoundError:
        # Earlier versions wrote runs/char_lm.npz: point at it rather than saying nothing.
        old = os.path.splitext(args.checkpoint)[0] + ".npz"
        hint = f"; '{old}' is an older checkpoint: pass --checkpoint {old}" if os.path.isfile(old) else ""
        print(f"tinygrad-rnn sample: error: no checkpoint at '{args.checkpoint}' (train one with "
              f"tinygrad-rnn train, or pass --checkpoint PATH){hint}", file=sys.stderr)
        return 2
    except (CheckpointError, CellSpecError) as exc:
        print(f"tinygrad-rnn sample: error: {exc}", file=sys.stderr)
        return 2
    unknown = sorted({c for c in args.prime if c not in vocab.chars})
    if unknown:
        print(f"note: the prime's characters {''.join(unknown)!r} are not in the model's vocabulary "
              "and are read as unknown", file=sys.stderr)
    with blas_threads(args.threads):
        text = sample(model, vocab, args.prime, args.length, args.temperature,
                      np.random.default_rng(args.seed))
    sys.stdout.write(args.prime + text + "\n")
    return 0
