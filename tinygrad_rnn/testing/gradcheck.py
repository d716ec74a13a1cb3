"""Finite-difference checks of the tape's gradients, in float64."""

import contextlib

import numpy as np

from ..higher_order import grad
from ..tensor import Tensor


def _flatten(out):
    """The Tensors of a (possibly nested tuple/list) output, in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if out is None:
        return []
    raise TypeError(f"gradcheck: fn must return a Tensor or a nested tuple of Tensors, "
                    f"got {type(out).__name__}")


def _as_float64(inputs):
    """Float64 copies of the tensor inputs (keeping requires_grad); others pass through."""
    out = []
    for x in inputs:
        if isinstance(x, Tensor) and x.dtype.kind == "f":
            out.append(Tensor(np.array(x.data, dtype=np.float64, order="C"), requires_grad=x.requires_grad,
                              name=x.name))
        else:
            out.append(x)
    return out


@contextlib.contextmanager
def _params_in_float64(params):
    """Run with the given leaf parameters temporarily in float64."""
    saved = [(p, p.data) for p in params]
    try:
        for p in params:
            p.data = np.array(p.data, dtype=np.float64, order="C")
            p.grad = None
        yield
    finally:
        for p, data in saved:
            p.data = data
            p.grad = None


def _projection(fn, args, cotangents):
    outs = _flatten(fn(*args))
    if len(outs) != len(cotangents):
        raise AssertionError("gradcheck: fn returned a different number of tensors on re-run")
    return sum(float(np.vdot(o.data, v)) for o, v in zip(outs, cotangents))


def _label(x, i):
    return f"'{x.name}'" if getattr(x, "name", None) else f"{i}"


def _targets(args, params):
    targets = [(f"input {_label(x, i)}", x) for i, x in enumerate(args)
               if isinstance(x, Tensor) and x.requires_grad]
    targets += [(f"parameter {_label(p, i)}", p) for i, p in enumerate(params) if p.requires_grad]
    return targets


def _assert_close(check, what, label, x, analytic, numeric, atol, rtol):
    err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    if err.size and err.max() > 0:
        worst = np.unravel_index(int(np.argmax(err)), x.shape)
        raise AssertionError(
            f"{check}: {what} of {label} (shape {x.shape}) is wrong at index "
            f"{tuple(int(i) for i in worst)}: analytic {analytic[worst]:.10g} vs numeric "
            f"{numeric[worst]:.10g} (|diff| {abs(analytic[worst] - numeric[worst]):.3g}, "
            f"atol {atol}, rtol {rtol})")


def gradcheck(fn, *inputs, params=(), eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Check the analytic gradient of every input (and every tensor in ``params``) that
    requires grad against central differences, in float64.

    ``fn(*inputs)`` returns a Tensor or a nested tuple of Tensors; the check differentiates
    ``sum(out * v)`` for a fixed random cotangent ``v`` per output (which exercises the whole
    vector-Jacobian product). ``params`` are leaves ``fn`` reads from its closure (a model's
    parameters), perturbed in place. Raises ``AssertionError`` naming the input, the worst
    index, and the analytic and numeric values. Returns True.
    """
    args = _as_float64(inputs)
    params = list(params)
    targets = _targets(args, params)
    if not targets:
        raise ValueError("gradcheck: no input or parameter requires grad; nothing to check")
    with _params_in_float64(params):
        rng = np.random.default_rng(seed)
        outs = _flatten(fn(*args))
        cotangents = [rng.standard_normal(o.shape) for o in outs]
        loss = None
        for o, v in zip(outs, cotangents):
            if o.requires_grad:
                term = (o * Tensor(v)).sum()
                loss = term if loss is None else loss + term
        for _, x in targets:
            x.grad = None
        if loss is not None:
            loss.backward()
        for label, x in targets:
            analytic = np.zeros(x.shape) if x.grad is None else np.asarray(x.grad, np.float64)
            numeric = np.zeros(x.shape)
            flat = x.data.reshape(-1)   # a view: perturbations write through to x.data
            for i in range(flat.size):
                orig = flat[i]
                flat[i] = orig + eps
                plus = _projection(fn, args, cotangents)
                flat[i] = orig - eps
                minus = _projection(fn, args, cotangents)
                flat[i] = orig
                numeric.reshape(-1)[i] = (plus - minus) / (2 * eps)
            _assert_close("gradcheck", "gradient", label, x, analytic, numeric, atol, rtol)
    return True


def gradgradcheck(fn, *inputs, grad_outputs=None, params=(), eps=1e-6, atol=1e-5, rtol=1e-4,
                  seed=0):
    """Check the second derivatives of ``fn`` against central differences of its analytic
    gradient, in float64 (PyTorch's ``gradgradcheck``).

    The first-order gradient ``G(x) = J(x)^T v`` of every input (and parameter) that
    requires grad comes from ``tg.grad(..., create_graph=True)`` for a cotangent ``v`` per
    output (``grad_outputs``, or fixed random ones); the check differentiates the scalar
    ``S(x) = sum_j <G_j(x), u_j>`` (a fixed random ``u_j`` per input) with the tape, and
    compares every element with central differences of ``S`` computed from first-order
    gradients. A rule that is right to first order but uses detached data (an array where the
    graph's Tensor belongs) fails here. Raises ``AssertionError`` naming the input, the worst
    index, and the analytic and numeric values. Returns True.
    """
    args = _as_float64(inputs)
    params = list(params)
    targets = _targets(args, params)
    if not targets:
        raise ValueError("gradgradcheck: no input or parameter requires grad; nothing to check")
    tensors = [x for _, x in targets]
    with _params_in_float64(params):
        rng = np.random.default_rng(seed)
        outs = _flatten(fn(*args))
        if grad_outputs is None:
            cotangents = [rng.standard_normal(o.shape) for o in outs]
        else:
            given = [grad_outputs] if not isinstance(grad_outputs, (list, tuple)) else grad_outputs
            cotangents = [np.asarray(v.data if isinstance(v, Tensor) else v, dtype=np.float64)
                          for v in given]
            if len(cotangents) != len(outs) or any(v.shape != o.shape for v, o in zip(cotangents, outs)):
                raise ValueError(f"gradgradcheck: grad_outputs must give one array per output, "
                                 f"of shapes {[o.shape for o in outs]}")
        directions = [rng.standard_normal(x.shape) for x in tensors]

        def gradients(create_graph):
            """G(x): the gradient of <fn(x), v> of every target (None where it is unused)."""
            loss = _projection_tensor(_flatten(fn(*args)), cotangents)
            if loss is None:
                return [None] * len(tensors)
            return grad(loss, tensors, create_graph=create_graph, allow_unused=True)

        # S(x) = sum_j <G_j(x), u_j> on the tape; None if G does not depend on x (S's
        # gradient is then zero).
        grads = gradients(create_graph=True)
        total = _projection_tensor([g for g in grads if g is not None],
                                   [u for g, u in zip(grads, directions) if g is not None])
        second = grad(total, tensors, allow_unused=True) if total is not None else [None] * len(tensors)

        def numeric_total():
            return sum(float(np.vdot(g.data, u)) for g, u in zip(gradients(False), directions)
                       if g is not None)

        for (label, x), analytic in zip(targets, second):
            analytic = np.zeros(x.shape) if analytic is None else np.asarray(analytic.data, np.float64)
            numeric = np.zeros(x.shape)
            flat = x.data.reshape(-1)   # a view: perturbations write through to x.data
            for i in range(flat.size):
                orig = flat[i]
                flat[i] = orig + eps
                plus = numeric_total()
                flat[i] = orig - eps
                minus = numeric_total()
                flat[i] = orig
                numeric.reshape(-1)[i] = (plus - minus) / (2 * eps)
            _assert_close("gradgradcheck", "second derivative (d/dx of the gradient . u)", label,
                          x, analytic, numeric, atol, rtol)
    return True


def _projection_tensor(tensors, cotangents):
    """``sum_k <tensors[k], cotangents[k]>`` as a Tensor on the tape (None if none requires grad)."""
    total = None
    for t, v in zip(tensors, cotangents):
        if t.requires_grad:
            term = (t * Tensor(v)).sum()
            total = term if total is None else total + term
    return total


def check_vjp(fn, *inputs, params=(), eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """The dot-product test ``<u, J^T v> = <J u, v>`` in float64.

    ``J^T v`` comes from the tape (one backward), ``J u`` from one central difference along
    a random direction ``u`` over all inputs and params at once: two extra forwards, however
    many inputs, so it is cheap enough for hundreds of hypothesis examples. Raises
    ``AssertionError`` with both scalars on mismatch; returns them otherwise.
    """
    args = _as_float64(inputs)
    params = list(params)
    targets = [x for x in args if isinstance(x, Tensor) and x.requires_grad]
    targets += [p for p in params if p.requires_grad]
    if not targets:
        raise ValueError("check_vjp: no input or parameter requires grad; nothing to check")
    with _params_in_float64(params):
        rng = np.random.default_rng(seed)
        outs = _flatten(fn(*args))
        vs = [rng.standard_normal(o.shape) for o in outs]
        us = [rng.standard_normal(x.shape) for x in targets]
        for x in targets:
            x.grad = None
        loss = None
        for o, v in zip(outs, vs):
            if o.requires_grad:
                term = (o * Tensor(v)).sum()
                loss = term if loss is None else loss + term
        if loss is not None:
            loss.backward()
        u_JTv = sum(float(np.vdot(u, x.grad)) for u, x in zip(us, targets) if x.grad is not None)
        originals = [x.data.copy() for x in targets]
        for x, u, orig in zip(targets, us, originals):
            x.data[...] = orig + eps * u
        plus = _projection(fn, args, vs)
        for x, u, orig in zip(targets, us, originals):
            x.data[...] = orig - eps * u
        minus = _projection(fn, args, vs)
        for x, orig in zip(targets, originals):
            x.data[...] = orig
        Ju_v = (plus - minus) / (2 * eps)
        if abs(u_JTv - Ju_v) > atol + rtol * abs(Ju_v):
            raise AssertionError(f"check_vjp: <u, J^T v> = {u_JTv:.10g} (backward) but "
                                 f"<J u, v> = {Ju_v:.10g} (finite differences); "
                                 f"|diff| {abs(u_JTv - Ju_v):.3g}")
    return u_JTv, Ju_v
