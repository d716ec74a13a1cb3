"""Gradient checking for users' own ops, models and cells.

``gradcheck`` compares every analytic gradient with central finite differences in float64;
``gradgradcheck`` does the same for second derivatives (the gradient of a gradient);
``check_vjp`` checks the cheap dot-product property ``<u, J^T v> = <J u, v>``; the
hypothesis strategies live in ``tinygrad_rnn.testing.strategies`` and ``check_cell`` (a
whole property suite for any recurrent cell) in ``tinygrad_rnn.testing.cells``.
"""

from .gradcheck import check_vjp, gradcheck, gradgradcheck


def __getattr__(name):
    # Both need hypothesis, a test-time dependency: import them only when asked for.
    # import_module, not `from . import strategies`: the latter asks this module for the
    # attribute first, which calls __getattr__ again and recurses forever.
    import importlib
    if name in ("check_cell", "strategies"):
        try:
            module = importlib.import_module(".cells" if name == "check_cell" else ".strategies",
                                             __name__)
        except ModuleNotFoundError as exc:
            if exc.name != "hypothesis":
                raise
            raise ImportError(f"tinygrad_rnn.testing.{name} needs hypothesis: "
                              "pip install 'tinygrad-rnn[testing]' (or hypothesis)") from None
        return getattr(module, name) if name == "check_cell" else module
    raise AttributeError(f"module 'tinygrad_rnn.testing' has no attribute {name!r}")


__all__ = ["gradcheck", "gradgradcheck", "check_vjp", "check_cell", "strategies"]
