"""Module and Parameter: containers that find their parameters by looking at attributes."""

from collections import OrderedDict

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf Tensor that always requires grad; ``.data`` may be reassigned (optimizers do)."""

    __slots__ = ()

    def __init__(self, data, dtype=None, name=None):
        data = data.data if isinstance(data, Tensor) else data
        arr = np.array(data, dtype=dtype, copy=True)
        if arr.dtype.kind != "f":
            raise TypeError(f"Parameter: needs floating data, got dtype {arr.dtype}")
        super().__init__(arr, requires_grad=True, name=name)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class of layers, cells and models.

    Parameters and sub-modules are found by walking the instance's attributes, including
    those inside lists, tuples and dicts, in the order they were assigned; nothing needs
    registering. ``__call__`` runs ``forward``.
    """

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is abstract: subclasses define it")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- discovery ------------------------------------------------------------------------
    def _children(self):
        """(name, value) for every Parameter or Module reachable from attributes."""
        for name, value in vars(self).items():
            yield from _walk(name, value)

    def named_parameters(self, prefix=""):
        seen = set()
        for name, value in self._children():
            full = prefix + name
            if isinstance(value, Parameter):
                if id(value) not in seen:
                    seen.add(id(value))
                    yield full, value
            else:
                for sub_name, p in value.named_parameters(prefix=full + "."):
                    if id(p) not in seen:
                        seen.add(id(p))
                        yield sub_name, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, value in self._children():
            if isinstance(value, Module):
                yield from value.named_modules(prefix=(prefix + "." if prefix else "") + name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # --- modes ----------------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # --- state ----------------------------------------------------------------------------
    def state_dict(self):
        """Parameter name -> a copy of its array."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; a missing, extra or mis-shaped entry is an error
        that names it (and nothing is changed)."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if strict and (missing or extra):
            raise KeyError(f"load_state_dict({type(self).__name__}): missing parameters {missing}, "
                           f"unexpected parameters {extra}")
        # Every entry is checked and converted before any parameter changes.
        new_data = {}
        for name, p in own.items():
            if name in state:
                arr = np.asarray(state[name])
                if arr.shape != p.shape:
                    raise ValueError(f"load_state_dict({type(self).__name__}): parameter '{name}' "
                                     f"has shape {p.shape} but the state holds {arr.shape}")
                if arr.dtype.kind not in "biuf":
                    raise ValueError(f"load_state_dict({type(self).__name__}): parameter '{name}' "
                                     f"is {p.dtype} but the state holds a {arr.dtype} array")
                new_data[name] = np.array(arr, dtype=p.dtype, copy=True)
        for name, data in new_data.items():
            own[name].data = data
        return self

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, value in self._children():
            if isinstance(value, Module):
                sub = repr(value).replace("\n", "\n  ")
                lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"

    def extra_repr(self):
        return ""


def _walk(name, value):
    if isinstance(value, (Parameter, Module)):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(f"{name}.{i}", v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(f"{name}.{k}", v)
