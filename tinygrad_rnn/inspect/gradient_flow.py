r"""How the gradient flows back through time, measured from the tape.

The seed's argument, for the vanilla RNN :math:`h_k = \tanh(a_k)`,
:math:`a_k = W_{hh} h_{k-1} + W_{xh} x_k + b`:

.. math::
    \frac{\partial L}{\partial h_t} = \frac{\partial L}{\partial h_T}
        \prod_{k=t+1}^{T} J_k, \qquad J_k = \frac{\partial h_k}{\partial h_{k-1}}
        = \operatorname{diag}(\tanh'(a_k))\, W_{hh}

so the gradient reaching step t is pushed through T - t Jacobians: it shrinks (vanishes)
when they contract and grows (explodes) when they expand. `gradient_flow` measures all of
it for any cell:

* ``grad_norms[t]`` = ``||dL/dh_t||``, read from retained gradients of the states after one
  ordinary backward (``h`` is the state tensor the cell also emits as output: ``h`` of an
  LSTM's ``(h, c)``, the top layer's ``h`` of a Stack);
* ``step_jacobians[k - 1]`` = ``J_k``, the Jacobian of step k over the *whole* state
  (LSTM: ``(h, c)`` concatenated, size 2H), built from the tape with one backward per step:
  the state is repeated once per basis vector e_i along the batch, and backward with
  cotangent e_i gives row i (a vector-Jacobian product);
* ``products[t]`` = ``ds_T/ds_t`` = ``J_T ... J_{t+1}``, with its largest and smallest
  singular values ``sigma_max[t]``, ``sigma_min[t]`` (per batch element);
* for an RNNCell, ``closed_form_jacobians``: the seed's formula ``diag(tanh'(a_k)) W_hh``
  computed directly from the weights, so the formula and the tape can be compared
  (``formula_error``).

The cell must treat batch rows independently (every built-in cell does), and runs in eval
mode (no dropout) during the measurement.
"""

from dataclasses import dataclass

import numpy as np

from .._display import html_table
from ..functional import cat
from ..grad_mode import no_grad
from ..tensor import Tensor
from ._common import state_leaves, state_names


@dataclass
class GradientFlow:
    """The measurements of `gradient_flow`; index t runs over states ``s_0`` (initial) to
    ``s_T``, so ``distance = T - t``."""

    T: int
    state_names: list            # the state tensors, in the order they are concatenated
    state_sizes: list
    h_name: str                  # which of them grad_norms is about
    grad_norms: np.ndarray       # (T+1,)  ||dL/dh_t|| (over the whole batch)
    state_grad_norms: np.ndarray  # (T+1,) ||dL/ds_t|| over the whole state
    # (T+1, B, n) the retained gradients of the state tensors, concatenated. Each is the total
    # derivative of L w.r.t. that tensor: an LSTM's c_t also reaches L through h_t = o_t tanh(c_t)
    # inside its own step, so its part is not simply products[t]^T applied to dL/ds_T.
    state_grads: np.ndarray
    step_jacobians: np.ndarray   # (T, B, n, n): [k - 1] is J_k = ds_k/ds_{k-1}
    products: np.ndarray         # (T+1, B, n, n): [t] is ds_T/ds_t
    sigma_max: np.ndarray        # (T+1, B)
    sigma_min: np.ndarray        # (T+1, B)
    closed_form_jacobians: np.ndarray = None   # (T, B, H, H) for RNNCell, else None
    formula_error: float = None  # max |J_k(tape) - J_k(formula)|

    @property
    def distance(self):
        return self.T - np.arange(self.T + 1)

    def jacobian(self, k):
        """J_k = ds_k/ds_{k-1} for k in 1..T, shape (B, n, n)."""
        if not 1 <= k <= self.T:
            raise IndexError(f"GradientFlow.jacobian: k must lie in 1..{self.T}, got {k}")
        return self.step_jacobians[k - 1]

    def at_distance(self, d):
        """(||dL/dh||, mean sigma_max, mean sigma_min) at ``d`` steps before the end (the
        sigmas are NaN when the Jacobians were skipped)."""
        t = self.T - d
        if not 0 <= t <= self.T:
            raise IndexError(f"GradientFlow.at_distance: d must lie in 0..{self.T}, got {d}")
        if self.sigma_max.size == 0:
            return float(self.grad_norms[t]), float("nan"), float("nan")
        return float(self.grad_norms[t]), float(self.sigma_max[t].mean()), float(self.sigma_min[t].mean())

    def table(self, distances=None):
        """Text table of ||dL/dh_t|| and the singular values of ds_T/ds_t by distance T - t."""
        head, rows = self._table_rows(distances)
        lines = [f"{head[0]:>6}" + "".join(f"  {h:>10}" for h in head[1:])]
        lines += [f"{r[0]:>6}" + "".join(f"  {c:>10}" for c in r[1:]) for r in rows]
        return "\n".join(lines)

    def _table_rows(self, distances=None):
        if distances is None:
            distances = default_distances(self.T)
        rows = []
        for d in distances:
            g, smax, smin = self.at_distance(d)
            rows.append([str(d), f"{g:.3e}", f"{smax:.3e}", f"{smin:.3e}"])
        return ["T - t", "|dL/dh_t|", "sigma_max", "sigma_min"], rows

    def __repr__(self):
        return f"GradientFlow(T={self.T}, state {'+'.join(self.state_names)})\n{self.table()}"

    def _repr_html_(self):
        """Jupyter's display: the table by distance in time, as HTML."""
        head, rows = self._table_rows()
        caption = (f"gradient flow over T = {self.T} steps: ||dL/d{self.h_name}_t|| and the singular "
                   f"values of ds_T/ds_t (mean over the batch)")
        if self.formula_error is not None:
            caption += f"; tape vs diag(tanh'(a_k)) W_hh: max difference {self.formula_error:.1e}"
        return html_table(head, rows, caption=caption)

    def plot(self, label="", title=""):
        """A matplotlib Figure of ||dL/dh_t|| (and the largest singular value of ds_T/ds_t)
        against the distance T - t, log scale. Compare cells with `plot_gradient_flow`."""
        return plot_gradient_flow([(label or "cell", self)], title=title)


def plot_gradient_flow(flows, title=""):
    """One matplotlib Figure comparing several `GradientFlow` results: ``flows`` is a dict
    ``{label: flow}`` or a list of ``(label, flow)`` pairs. Needs matplotlib (the ``plot``
    extra). The Figure is not registered with pyplot; a notebook draws it (once) when it is a
    cell's value, and ``fig.savefig(path)`` writes it."""
    try:
        from ._figure import NotebookFigure
    except ImportError:
        raise ImportError("GradientFlow.plot needs matplotlib: pip install 'tinygrad-rnn[plot]' "
                          "(or pip install matplotlib)") from None
    flows = list(flows.items()) if isinstance(flows, dict) else list(flows)
    with_jac = bool(flows) and flows[0][1].sigma_max.size > 0
    fig = NotebookFigure(figsize=(11 if with_jac else 6, 4.2))
    axes = fig.subplots(1, 2 if with_jac else 1, squeeze=False)[0]
    for label, flow in flows:
        d = flow.distance
        g = np.where(flow.grad_norms > 0, flow.grad_norms, np.nan)   # log scale: no zeros
        axes[0].semilogy(d, g, label=label)
        if with_jac:
            s = flow.sigma_max.mean(axis=1)
            axes[1].semilogy(d, np.where(s > 0, s, np.nan), label=label)
    axes[0].set_title("||dL/dh_t||, loss on the last step")
    axes[0].set_ylabel("gradient norm (log scale)")
    if with_jac:
        axes[1].set_title("largest singular value of dh_T/dh_t")
    for ax in axes:
        ax.set_xlabel("distance in time T - t (steps)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def default_distances(T):
    ds = sorted({d for d in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if d <= T} | {T})
    return ds


def _as_sequence(xs):
    if isinstance(xs, np.ndarray):
        xs = Tensor(xs)
    if not isinstance(xs, Tensor) or xs.ndim != 3:
        raise ValueError(f"gradient_flow: xs must be a (T, B, I) Tensor or array, got "
                         f"{getattr(xs, 'shape', type(xs).__name__)}")
    return xs.detach()


def _fresh_leaves(state):
    """The state as new leaves that require grad (a nested tuple like the original)."""
    if isinstance(state, (tuple, list)):
        return type(state)(_fresh_leaves(s) for s in state)
    return Tensor(np.array(state.data, copy=True), requires_grad=True)


def _rebuild(template, flat):
    """A nested tuple shaped like ``template`` holding the tensors of ``flat`` in order."""
    it = iter(flat)

    def build(t):
        if isinstance(t, (tuple, list)):
            return type(t)(build(s) for s in t)
        return next(it)
    return build(template)


def _default_loss(seed):
    def loss(outputs, state):
        # <u, o_T> per sequence, |u| = 1 / sqrt(B): ||dL/dh_T|| over the batch is exactly 1.
        out = outputs[-1]
        u = np.random.default_rng(seed).standard_normal(out.shape[-1])
        u = (u / (np.linalg.norm(u) * np.sqrt(out.shape[0]))).astype(out.dtype)
        return (out * u).sum()
    return loss


def gradient_flow(cell, xs, state=None, loss=None, seed=0, jacobians=True):
    """Measure the gradient flowing back through time in ``cell`` over ``xs`` (T, B, I).

    ``loss(outputs, final_state) -> scalar Tensor``; by default ``<u, o_T>`` summed over the
    batch for a fixed random direction u (seeded by ``seed``, scaled so that
    ``||dL/dh_T|| = 1``): a loss on the last step only, so that ``dL/dh_t`` shows exactly
    what survives ``T - t`` steps back. ``jacobians=False``
    skips the per-step Jacobians (then only the norms are filled in).
    """
    xs = _as_sequence(xs)
    T, B = xs.shape[0], xs.shape[1]
    loss = loss if loss is not None else _default_loss(seed)
    modes = [(m, m.training) for m in cell.modules()] if hasattr(cell, "modules") else []
    for m, _ in modes:
        m.training = False
    try:
        return _measure(cell, xs, state, loss, T, B, jacobians)
    finally:
        for m, was in modes:
            m.training = was


def _measure(cell, xs, state, loss, T, B, want_jacobians):
    if state is None:
        with no_grad():
            state = cell.init_state(B)
    states = [_fresh_leaves(state)]
    outputs = []
    x_steps = [xs[t] for t in range(T)]
    h_index = None
    for t in range(T):
        out, new_state = cell(x_steps[t], states[-1])
        leaves = state_leaves(new_state)
        for leaf in leaves:
            if leaf.requires_grad:
                leaf.retain_grad()
        if h_index is None:
            h_index = next((i for i, leaf in enumerate(leaves) if leaf is out), 0)
        outputs.append(out)
        states.append(new_state)
    L = loss(outputs, states[-1])
    if not isinstance(L, Tensor) or L.size != 1:
        raise ValueError(f"gradient_flow: loss must return a single-element Tensor, got "
                         f"{getattr(L, 'shape', type(L).__name__)}")
    L.backward()

    names = state_names(cell, states[0])
    sizes = [leaf.shape[-1] for leaf in state_leaves(states[0])]
    n = sum(sizes)
    dtype = state_leaves(states[0])[0].dtype
    grads = np.zeros((T + 1, B, n), dtype=dtype)
    h_norms = np.zeros(T + 1)
    for t, s in enumerate(states):
        parts = [leaf.grad if leaf.grad is not None else np.zeros(leaf.shape, dtype)
                 for leaf in state_leaves(s)]
        grads[t] = np.concatenate([p.reshape(B, -1) for p in parts], axis=-1)
        h_norms[t] = np.linalg.norm(parts[h_index])
    state_norms = np.linalg.norm(grads.reshape(T + 1, -1), axis=-1)

    if not want_jacobians:
        empty = np.zeros((0,))
        return GradientFlow(T, names, sizes, names[h_index], h_norms, state_norms, grads, empty,
                            empty, empty, empty)

    J = np.stack([step_jacobian(cell, x_steps[k - 1], states[k - 1]) for k in range(1, T + 1)])
    P = np.empty((T + 1, B, n, n), dtype=J.dtype)
    P[T] = np.eye(n, dtype=J.dtype)
    for t in range(T, 0, -1):
        P[t - 1] = P[t] @ J[t - 1]           # ds_T/ds_{t-1} = ds_T/ds_t . J_t
    sv = np.linalg.svd(P, compute_uv=False)
    flow = GradientFlow(T, names, sizes, names[h_index], h_norms, state_norms, grads, J, P,
                        sv[..., 0], sv[..., -1])
    if _is_rnn_cell(cell):
        flow.closed_form_jacobians = rnn_closed_form(cell, xs.data, [s.data for s in states])
        flow.formula_error = float(np.abs(flow.closed_form_jacobians - J).max())
    return flow


def step_jacobian(cell, x, state):
    """J = ds_new/ds (B, n, n) for one step of ``cell`` at input x (B, I) and state ``state``,
    over the concatenated state, from the tape: the batch is repeated n times, block i gets
    cotangent e_i, and one backward returns every row ``e_i^T J`` at once."""
    leaves = state_leaves(state)
    B = leaves[0].shape[0]
    sizes = [leaf.shape[-1] for leaf in leaves]
    n = sum(sizes)
    rep = [Tensor(np.tile(leaf.data, (n, 1)), requires_grad=True) for leaf in leaves]
    x_rep = Tensor(np.tile(x.data, (n, 1)))
    _, new_state = cell(x_rep, _rebuild(state, rep))
    new_leaves = state_leaves(new_state)
    dtype = leaves[0].dtype
    # Row block i (the n copies of the batch) carries the basis cotangent e_i.
    basis = np.repeat(np.eye(n, dtype=dtype), B, axis=0)            # (n*B, n)
    live = [leaf for leaf in new_leaves if leaf.requires_grad]
    if live:
        offsets = np.cumsum([0] + sizes)
        pieces = [basis[:, offsets[i]:offsets[i + 1]] for i, leaf in enumerate(new_leaves)
                  if leaf.requires_grad]
        out = cat(live, axis=-1) if len(live) > 1 else live[0]
        out.backward(np.concatenate(pieces, axis=-1))
    rows = np.concatenate([r.grad if r.grad is not None else np.zeros(r.shape, dtype)
                           for r in rep], axis=-1)                  # (n*B, n): row i*B+b = e_i^T J[b]
    return rows.reshape(n, B, n).transpose(1, 0, 2)


def _is_rnn_cell(cell):
    from ..rnn.cells import RNNCell
    return isinstance(cell, RNNCell)


def rnn_closed_form(cell, xs, states):
    r"""The seed's Jacobians for an RNNCell: ``J_k = diag(f'(a_k)) W_hh`` with
    ``a_k = W_xh x_k + b_xh + W_hh h_{k-1} + b_hh`` computed in numpy from the weights
    (f = tanh: f' = 1 - tanh(a)^2; f = relu: f' = [a > 0]). xs (T, B, I) array; states: the
    T + 1 hidden states h_0..h_T as arrays. Returns (T, B, H, H)."""
    W_ih, W_hh = cell.weight_ih.data, cell.weight_hh.data
    b = 0.0
    if cell.bias_ih is not None:
        b = cell.bias_ih.data + cell.bias_hh.data
    out = []
    for k in range(1, len(states)):
        a = xs[k - 1] @ W_ih.T + states[k - 1] @ W_hh.T + b          # (B, H)
        if cell.nonlinearity == "tanh":
            d = 1.0 - np.tanh(a) ** 2
        else:
            d = (a > 0).astype(a.dtype)
        out.append(d[:, :, None] * W_hh[None, :, :])                  # diag(d) @ W_hh per row
    return np.stack(out)


# --- making regimes: spectral radius and forget bias ------------------------------------------

def _recurrent_cells(cell):
    cells = getattr(cell, "cells", None)
    if isinstance(cells, (list, tuple)):
        return [c for sub in cells for c in _recurrent_cells(sub)]
    return [cell] if hasattr(cell, "weight_hh") else []


def set_spectral_radius(cell, radius):
    """Rescale every H x H block of ``weight_hh`` (one per gate; every layer of a Stack) so its
    spectral radius (largest |eigenvalue|) is ``radius``. Returns the cell."""
    if radius <= 0:
        raise ValueError(f"set_spectral_radius: radius must be positive, got {radius}")
    cells = _recurrent_cells(cell)
    if not cells:
        raise TypeError(f"set_spectral_radius: {type(cell).__name__} has no weight_hh")
    for c in cells:
        W = c.weight_hh.data
        H = W.shape[1]
        for g in range(W.shape[0] // H):
            block = W[g * H:(g + 1) * H]
            rho = np.max(np.abs(np.linalg.eigvals(block)))
            if rho > 0:
                block *= radius / rho                   # a view: scales weight_hh in place
    return cell


def set_forget_bias(cell, value):
    """Make the LSTM forget gate's total bias ``value`` (bias_ih + bias_hh of the f block):
    a forget gate that starts open, sigmoid(value) (0.73 for 1.0), keeps c for longer."""
    cells = [c for c in _recurrent_cells(cell) if c.weight_hh.shape[0] == 4 * c.weight_hh.shape[1]]
    if not cells:
        raise TypeError(f"set_forget_bias: {type(cell).__name__} has no LSTM layer")
    for c in cells:
        if c.bias_ih is None:
            raise ValueError("set_forget_bias: the LSTM was built with bias=False")
        H = c.hidden_size
        c.bias_ih.data[H:2 * H] = value
        c.bias_hh.data[H:2 * H] = 0.0
    return cell
