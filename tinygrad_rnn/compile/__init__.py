"""The compiled path: ``tg.compile(cell)`` traces a cell's step once and runs whole sequences
in generated Numba loops, inserted into the tape as one node (docs/compile.md).

The eager engine never imports this package; `Unroll` finds the compiled loops through the
``forward_sequence`` hook of the cell that ``compile`` returns.
"""

import sys
import types
import warnings

import numpy as np

from ..grad_mode import no_grad
from ..nn.module import Module
from ..rnn.cell import Cell, tree_leaves
from ..rnn.combinators import Bidirectional, Stack
from ..rnn.unroll import Unroll
from ..tensor import Tensor
from . import graph as _graph
from .graph import CompileError
from .rules import RULES, rule_for

__all__ = ["compile", "CompiledCell", "CompiledStack", "CompileError", "CompileWarning",
           "RULES", "rule_for"]


_MISSING = object()


def _structure_key(state):
    """The state's nesting, shapes and dtypes as a hashable key (cheap: built per call)."""
    if isinstance(state, Tensor):
        return state.shape, state.data.dtype
    if isinstance(state, (tuple, list)):
        return (type(state).__name__,) + tuple(_structure_key(s) for s in state)
    return type(state).__name__


class CompileWarning(UserWarning):
    """A compiled cell runs eager (once per cause): the message names the op and the line."""


class CompiledCell(Cell):
    """A cell whose sequences run in generated loops; everything else is the original's.

    It holds the original cell (``.eager``) and shares its Parameters (their names too, so a
    state dict moves between the two); one-step calls, ``init_state`` and attributes go to it.
    ``forward_sequence`` traces the step once per signature (batch size, input size, dtype,
    state shapes, training mode) and caches the generated loops.
    """

    def __init__(self, cell, fallback=True):
        self.cell = cell
        self.fallback = fallback
        self.input_size = getattr(cell, "input_size", None)
        if hasattr(cell, "hidden_size"):
            self.hidden_size = cell.hidden_size
        self._programs = {}
        self._training_modes = None
        self._warned = set()

    @property
    def eager(self):
        """The original cell (eager; differentiable to any order)."""
        return self.cell

    def __getattr__(self, name):
        cell = self.__dict__.get("cell")
        if cell is None:
            raise AttributeError(name)
        return getattr(cell, name)

    def named_parameters(self, prefix=""):
        return self.cell.named_parameters(prefix)

    def init_state(self, batch_size):
        return self.cell.init_state(batch_size)

    def forward(self, x, state):
        return self.cell(x, state)

    def extra_repr(self):
        return f"{type(self.cell).__name__}, fallback={self.fallback}"

    # -- the compiled sequence --------------------------------------------------------------
    def forward_sequence(self, xs, state, lengths=None):
        program = self.program(xs.shape[1], xs.shape[2], xs.dtype, state)
        if program is None:
            return Unroll(self.cell)(xs, state, lengths)
        return program.run(xs, state, lengths)

    def program(self, batch, input_size, dtype, state):
        """The generated loops for this signature (None: this cell runs eager)."""
        if self._training_modes is None:     # the modules are walked once; modes read per call
            modules = self.cell.modules()
            self._training_modes = lambda: tuple(m.training for m in modules)
        key = (batch, input_size, np.dtype(dtype), _structure_key(state), self._training_modes())
        program = self._programs.get(key, _MISSING)
        if program is not _MISSING:
            return program
        from .runtime import Program
        try:
            graph = _graph.build(self.cell, batch, input_size, dtype, state)
            program = Program(graph, f"{type(self.cell).__name__}, input size {input_size}, "
                                     f"{np.dtype(dtype).name}")
        except CompileError as exc:
            if not self.fallback:
                raise CompileError(f"tg.compile({type(self.cell).__name__}): {exc}") from None
            self._warn(exc)
            program = None
        self._programs[key] = program
        return program

    def _warn(self, exc):
        message = f"tg.compile({type(self.cell).__name__}): {exc}; this cell runs eager"
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, CompileWarning, stacklevel=4)

    def source(self, batch=2, dtype=None, input_size=None):
        """The generated Numba source for a batch size (what docs/compile.md shows)."""
        with no_grad():
            state = self.cell.init_state(batch)
        leaf = tree_leaves(state)[0]
        size = input_size if input_size is not None else self.input_size
        program = self.program(batch, size, dtype or leaf.dtype, state)
        if program is None:
            raise CompileError(f"tg.compile({type(self.cell).__name__}): not compilable "
                               "(see the warning)")
        return program.source


class CompiledStack(Stack):
    """A Stack of compiled layers, run layer by layer over the whole sequence (the same
    recurrence as stepping the stack: layer k+1 reads only layer k's outputs), with the
    dropout between layers applied in training mode."""

    def __init__(self, stack, fallback=True):
        super().__init__([compile(c, fallback=fallback) for c in stack.cells])
        self.dropout = stack.dropout

    def forward_sequence(self, xs, state, lengths=None):
        finals = []
        for k, (cell, s) in enumerate(zip(self.cells, state)):
            if k > 0:
                xs = self.dropout(xs)
            xs, s = Unroll(cell)(xs, s, lengths)
            finals.append(s)
        return xs, tuple(finals)


def compile(module, fallback=True):
    """The compiled version of a cell (or of a Stack, Unroll or Bidirectional of cells).

    ``tg.Unroll(tg.compile(cell))`` runs every sequence as generated loops (the first call
    per signature traces and compiles; kernels are cached on disk). The result shares the
    original's Parameters. A cell that uses an op the compiler cannot put in its loop runs
    eager with a one-time `CompileWarning` naming the op and the line; ``fallback=False``
    raises `CompileError` instead (at the first sequence). A cell that defines its own
    ``forward_sequence`` (a linear scan, as `MinGRUCell`) is returned unchanged.
    """
    if isinstance(module, (CompiledCell, CompiledStack)):
        return module
    if isinstance(module, Stack):
        return CompiledStack(module, fallback)
    if isinstance(module, Unroll):
        return Unroll(compile(module.cell, fallback), batch_first=module.batch_first)
    if isinstance(module, Bidirectional):
        return Bidirectional(compile(module.forward_rnn.cell, fallback),
                             compile(module.backward_rnn.cell, fallback),
                             batch_first=module.batch_first)
    if isinstance(module, Cell):
        if getattr(module, "forward_sequence", None) is not None:
            return module       # it runs its sequences itself already (a scan: MinGRUCell)
        return CompiledCell(module, fallback)
    kind = type(module).__name__ if isinstance(module, Module) else repr(module)
    raise TypeError(f"tg.compile: expected a Cell (or a Stack, Unroll or Bidirectional), "
                    f"got {kind}")


class _CallableModule(types.ModuleType):
    """Importing this package sets ``tinygrad_rnn.compile`` to the package itself (Python
    binds a submodule to its parent's attribute), so ``tg.compile(cell)`` calls the package:
    it forwards to `compile`, and ``tg.compile.CompiledCell`` still works."""

    def __call__(self, module, fallback=True):
        return compile(module, fallback)


sys.modules[__name__].__class__ = _CallableModule
