"""A shared weight's gradient summed over its uses as ONE matrix product, not one per use."""

import numpy as np

from ..autograd import ShapeError

# Below this many multiply-adds per use (K * M * N), a weight's product is cheaper to do at
# once than to defer: the bookkeeping and the final stacking cost more than the small GEMMs
# (measured: the LSTM at B=8, T=2000 ~4% slower deferred; at B=64, H=512 5-8% faster).
DEFER_WEIGHT_GRAD_MIN_WORK = 2 ** 18


def weight_grad(a, b):
    """``a.T @ b`` (a (K, M), b (K, N)): the gradient of a weight, one term of its sum over uses.

    `MatMul` and `Linear` return this for their weight input: an array for a small product,
    else an `OuterProductSum` that the backward walk sums like any gradient."""
    if a.shape[0] * a.shape[1] * b.shape[1] < DEFER_WEIGHT_GRAD_MIN_WORK:
        return a.T @ b
    return OuterProductSum(a, b)


class OuterProductSum:
    """The weight gradient ``sum_k a_k.T @ b_k`` kept as its factors until an array is needed.

    A shared weight's gradient is the sum of one small product per use (``g.T @ x`` per time
    step, K = batch rows each); BLAS does the same sum faster as ONE product over all the
    uses' rows stacked (an LSTM at B=64, H=512: 5-8% faster training). The walk sums it with
    ``+`` like any gradient (two of them just join, no arithmetic), and ``np.asarray`` makes
    it an array (``__array__``) where the walk needs one: before hooks, observers,
    ``retain_grad`` or a node's backward see it, and when a leaf receives it. The price: each
    use's factors stay alive until then.

    Under ``create_graph`` the factors are Tensors and `materialize` records the one product
    (a ``cat`` of the rows, a transpose, a matmul): the gradient's graph then holds one large
    product per weight instead of one small product and one sum per use.
    """

    __slots__ = ("a", "b", "rest")
    __array_ufunc__ = None      # ``ndarray + this`` defers to __radd__ instead of broadcasting

    def __init__(self, a, b, rest=None):
        self.a, self.b = a, b       # this term: a.T @ b, a (K, M), b (K, N)
        self.rest = rest            # the sum of the other terms (an OuterProductSum) or None

    @property
    def shape(self):
        return (self.a.shape[1], self.b.shape[1])

    @property
    def dtype(self):
        return np.result_type(*{x.dtype for term in self._terms() for x in term})

    def __add__(self, other):
        if isinstance(other, OuterProductSum):
            if other.shape != self.shape:
                raise ShapeError(f"gradient sum: shapes {self.shape} and {other.shape} differ")
            total = self
            while other is not None:      # O(terms of other): one, in the walk
                total, other = OuterProductSum(other.a, other.b, total), other.rest
            return total
        return self.materialize() + other

    def __radd__(self, other):
        return other + self.materialize()

    def __array__(self, dtype=None, copy=None):
        out = self.materialize()
        return out if dtype is None else out.astype(dtype, copy=False)

    def materialize(self):
        if self.rest is None:
            return self.a.T @ self.b
        a_rows, b_rows = zip(*self._terms())
        if type(self.a) is np.ndarray:
            return np.concatenate(a_rows).T @ np.concatenate(b_rows)
        from ..functional import cat  # Tensor factors (create_graph); functional.py is above
        return cat(list(a_rows)).T @ cat(list(b_rows))

    def _terms(self):
        term = self
        while term is not None:     # iterative: a 2000-step sum is a 2000-long chain
            yield term.a, term.b
            term = term.rest
