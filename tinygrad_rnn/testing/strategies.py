"""Hypothesis strategies for property-testing gradients, built on ``hypothesis.extra.numpy``.

Values are well conditioned by default: bounded, and optionally kept away from zero (the
kink of relu/abs) or strictly positive (the domain of log/sqrt), so a finite difference
measures the derivative rather than a discontinuity.
"""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..tensor import Tensor

float_dtypes = st.sampled_from([np.float32, np.float64])


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Tuples of mutually broadcastable shapes (size-1 and missing dims included)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims,
                                             max_dims=max_dims, min_side=min_side,
                                             max_side=max_side).map(lambda r: r.input_shapes)


def elements(low=-2.0, high=2.0, away_from_zero=0.0, dtype=np.float64):
    """Floats in [low, high], excluding (-away_from_zero, away_from_zero)."""
    width = 32 if np.dtype(dtype) == np.float32 else 64
    if away_from_zero <= 0:
        return st.floats(low, high, width=width)
    parts = []
    if high >= away_from_zero:
        parts.append(st.floats(max(low, away_from_zero), high, width=width))
    if low <= -away_from_zero:
        parts.append(st.floats(low, min(high, -away_from_zero), width=width))
    return st.one_of(*parts)


def arrays(shape, dtype=np.float64, low=-2.0, high=2.0, away_from_zero=0.0):
    return hnp.arrays(dtype, shape, elements=elements(low, high, away_from_zero, dtype))


def positive_arrays(shape, dtype=np.float64, low=0.2, high=3.0):
    """Strictly positive values, for log, sqrt and bases of pow."""
    return arrays(shape, dtype, low, high)


@st.composite
def tensors(draw, shape=None, dtype=np.float64, requires_grad=True, low=-2.0, high=2.0,
            away_from_zero=0.0):
    """A Tensor of ``shape`` (drawn if None) with well-conditioned values."""
    if shape is None:
        shape = draw(shapes())
    data = draw(arrays(shape, dtype, low, high, away_from_zero))
    return Tensor(data, requires_grad=requires_grad)


@st.composite
def broadcastable_tensors(draw, num=2, dtype=np.float64, low=-2.0, high=2.0, away_from_zero=0.0,
                          max_dims=3):
    """``num`` tensors of mutually broadcastable shapes, all requiring grad."""
    shape_tuple = draw(broadcastable_shapes(num_shapes=num, max_dims=max_dims))
    return tuple(draw(tensors(s, dtype, True, low, high, away_from_zero)) for s in shape_tuple)
