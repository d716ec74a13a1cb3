"""In-place changes and version counters: a saved tensor changed in place is an error, never a
silent wrong gradient.

Why a module of its own: it is a safety net around the tape, not part of the algorithm. A node
saves arrays its backward will read (``linear`` keeps ``x`` and ``W``); an optimizer step, an
init function, ``load_state_dict`` or ``copy_`` between that forward and the backward would
otherwise mix new weights with old activations. Each in-place change calls ``_bump_version``,
which stamps the tensor with a tick of the clock that numbers the nodes
(``autograd._sequence``) and moves ``autograd.last_in_place_change`` to it. The walk compares
that one number with each node's (a node created later saw only current data) and calls
`check_versions` only when something changed since the node's forward: no per-op cost.

`InPlaceMethods` is a base class of `Tensor`: its in-place methods (PyTorch's names) and its
``version``.
"""

import numpy as np

from . import autograd
from .autograd import ShapeError, _named
from .grad_mode import is_grad_enabled


class InPlaceMethods:
    """Tensor's in-place methods: each changes ``.data`` and bumps the version."""

    __slots__ = ()

    @property
    def version(self):
        """How many times ``.data`` was changed in place (optimizer steps, init functions,
        ``load_state_dict``, ``copy_``...). A backward through an op that saved this tensor
        at an older version raises instead of computing a wrong gradient."""
        return 0 if self._modified is None else len(self._modified)

    def _bump_version(self):
        """Record an in-place change of ``.data`` (call it after changing the array)."""
        tick = next(autograd._sequence)     # the nodes' clock: a node older than it saw the old data
        autograd.last_in_place_change = tick
        if self._modified is None:
            self._modified = [tick]
        else:
            self._modified.append(tick)

    def _check_in_place(self, op):
        if self.requires_grad and is_grad_enabled():
            raise RuntimeError(f"{op}: an in-place change of a tensor that requires grad (shape "
                               f"{self.shape}) is not recorded on the tape; do it under "
                               "tg.no_grad(), as an optimizer step does")

    def copy_(self, src):
        """Overwrite the values in place with ``src`` (broadcast to this shape); bumps the version."""
        self._check_in_place("copy_")
        src = src.data if isinstance(src, autograd.Tensor) else np.asarray(src)
        try:
            np.copyto(self.data, np.broadcast_to(src, self.shape), casting="same_kind")
        except (ValueError, TypeError) as exc:
            raise ShapeError(f"copy_: cannot copy shape {np.shape(src)} ({src.dtype}) into a tensor "
                             f"of shape {self.shape} ({self.dtype}): {exc}") from None
        self._bump_version()
        return self

    def zero_(self):
        """Set every value to zero in place; bumps the version."""
        self._check_in_place("zero_")
        self.data[...] = 0
        self._bump_version()
        return self

    def add_(self, other, alpha=1.0):
        """``self += alpha * other`` in place; bumps the version."""
        self._check_in_place("add_")
        return self.copy_(self.data + alpha * self._operand(other, "add_").data)

    def mul_(self, other):
        """``self *= other`` in place; bumps the version."""
        self._check_in_place("mul_")
        return self.copy_(self.data * self._operand(other, "mul_").data)


def check_versions(ctx, outs):
    """An error if ``ctx``'s backward reads an input or output changed in place since ``ctx``'s
    forward (stamps later than the node's number). The walk calls it only when some tensor
    was changed in place after ``ctx`` was made."""
    names = ctx.saved_inputs if ctx.saved_inputs is not None else ["?"] * len(ctx.parents)
    for i, (name, p) in enumerate(zip(names, ctx.parents)):
        if name is not None and p._modified is not None and p._modified[-1] > ctx.seq:
            saved = sum(1 for tick in p._modified if tick < ctx.seq)
            raise _modified_error(ctx, p, "input", i, saved)
    out = outs[0]
    if ctx.saved_output is not None and out is not None and out._modified is not None:
        raise _modified_error(ctx, out, "output", 0, 0)     # an output is made at version 0


def _modified_error(ctx, t, role, index, saved_version):
    return RuntimeError(
        f"backward: one of the tensors needed for gradient computation has been modified in "
        f"place: {role} {index} of '{ctx.op_name()}' (shape {t.shape}{_named(t)}) is at "
        f"version {len(t._modified)}; expected version {saved_version}, the version its "
        "forward saved. Something changed it between the forward and this backward (an "
        "optimizer step, an init function, load_state_dict, an in-place method such as "
        "copy_). Run the backward before changing it (optimizer.step() after backward), or "
        "run the forward again afterwards.")
