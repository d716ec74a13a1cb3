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


def _inward(value, width, up):
    """``value`` rounded to the nearest float of ``width`` bits on its inner side: hypothesis
    rejects float32 bounds such as 0.1 that float32 cannot represent exactly."""
    if width == 64:
        return float(value)
    v = np.float32(value)
    # float(v): numpy would compare a float32 scalar with a Python float in float32
    if (up and float(v) < value) or (not up and float(v) > value):
        v = np.nextafter(v, np.float32(np.inf if up else -np.inf))
    return float(v)


def elements(low=-2.0, high=2.0, away_from_zero=0.0, dtype=np.float64, allow_subnormal=None):
    """Floats in [low, high], excluding (-away_from_zero, away_from_zero)."""
    width = 32 if np.dtype(dtype) == np.float32 else 64

    def floats(lo, hi):
        return st.floats(_inward(lo, width, up=True), _inward(hi, width, up=False), width=width,
                         allow_subnormal=allow_subnormal)

    if away_from_zero <= 0:
        return floats(low, high)
    parts = []
    if high >= away_from_zero:
        parts.append(floats(max(low, away_from_zero), high))
    if low <= -away_from_zero:
        parts.append(floats(low, min(high, -away_from_zero)))
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


@st.composite
def distinct_tensors(draw, shape=None, dtype=np.float64, requires_grad=True, spacing=0.25):
    """A Tensor whose values are pairwise at least ``spacing`` apart (a shuffled grid plus a
    small jitter), so max/argmax has no ties and a finite difference cannot swap the winner."""
    if shape is None:
        shape = draw(shapes())
    n = int(np.prod(shape, dtype=np.int64))
    order = np.array(draw(st.permutations(range(n))), dtype=np.float64)
    jitter = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0.0, spacing / 4)))
    data = ((order - n / 2) * spacing + jitter).reshape(shape).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def axes(ndim, allow_none=True, allow_tuple=True):
    """A reduction ``axis`` argument for an ``ndim``-dim array: None, an int (negative
    too) or a tuple of distinct ints (negative too, possibly empty)."""
    options = []
    if allow_none:
        options.append(st.none())
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
    if allow_tuple:
        options.append(hnp.valid_tuple_axes(ndim))
    return st.one_of(*options)


@st.composite
def permutations_of_axes(draw, ndim):
    """A permutation of ``range(ndim)`` for ``transpose``, some entries written negative."""
    perm = draw(st.permutations(range(ndim)))
    negative = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    return tuple(ax - ndim if neg else ax for ax, neg in zip(perm, negative))


def basic_indices(shape):
    """Ints (negative too), slices with steps (negative too), Ellipsis and None."""
    return hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True)


def integer_index_arrays(shape, max_dims=2, max_side=4):
    """Tuples of integer index arrays (negative and repeated indices included) for the
    leading axes of ``shape``: the gather behind an embedding lookup."""
    return hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=0, max_dims=max_dims, max_side=max_side))


def boolean_masks(shape):
    """A boolean mask of ``shape`` or of one of its leading prefixes."""
    return st.integers(1, max(len(shape), 1)).flatmap(
        lambda k: hnp.arrays(np.bool_, shape[:k]))


def matmul_shapes(max_batch_dims=2, max_side=3):
    """Shape pairs ``(a, b)`` valid for ``a @ b``: 2-D, 1-D operands, N-D @ 2-D and batched
    with broadcast batch dimensions (numpy's gufunc signature ``(n?,k),(k,m?)->(n?,m?)``)."""
    return hnp.mutually_broadcastable_shapes(
        signature=np.matmul.signature, max_dims=max_batch_dims, max_side=max_side,
    ).map(lambda r: r.input_shapes)


@st.composite
def pow_operands(draw, max_dims=3, base_gap=0.3, exponent_bound=1.5):
    """Tensors ``(a, b)`` of broadcastable shapes for ``|a| ** b`` and its derivatives: ``|a|``
    at least ``base_gap`` (``log|a|``, in d/db, stays finite and smooth), ``b`` in
    ``[-exponent_bound, exponent_bound]``."""
    sa, sb = draw(broadcastable_shapes(2, max_dims=max_dims))
    return (draw(tensors(sa, away_from_zero=base_gap)),
            draw(tensors(sb, low=-exponent_bound, high=exponent_bound)))
