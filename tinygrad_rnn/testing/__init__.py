"""Gradient checking for users' own ops, models and cells.

``gradcheck`` compares every analytic gradient with central finite differences in float64;
``check_vjp`` checks the cheap dot-product property ``<u, J^T v> = <J u, v>``; the
hypothesis strategies live in ``tinygrad_rnn.testing.strategies`` and ``check_cell`` (a
whole property suite for any recurrent cell) in ``tinygrad_rnn.testing.cells``.
"""

from .gradcheck import check_vjp, gradcheck


def __getattr__(name):
    # Both need hypothesis, a test-time dependency: import them only when asked for.
    if name == "check_cell":
        from .cells import check_cell
        return check_cell
    if name == "strategies":
        from . import strategies
        return strategies
    raise AttributeError(f"module 'tinygrad_rnn.testing' has no attribute {name!r}")


__all__ = ["gradcheck", "check_vjp", "check_cell", "strategies"]
