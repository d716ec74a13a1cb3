"""The eager engine's speed devices: one module each, each with its measured reason.

The learner's path (autograd.py, tensor.py, ops.py, rnn/unroll.py) is the algorithm; what
makes it fast lives here, behind one name per device, so that each can be read, tested and
switched off alone (numbers: benchmarks/README.md):

- `fast_apply`     ``apply_unary`` / ``apply_binary``: `Function.apply` without argument packing
- `weight_grads`   a weight's per-step gradients summed as one matrix product (`OuterProductSum`)
- `gc_pause`       ``gc_paused``: the cyclic GC kept off the tape while it grows and shrinks
- `malloc`         ``tune_malloc``: glibc kept from returning the tape's memory after every backward
- `transposed`     ``reuse_transposed_weights``: one contiguous ``W.T`` per weight per sequence

`fast_sequence` below is the one call an Unroll makes around its loop. This file imports only
the devices that do not import autograd (autograd imports from this package).
"""

import contextlib

from .gc_pause import gc_paused
from .malloc import tune_malloc
from .transposed import reuse_transposed_weights


@contextlib.contextmanager
def fast_sequence():
    """Unroll's per-sequence setup: malloc tuned (once per process), the GC paused with the new
    tape handed to its oldest generation, and each weight's transpose made contiguous once."""
    tune_malloc()
    with gc_paused(keep_new_objects=True), reuse_transposed_weights():
        yield
