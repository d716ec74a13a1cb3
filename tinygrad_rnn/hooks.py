"""Gradient hooks and retained gradients: seeing (and changing) the gradient of an
intermediate tensor, as in PyTorch (``register_hook``, ``retain_grad``).

Why a module of its own: the walk drops an intermediate gradient once it is consumed; these
are the ways to look at one, not part of how it is computed. The walk asks for them only
where a tensor has hooks or ``retain_grad()`` set (one truth test per tensor): once a
tensor's gradient is complete (the sum over all its uses) it calls `_run_hooks`, and a
non-None return replaces the gradient for everything further back. `gradient_flow` and the
tests of intermediate gradients are built on them.

`HookMethods` is a base class of `Tensor`.
"""

import numpy as np

from . import autograd
from .autograd import ShapeError, _output


class HookMethods:
    """Tensor's hooks: ``register_hook(fn)``, ``retain_grad()``."""

    __slots__ = ()

    def retain_grad(self):
        """Keep ``.grad`` on a non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: this tensor does not require grad")
        self._retain = True
        return self

    def register_hook(self, fn):
        """Call ``fn(grad)`` when this tensor's gradient is computed; a non-None return
        replaces the gradient. Returns a handle with ``.remove()``."""
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does "
                               "not require grad")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(fn)
        return _HookHandle(self._hooks, fn)

    def _run_hooks(self, g):
        """``g``, this tensor's complete gradient, through its hooks in registration order (a
        leaf's run once, on its summed gradient, before it is added to ``.grad``)."""
        as_tensor = type(g) is autograd.Tensor      # under create_graph hooks receive Tensors
        for hook in self._hooks:
            replaced = hook(g)
            if replaced is not None:
                g = self._hook_grad(replaced, as_tensor)
        return g

    def _hook_grad(self, g, as_tensor):
        """A hook's gradient of this tensor's shape and dtype: an array, or under create_graph
        a Tensor."""
        if isinstance(g, autograd.Tensor):
            g = g if as_tensor else g.data
        else:
            g = np.asarray(g)
        if g.shape != self.shape:
            raise ShapeError(f"hook: returned a gradient of shape {g.shape} for a tensor of shape "
                             f"{self.shape}; a hook must return None or an array of the tensor's "
                             "shape")
        if as_tensor:
            g = g if isinstance(g, autograd.Tensor) else _output(g, None, False)
            return g if g.dtype == self.dtype else g.astype(self.dtype)
        return g.astype(self.dtype, copy=False)


class _HookHandle:
    def __init__(self, hooks, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self):
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)
