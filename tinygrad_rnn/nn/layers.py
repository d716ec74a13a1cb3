"""Linear, Embedding, Dropout."""

import numpy as np

from ..dtypes import resolve_dtype
from ..functional import linear
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


class Linear(Module):
    """``y = x W^T + b``; x (..., in_features) -> y (..., out_features). PyTorch init."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        self.in_features, self.out_features = in_features, out_features
        dt = resolve_dtype(dtype)
        bound = 1.0 / np.sqrt(in_features) if in_features else 0.0
        self.weight = init.uniform_(Parameter(np.empty((out_features, in_features), dt)), -bound, bound)
        self.bias = init.uniform_(Parameter(np.empty(out_features, dt)), -bound, bound) if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table; indices (...) -> (..., dim)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = init.normal_(Parameter(np.empty((num_embeddings, embedding_dim), resolve_dtype(dtype))))

    def forward(self, indices):
        idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"Embedding: index {bad} is out of range for {self.num_embeddings} "
                             "embeddings")
        return self.weight[idx]

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode, scaling the rest by
    1/(1-p); the identity in eval mode (``module.eval()``)."""

    def __init__(self, p=0.5):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = init.rng().random(x.shape) >= self.p
        return x * (keep.astype(x.dtype) / (1.0 - self.p))   # a Python float keeps float32

    def extra_repr(self):
        return f"p={self.p}"
