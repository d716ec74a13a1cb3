"""Weight initialisers (in place, like ``torch.nn.init``) and the package's random source.

``tg.manual_seed(seed)`` reseeds the generator every layer draws its initial weights (and
dropout masks) from, so a model built after it is reproducible.
"""

import contextlib

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed):
    global _rng
    _rng = np.random.default_rng(seed)


def rng():
    """The generator layers draw initial weights and dropout masks from."""
    return _rng


@contextlib.contextmanager
def fork_rng(seed):
    """``with fork_rng(seed):`` draws from a generator seeded with ``seed`` inside the block,
    then puts the previous generator back, its stream untouched (``torch.random.fork_rng``)."""
    global _rng
    previous = _rng
    manual_seed(seed)
    try:
        yield
    finally:
        _rng = previous


def _fill(tensor, values):
    tensor.data[...] = values.astype(tensor.dtype, copy=False)
    return tensor


def uniform_(tensor, low=-1.0, high=1.0):
    return _fill(tensor, _rng.uniform(low, high, tensor.shape))


def normal_(tensor, mean=0.0, std=1.0):
    return _fill(tensor, _rng.normal(mean, std, tensor.shape))


def zeros_(tensor):
    tensor.data[...] = 0
    return tensor


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"init: fan in/out need a tensor of at least 2 dims, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def xavier_uniform_(tensor, gain=1.0):
    fan_in, fan_out = _fans(tensor.shape)
    bound = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def orthogonal_(tensor, gain=1.0):
    """A (semi-)orthogonal matrix: all singular values equal ``gain`` (useful for W_hh)."""
    rows = tensor.shape[0]
    cols = tensor.size // rows
    flat = _rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))        # makes the distribution uniform (Mezzadri 2007)
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(tensor.shape))
