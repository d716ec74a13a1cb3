"""Anomaly mode: stop at the first op whose output or input gradient holds NaN or inf.

``with tg.detect_anomaly(): ...`` registers an observer. In forward it checks every op's
output and, for ops on the tape, notes where in the user's code the op was created (and,
inside ``Unroll``/``Stack``, the time step and layer); in backward it checks every gradient
an op returns. The first non-finite value raises `AnomalyError` naming the op, its input
shapes, the creation site and the step. Outside the block nothing is checked and nothing
costs anything (the observer list is empty).

Inside the block numpy's floating-point warnings ("invalid value encountered in log") are
silenced: an op that makes a NaN or inf raises instead, which says more.
"""

import numpy as np

from ._common import (
    ObserverContext,
    annotate,
    describe_scope,
    fmt_shape,
    non_finite,
    scope_of,
    user_site,
)

_SITE_ATTR = "_anomaly_site"


class AnomalyError(FloatingPointError, RuntimeError):
    """A NaN or inf appeared in an op's forward output or backward gradient.

    Attributes: ``op`` (name), ``phase`` ('forward' or 'backward'), ``input_shapes``,
    ``site`` ('file:line in function' or None), ``step`` and ``layer`` (None outside an
    Unroll / Stack).
    """

    def __init__(self, message, op, phase, input_shapes, site, step, layer):
        super().__init__(message)
        self.op, self.phase, self.input_shapes = op, phase, input_shapes
        self.site, self.step, self.layer = site, step, layer


class detect_anomaly(ObserverContext):
    """``with tg.detect_anomaly():`` raise `AnomalyError` at the first op that produces NaN or
    inf, in forward (its output) or backward (a gradient it returns). Run both the forward and
    the backward inside the block: the creation site and step of an op are recorded when
    its forward runs. ``check_forward=False`` checks only gradients (as PyTorch does).
    Usable as a decorator too.
    """

    def __init__(self, check_forward=True):
        self.check_forward = check_forward

    def __enter__(self):
        self._errstate = np.errstate(divide="ignore", invalid="ignore", over="ignore")
        self._errstate.__enter__()
        return super().__enter__()

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            self._errstate.__exit__(exc_type, exc, tb)

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with detect_anomaly(self.check_forward):
                return fn(*args, **kwargs)
        return wrapper

    # --- observer ------------------------------------------------------------------------
    def on_forward(self, ctx, inputs, out):
        step, layer = annotate(ctx)
        site = None
        if ctx.parents:
            site = user_site()
            setattr(ctx, _SITE_ATTR, site)
        if not self.check_forward:
            return
        outs = out if isinstance(out, tuple) else (out,)
        for i, o in enumerate(outs):
            kind = non_finite(o.data)
            if kind is None:
                continue
            shapes = [t.shape for t in inputs]
            bad_inputs = [j for j, t in enumerate(inputs) if non_finite(t.data)]
            which = f" output {i}" if len(outs) > 1 else ""
            detail = (f"its input {', '.join(map(str, bad_inputs))} already held non-finite values "
                      "(made outside any checked op)" if bad_inputs else
                      "its inputs were all finite")
            raise _error("forward", type(ctx).op_name(), shapes, site or user_site(), step, layer,
                         f"forward output{which} holds {kind}; {detail}")

    def on_backward(self, ctx, out_grads, in_grads, outs):
        for i, g in enumerate(in_grads):
            kind = non_finite(g)
            if kind is None:
                continue
            shapes = [p.shape for p in ctx.parents]
            step, layer = scope_of(ctx)
            upstream = [j for j, og in enumerate(out_grads) if non_finite(og)]
            detail = ("the gradient reaching its output was already non-finite (from the "
                      "initial grad or a hook)" if upstream else
                      "the gradient reaching its output was finite")
            raise _error("backward", type(ctx).op_name(), shapes, getattr(ctx, _SITE_ATTR, None),
                         step, layer, f"backward returned {kind} in the gradient of input {i}; "
                         f"{detail}")


def _error(phase, op, shapes, site, step, layer, what):
    where = describe_scope(step, layer)
    at = f" at {where}" if where else ""
    lines = [f"anomaly in '{op}' ({phase}{at}): {what}",
             f"  inputs: {', '.join(fmt_shape(s) for s in shapes) or 'none'}",
             f"  created at: {site or 'unknown (run the forward inside detect_anomaly to record it)'}"]
    return AnomalyError("\n".join(lines), op, phase, shapes, site, step, layer)
