"""The cell protocol, and helpers for states that are Tensors or nested tuples of Tensors."""


from ..nn.module import Module
from ..tensor import Tensor


class Cell(Module):
    """One step of a recurrence: ``forward(x, state) -> (output, new_state)``.

    ``x`` is (B, input_size); ``state`` is a Tensor or a nested tuple of Tensors, each with
    the batch on axis 0 (LSTM: ``(h, c)``); ``init_state(batch_size)`` makes the state the
    sequence starts from. A cell writes its equations with Tensor ops and never a backward:
    ``Unroll`` applies it at every step, and BPTT comes from the tape.
    """

    input_size = None

    def init_state(self, batch_size):
        raise NotImplementedError(f"{type(self).__name__}.init_state is abstract: a Cell defines "
                                  "init_state(batch_size)")

    def forward(self, x, state):
        raise NotImplementedError(f"{type(self).__name__}.forward is abstract: a Cell defines "
                                  "forward(x, state) -> (output, new_state)")


def tree_map(fn, *trees):
    """Apply ``fn`` to the Tensors at matching positions of nested tuples/lists."""
    first = trees[0]
    if isinstance(first, (tuple, list)):
        return type(first)(tree_map(fn, *parts) for parts in zip(*trees))
    return fn(*trees)


def tree_leaves(tree):
    if isinstance(tree, (tuple, list)):
        return [leaf for part in tree for leaf in tree_leaves(part)]
    return [tree]


def detach_state(state):
    """The same state cut from the graph behind it: the window boundary of truncated BPTT."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def describe_structure(tree):
    """A short text of a state's nesting and shapes, for error messages."""
    if isinstance(tree, (tuple, list)):
        return "(" + ", ".join(describe_structure(t) for t in tree) + ("," if len(tree) == 1 else "") + ")"
    if isinstance(tree, Tensor):
        return f"Tensor{tree.shape}"
    return type(tree).__name__


def same_structure(a, b, shapes=True):
    """True when two states nest the same way with Tensors at the same places, of the same
    shapes unless ``shapes=False`` (two batch sizes of one cell's state)."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(same_structure(x, y, shapes) for x, y in zip(a, b)))
    return isinstance(a, Tensor) and isinstance(b, Tensor) and (not shapes or a.shape == b.shape)
