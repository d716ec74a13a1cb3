"""Losses as functions of Tensors (PyTorch's ``torch.nn.functional`` names and conventions).

Every loss here is a composite of primitive ops, so its gradient comes from the tape:
``cross_entropy`` is the fused, numerically stable ``log_softmax`` op followed by a gather
of the target entries and a mean; nothing here defines a backward.

Shapes: logits (..., V), most often (N, V) or (T, B, V) (a sequence model's readout at every
step); integer targets of the leading shape (N,) or (T, B); an optional mask of that same
leading shape marks the positions that count (padding, or steps past a sequence's length).
"""

import numpy as np

from ..autograd import ShapeError
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _as_tensor(x, who, what):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return Tensor(x)
    raise TypeError(f"{who}: {what} must be a Tensor or a numpy array, got {type(x).__name__}")


def _check_reduction(reduction, who):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def mse(pred, target, reduction="mean"):
    """Mean squared error ``mean((pred - target)^2)``; pred and target of the same shape.

    Unlike plain broadcasting, a shape mismatch is an error: (B, 1) against (B,) would
    silently average a (B, B) matrix of differences.
    """
    _check_reduction(reduction, "mse")
    pred = _as_tensor(pred, "mse", "pred")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        target = Tensor(np.full(pred.shape, target, dtype=pred.dtype))
    target = _as_tensor(target, "mse", "target")
    if pred.shape != target.shape:
        raise ShapeError(f"mse: pred has shape {pred.shape} but target has shape {target.shape}; "
                         "they must match (reshape one of them explicitly)")
    if pred.size == 0 and reduction == "mean":
        raise ValueError(f"mse: cannot average over an empty tensor of shape {pred.shape}")
    sq = (pred - target) * (pred - target)
    if reduction == "none":
        return sq
    return sq.mean() if reduction == "mean" else sq.sum()


mse_loss = mse   # PyTorch's name


def _target_array(targets, lead, who):
    t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if t.dtype.kind not in "iu":
        hint = (" (class indices, not one-hot vectors or probabilities)" if t.dtype.kind == "f"
                else "")
        raise TypeError(f"{who}: targets must be integers{hint}, got dtype {t.dtype}")
    if t.shape != lead:
        raise ShapeError(f"{who}: targets have shape {t.shape}, expected the leading shape {lead} "
                         f"of the scores (the scores' last axis is the classes)")
    return t


def _mask_array(mask, lead, who):
    m = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
    if m.shape != lead:
        raise ShapeError(f"{who}: mask has shape {m.shape}, expected the targets' shape {lead}")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
            raise ValueError(f"{who}: mask must be boolean or hold only 0 and 1, got dtype {m.dtype}"
                             + (f" with values {np.unique(m)[:5]}" if m.dtype.kind in "iuf" else ""))
        m = m.astype(bool)
    return m


def nll_loss(log_probs, targets, ignore_index=None, mask=None, reduction="mean"):
    """Negative log-likelihood of integer ``targets`` under ``log_probs`` (..., V).

    ``-log_probs[..., targets]`` at every position, averaged (``reduction="mean"``) over the
    positions that count: those where ``mask`` is true and ``targets != ignore_index``.
    ``"sum"`` adds them up; ``"none"`` returns the per-position losses (leading shape), zero
    at the positions that do not count.
    """
    return _nll(log_probs, targets, ignore_index, mask, reduction, "nll_loss")


def _nll(log_probs, targets, ignore_index, mask, reduction, who):
    _check_reduction(reduction, who)
    log_probs = _as_tensor(log_probs, who, "the scores")
    if log_probs.dtype.kind != "f":
        raise TypeError(f"{who}: the scores must be floating point, got dtype {log_probs.dtype}")
    if log_probs.ndim < 2:
        raise ShapeError(f"{who}: expected scores of shape (N, V) or (T, B, V) with the classes "
                         f"last, got shape {log_probs.shape}")
    lead, V = log_probs.shape[:-1], log_probs.shape[-1]
    t = _target_array(targets, lead, who)
    counts = np.ones(lead, dtype=bool) if mask is None else _mask_array(mask, lead, who)
    if ignore_index is not None:
        counts = counts & (t != ignore_index)
    bad = counts & ((t < 0) | (t >= V))
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IndexError(f"{who}: target {int(t[pos])} at position {pos} is out of range for "
                         f"{V} classes (valid: 0..{V - 1}"
                         + (f", or ignore_index={ignore_index})" if ignore_index is not None else ")"))
    flat = log_probs.reshape(-1, V)
    rows = np.flatnonzero(counts)
    n = rows.size
    if reduction == "none":
        # Gather every position (a harmless class 0 where it does not count), then zero those.
        safe = np.where(counts, t, 0).reshape(-1)
        picked = flat[np.arange(flat.shape[0]), safe]
        weights = counts.reshape(-1).astype(log_probs.dtype)
        return (-(picked * weights)).reshape(lead)
    if n == 0 and reduction == "mean":
        raise ValueError(f"{who}: every one of the {counts.size} positions is masked or "
                         "ignored; the mean over no positions is undefined")
    picked = flat[rows, t.reshape(-1)[rows]]
    total = -picked.sum()
    return total * (1.0 / n) if reduction == "mean" else total


def cross_entropy(logits, targets, ignore_index=None, mask=None, reduction="mean"):
    """Softmax cross-entropy of integer ``targets`` given unnormalised ``logits`` (..., V).

    ``-log softmax(logits)[..., target]`` at every position, through the fused stable
    ``log_softmax`` op (no overflow for large logits); averaged over the positions that
    count (``mask`` true and ``targets != ignore_index``). Logits (N, V) or (T, B, V),
    targets (N,) or (T, B), mask of the targets' shape. Divide by ``ln 2`` for bits.
    """
    lp = _as_tensor(logits, "cross_entropy", "logits")
    if lp.ndim < 2:
        raise ShapeError(f"cross_entropy: expected logits of shape (N, V) or (T, B, V) with the "
                         f"classes last, got shape {lp.shape}")
    if lp.dtype.kind != "f":
        raise TypeError(f"cross_entropy: logits must be floating point, got dtype {lp.dtype}")
    # Validate before the log_softmax so a bad call records nothing.
    _target_array(targets, lp.shape[:-1], "cross_entropy")
    return _nll(lp.log_softmax(axis=-1), targets, ignore_index, mask, reduction, "cross_entropy")
