"""Optimizers (SGD, Adam, AdamW), a cosine learning-rate schedule and gradient clipping.

An optimizer holds a list of Parameters and updates their ``.data`` in place from their
``.grad`` (numpy arithmetic, outside the tape). The update rules are PyTorch's, so a model
trained here and one trained with ``torch.optim`` follow the same trajectory.

``clip_grad_norm`` is the remedy the lecture notes name for exploding gradients: the BPTT
gradient holds ``W_hh^(t-1)``, whose norm can grow geometrically with the sequence length.
"""

import math
import numbers

import numpy as np

from .tensor import Tensor


def _param_list(params, who):
    if isinstance(params, Tensor):
        raise TypeError(f"{who}: params must be an iterable of Parameters (e.g. model.parameters()), "
                        "got a single Tensor; wrap it in a list")
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()      # a Module: be forgiving, use its parameters
    params = list(params)
    if not params:
        raise ValueError(f"{who}: got an empty parameter list")
    seen = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: params[{i}] is a {type(p).__name__}, expected a Parameter")
        if not p.requires_grad:
            raise ValueError(f"{who}: params[{i}] (shape {p.shape}) does not require grad")
        if not p.is_leaf:
            raise ValueError(f"{who}: params[{i}] (shape {p.shape}) is not a leaf tensor; an "
                             "optimizer updates leaves (Parameters), not results of ops")
        if id(p) in seen:
            raise ValueError(f"{who}: params[{i}] (shape {p.shape}) appears more than once")
        seen.add(id(p))
    return params


def _check_number(value, name, who, low=0.0, high=None, low_open=False):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be a finite number, got {value!r}")
    if (value <= low if low_open else value < low) or (high is not None and value >= high):
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{who}: {name} must lie in {rng}, got {value}")
    return float(value)


class Optimizer:
    """Base class: ``zero_grad()``, ``step()``, ``state_dict()``, ``load_state_dict()``.

    Subclasses name their hyperparameters in ``hyper`` (saved in the state dict), keep one
    dict of numpy arrays per parameter in ``self.state``, and implement ``_update(i, p, g)``.
    """

    hyper = ()
    scalar_state = ()       # per-parameter state entries that are scalars, not param-shaped

    def __init__(self, params):
        self.params = _param_list(params, type(self).__name__)
        self.state = [dict() for _ in self.params]
        self.step_count = 0

    def zero_grad(self):
        """Forget every parameter's gradient (``.grad = None``, and ``.grad_tensor``), before
        the next backward."""
        for p in self.params:
            p.grad = p.grad_tensor = None

    def step(self):
        """One update of every parameter that has a gradient; those whose ``.grad`` is None
        (unused in this forward) are left alone, their state untouched."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            if g.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.step: params[{i}] has shape {p.shape} but "
                                 f"its grad has shape {g.shape}")
            self._update(i, p, np.asarray(g, dtype=p.dtype))
            p._bump_version()       # a graph recorded before this step is now out of date

    def _update(self, i, p, g):
        raise NotImplementedError  # abstract: each optimizer defines its rule

    # --- state -------------------------------------------------------------------------
    def state_dict(self):
        """A dict of plain values and numpy arrays (copies), saveable with ``tg.save``:
        ``{"type", "hyper": {...}, "step_count", "state": {"0": {name: array}, ...}}``."""
        return {
            "type": type(self).__name__,
            "hyper": {k: _plain(getattr(self, k)) for k in self.hyper},
            "step_count": self.step_count,
            "state": {str(i): {k: v.copy() for k, v in s.items()} for i, s in enumerate(self.state)},
        }

    def load_state_dict(self, state):
        """Restore hyperparameters and per-parameter state (as PyTorch does, the saved
        hyperparameters win). The parameters must match in number and shape; on any
        mismatch nothing is changed and the error names the entry."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or not {"type", "hyper", "step_count", "state"} <= set(state):
            raise ValueError(f"{who}: expected a dict from {type(self).__name__}.state_dict() with "
                             f"keys type, hyper, step_count, state; got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if state["type"] != type(self).__name__:
            raise ValueError(f"{who}: the state was saved by a {state['type']} optimizer")
        per_param = state["state"]
        if len(per_param) != len(self.params):
            raise ValueError(f"{who}: the state holds {len(per_param)} parameters, this optimizer "
                             f"has {len(self.params)}")
        new_state = []
        for i, p in enumerate(self.params):
            entry = per_param.get(str(i))
            if entry is None:
                raise ValueError(f"{who}: the state has no entry for params[{i}]")
            restored = {}
            for k, v in entry.items():
                arr = np.asarray(v)
                if k in self.scalar_state:
                    if arr.size != 1:
                        raise ValueError(f"{who}: state '{k}' of params[{i}] should be a scalar, "
                                         f"got shape {arr.shape}")
                    restored[k] = np.array(arr.reshape(()), copy=True)
                    continue
                if arr.shape != p.shape:
                    raise ValueError(f"{who}: state '{k}' of params[{i}] has shape {arr.shape}, but "
                                     f"the parameter has shape {p.shape}")
                restored[k] = np.array(arr, dtype=p.dtype, copy=True)
            new_state.append(restored)
        unknown = set(state["hyper"]) - set(self.hyper)
        if unknown:
            raise ValueError(f"{who}: unknown hyperparameters {sorted(unknown)}")
        for k, v in state["hyper"].items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.state = new_state
        self.step_count = int(state["step_count"])

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper)
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    PyTorch's rule (dampening 0):

    .. math::
        g &\leftarrow g + \lambda p \\
        b &\leftarrow \mu b + g \quad (b = g \text{ at the first step}) \\
        p &\leftarrow p - \eta\,(g + \mu b \text{ if nesterov else } b)

    With ``momentum=0`` this is ``p -= lr * (g + weight_decay * p)``.
    """

    hyper = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params)
        self.lr = _check_number(lr, "lr", "SGD")
        self.momentum = _check_number(momentum, "momentum", "SGD")
        self.weight_decay = _check_number(weight_decay, "weight_decay", "SGD")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a positive momentum")
        self.nesterov = bool(nesterov)

    def _update(self, i, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            s = self.state[i]
            buf = s.get("momentum_buffer")
            if buf is None:
                buf = s["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), with L2 or decoupled (AdamW) weight decay.

    .. math::
        g &\leftarrow g + \lambda p \quad \text{(coupled weight decay only)} \\
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t}\,
             \frac{m}{\sqrt{v}/\sqrt{1 - \beta_2^t} + \epsilon}

    With ``decoupled_weight_decay=True`` (AdamW) the decay is not part of the gradient:
    ``p <- p (1 - lr * weight_decay)`` before the step. The bias corrections use the step
    number of each parameter (a parameter without a gradient does not advance).
    """

    hyper = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")
    scalar_state = ("step",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__(params)
        who = type(self).__name__
        self.lr = _check_number(lr, "lr", who)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number(betas[0], "betas[0]", who, high=1.0),
                      _check_number(betas[1], "betas[1]", who, high=1.0))
        self.eps = _check_number(eps, "eps", who)
        self.weight_decay = _check_number(weight_decay, "weight_decay", who)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _update(self, i, p, g):
        beta1, beta2 = self.betas
        s = self.state[i]
        if not s:
            s["step"] = np.zeros((), dtype=np.int64)  # an array, so it saves like the moments
            s["exp_avg"] = np.zeros_like(p.data)
            s["exp_avg_sq"] = np.zeros_like(p.data)
        if self.weight_decay:
            if self.decoupled_weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        s["step"] += 1
        t = int(s["step"])
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        bias1 = 1.0 - beta1 ** t
        bias2 = 1.0 - beta2 ** t
        denom = np.sqrt(v) / math.sqrt(bias2) + self.eps
        p.data -= (self.lr / bias1) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter); PyTorch's defaults, including
    ``weight_decay=0.01``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True)


class CosineAnnealingLR:
    r"""The learning rate along half a cosine: from the optimizer's ``lr`` at step 0 down to
    ``eta_min`` at step ``T_max``, then held there.

    .. math:: \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \, (1 + \cos(\pi t / T_{max})) / 2

    PyTorch's ``torch.optim.lr_scheduler.CosineAnnealingLR`` up to ``T_max`` (past it PyTorch's
    rate climbs again; here it stays at ``eta_min``). Call ``step()`` after each
    ``optimizer.step()``; ``lr_at(t)`` is the rate of step t, so a resumed run needs only its
    step count.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"CosineAnnealingLR: expected an optimizer, got {type(optimizer).__name__}")
        if isinstance(T_max, bool) or not isinstance(T_max, numbers.Integral) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.T_max = int(T_max)
        self.eta_min = _check_number(eta_min, "eta_min", "CosineAnnealingLR")
        self.last_step = 0

    def lr_at(self, t):
        t = min(max(t, 0), self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2

    def step(self):
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)

    def state_dict(self):
        return {"base_lr": self.base_lr, "T_max": self.T_max, "eta_min": self.eta_min,
                "last_step": self.last_step}

    def load_state_dict(self, state):
        self.base_lr, self.T_max = float(state["base_lr"]), int(state["T_max"])
        self.eta_min, self.last_step = float(state["eta_min"]), int(state["last_step"])
        self.optimizer.lr = self.lr_at(self.last_step)


def clip_grad_norm(params, max_norm, error_if_nonfinite=True):
    """Scale all gradients together so their joint L2 norm is at most ``max_norm``.

    Returns the total norm *before* clipping (a float): the number to watch for exploding
    gradients. Gradients whose total norm is already at most ``max_norm`` are untouched;
    otherwise each is multiplied in place by ``max_norm / (norm + 1e-6)`` (PyTorch's rule).
    Parameters without a gradient are skipped.

    A NaN or infinite norm raises ``FloatingPointError`` naming the parameters whose
    gradients are not finite (clipping cannot repair them, and a step would poison the
    weights). With ``error_if_nonfinite=False`` the non-finite norm is returned instead
    and the gradients are left as they are, so the caller can skip the step.
    """
    if isinstance(params, Tensor):
        params = [params]
    elif hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    params = [p for p in params if p.grad is not None]
    max_norm = _check_number(max_norm, "max_norm", "clip_grad_norm", low_open=True)
    if not params:
        return 0.0
    # Accumulate in float64: a float32 sum of squares overflows near 1.8e19.
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel()))
                          for g in (np.asarray(p.grad, dtype=np.float64) for p in params)))
    if not math.isfinite(total):
        if error_if_nonfinite:
            bad = [f"params[{i}] {tuple(p.shape)}" + (f" '{p.name}'" if p.name else "")
                   for i, p in enumerate(params) if not np.isfinite(p.grad).all()]
            raise FloatingPointError(
                f"clip_grad_norm: the total gradient norm is {total}; non-finite gradients in "
                f"{', '.join(bad) if bad else 'the sum of squares (overflow)'}. Lower the learning "
                "rate, or pass error_if_nonfinite=False and skip this step")
        return total
    if total > max_norm:
        coef = max_norm / (total + 1e-6)
        for p in params:
            p.grad = p.grad * np.asarray(coef, dtype=p.grad.dtype)
    return total


clip_grad_norm_ = clip_grad_norm   # PyTorch's in-place name

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "clip_grad_norm_"]
