"""Hand-written BPTT in numpy for the vanilla RNN, the LSTM, the GRU and the MGU: the baseline.

The same equations, parameter layouts and gate orders as ``tinygrad_rnn``'s built-in cells
(PyTorch's: LSTM i, f, g, o; GRU r, z, n with the reset gate after the matmul), written the
way one writes them by hand (CS231n's ``rnn_layers.py``): a forward loop over time that
keeps what backward needs, then a reverse loop with each derivative spelled out. Step by
step, like the cells: the input projection is not hoisted out of the loop (that is the
compiled path's trick, not the eager tape's).

Every function takes ``xs`` (T, B, I), the cotangent ``dys`` (T, B, H) of the outputs
(the gradient of the loss with respect to every step's output ``h_t``), the parameters
``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H,), and an
optional initial state (zeros otherwise). It returns ``(ys, grads)``: the outputs (T, B, H)
and a dict of gradients with the parameters' names (plus ``"xs"`` with ``need_dx=True``).
Arrays keep the inputs' dtype. The MGU (the custom cell of DESIGN.md and README.md, two
``Linear(I + H, H)`` layers) takes ``W_f, b_f, W_h, b_h`` instead, and its gradients are
named as its parameters are (``W_f.weight``, ...).
"""

import numpy as np


def _sigmoid(x):
    # The same overflow-free form as tinygrad_rnn.kernels: 0.5 * (1 + tanh(x / 2)).
    out = np.multiply(x, 0.5, dtype=x.dtype)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _transposes(W_ih, W_hh):
    # Contiguous W^T once per sequence: OpenBLAS multiplies by a transposed view 20-45% slower.
    return np.ascontiguousarray(W_ih.T), np.ascontiguousarray(W_hh.T)


def _param_grads(W_ih, W_hh, b_ih, b_hh):
    return {"weight_ih": np.zeros_like(W_ih), "weight_hh": np.zeros_like(W_hh),
            "bias_ih": np.zeros_like(b_ih), "bias_hh": np.zeros_like(b_hh)}


def rnn_forward_backward(xs, dys, W_ih, W_hh, b_ih, b_hh, h0=None, need_dx=False):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``."""
    T, B, _ = xs.shape
    H = W_hh.shape[1]
    W_ihT, W_hhT = _transposes(W_ih, W_hh)
    h = np.zeros((B, H), xs.dtype) if h0 is None else h0
    hs = [h]                                   # hs[t] is h_{t-1} of step t
    for t in range(T):
        a = xs[t] @ W_ihT
        a += b_ih
        a += h @ W_hhT
        a += b_hh
        h = np.tanh(a)
        hs.append(h)
    ys = np.stack(hs[1:])

    grads = _param_grads(W_ih, W_hh, b_ih, b_hh)
    dxs = np.empty_like(xs) if need_dx else None
    dh_next = np.zeros((B, H), xs.dtype)
    for t in reversed(range(T)):
        h = hs[t + 1]
        da = dys[t] + dh_next
        da *= 1 - h * h                        # tanh' = 1 - tanh^2
        grads["weight_ih"] += da.T @ xs[t]
        grads["weight_hh"] += da.T @ hs[t]
        db = da.sum(axis=0)
        grads["bias_ih"] += db
        grads["bias_hh"] += db
        dh_next = da @ W_hh
        if need_dx:
            dxs[t] = da @ W_ih
    if need_dx:
        grads["xs"] = dxs
    return ys, grads


def lstm_forward_backward(xs, dys, W_ih, W_hh, b_ih, b_hh, state0=None, need_dx=False):
    """LSTM: gates ``a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`` split as i, f, g, o;
    ``c_t = σ(f) c_{t-1} + σ(i) tanh(g)``, ``h_t = σ(o) tanh(c_t)``."""
    T, B, _ = xs.shape
    H = W_hh.shape[1]
    W_ihT, W_hhT = _transposes(W_ih, W_hh)
    if state0 is None:
        h, c = np.zeros((B, H), xs.dtype), np.zeros((B, H), xs.dtype)
    else:
        h, c = state0
    hs, cs, acts, tcs = [h], [c], [], []      # acts[t]: (B, 4H) with σ(i), σ(f), tanh(g), σ(o)
    for t in range(T):
        a = xs[t] @ W_ihT
        a += b_ih
        a += h @ W_hhT
        a += b_hh
        act = np.empty_like(a)
        act[:, :2 * H] = _sigmoid(a[:, :2 * H])
        act[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
        act[:, 3 * H:] = _sigmoid(a[:, 3 * H:])
        i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs.append(h)
        cs.append(c)
        acts.append(act)
        tcs.append(tc)
    ys = np.stack(hs[1:])

    grads = _param_grads(W_ih, W_hh, b_ih, b_hh)
    dxs = np.empty_like(xs) if need_dx else None
    dh_next = np.zeros((B, H), xs.dtype)
    dc_next = np.zeros((B, H), xs.dtype)
    for t in reversed(range(T)):
        act, tc, c_prev = acts[t], tcs[t], cs[t]
        i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
        dh = dys[t] + dh_next
        dc = dh * o
        dc *= 1 - tc * tc
        dc += dc_next
        da = np.empty_like(act)                # gradient of the pre-activation gates
        da[:, :H] = dc * g * i * (1 - i)
        da[:, H:2 * H] = dc * c_prev * f * (1 - f)
        da[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        da[:, 3 * H:] = dh * tc * o * (1 - o)
        dc_next = dc * f
        grads["weight_ih"] += da.T @ xs[t]
        grads["weight_hh"] += da.T @ hs[t]
        db = da.sum(axis=0)
        grads["bias_ih"] += db
        grads["bias_hh"] += db
        dh_next = da @ W_hh
        if need_dx:
            dxs[t] = da @ W_ih
    if need_dx:
        grads["xs"] = dxs
    return ys, grads


def gru_forward_backward(xs, dys, W_ih, W_hh, b_ih, b_hh, h0=None, need_dx=False):
    """GRU (PyTorch's): ``r = σ(x_r + h_r)``, ``z = σ(x_z + h_z)``, ``n = tanh(x_n + r h_n)``,
    ``h_t = (1 - z) n + z h_{t-1}``, where ``x_* = x_t W_i*^T + b_i*`` and
    ``h_* = h_{t-1} W_h*^T + b_h*``."""
    T, B, _ = xs.shape
    H = W_hh.shape[1]
    W_ihT, W_hhT = _transposes(W_ih, W_hh)
    h = np.zeros((B, H), xs.dtype) if h0 is None else h0
    hs, rzs, ns, hns = [h], [], [], []
    for t in range(T):
        ax = xs[t] @ W_ihT
        ax += b_ih
        ah = h @ W_hhT
        ah += b_hh
        rz = _sigmoid(ax[:, :2 * H] + ah[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        h_n = ah[:, 2 * H:]
        n = np.tanh(ax[:, 2 * H:] + r * h_n)
        h = (1 - z) * n + z * h
        hs.append(h)
        rzs.append(rz)
        ns.append(n)
        hns.append(h_n)
    ys = np.stack(hs[1:])

    grads = _param_grads(W_ih, W_hh, b_ih, b_hh)
    dxs = np.empty_like(xs) if need_dx else None
    dh_next = np.zeros((B, H), xs.dtype)
    for t in reversed(range(T)):
        rz, n, h_n, h_prev = rzs[t], ns[t], hns[t], hs[t]
        r, z = rz[:, :H], rz[:, H:]
        dh = dys[t] + dh_next
        dn = dh * (1 - z)
        dn *= 1 - n * n                        # gradient of n's pre-activation
        dz = dh * (h_prev - n)
        dr = dn * h_n
        dax = np.empty((B, 3 * H), xs.dtype)   # gradient of x_r, x_z, x_n
        dax[:, :H] = dr * r * (1 - r)
        dax[:, H:2 * H] = dz * z * (1 - z)
        dax[:, 2 * H:] = dn
        dah = dax.copy()                       # gradient of h_r, h_z, h_n
        dah[:, 2 * H:] *= r
        grads["weight_ih"] += dax.T @ xs[t]
        grads["weight_hh"] += dah.T @ h_prev
        grads["bias_ih"] += dax.sum(axis=0)
        grads["bias_hh"] += dah.sum(axis=0)
        dh_next = dah @ W_hh
        dh_next += dh * z
        if need_dx:
            dxs[t] = dax @ W_ih
    if need_dx:
        grads["xs"] = dxs
    return ys, grads


def mgu_forward_backward(xs, dys, W_f, b_f, W_h, b_h, h0=None, need_dx=False):
    """Minimal gated unit: ``f = σ(W_f [x_t, h_{t-1}] + b_f)``,
    ``h~ = tanh(W_h [x_t, f h_{t-1}] + b_h)``, ``h_t = (1 - f) h_{t-1} + f h~``.

    Each weight (H, I + H) is used as its x-columns and its h-columns (the same arithmetic as
    multiplying the concatenation)."""
    T, B, I = xs.shape
    H = W_f.shape[0]
    W_fxT, W_fhT = np.ascontiguousarray(W_f[:, :I].T), np.ascontiguousarray(W_f[:, I:].T)
    W_hxT, W_hhT = np.ascontiguousarray(W_h[:, :I].T), np.ascontiguousarray(W_h[:, I:].T)
    h = np.zeros((B, H), xs.dtype) if h0 is None else h0
    hs, fs, fhs, h_tildes = [h], [], [], []   # hs[t] is h_{t-1} of step t
    for t in range(T):
        a_f = xs[t] @ W_fxT
        a_f += h @ W_fhT
        a_f += b_f
        f = _sigmoid(a_f)
        fh = f * h
        a_h = xs[t] @ W_hxT
        a_h += fh @ W_hhT
        a_h += b_h
        h_tilde = np.tanh(a_h)
        h = h + f * (h_tilde - h)
        hs.append(h)
        fs.append(f)
        fhs.append(fh)
        h_tildes.append(h_tilde)
    ys = np.stack(hs[1:])

    grads = {"W_f.weight": np.zeros_like(W_f), "W_f.bias": np.zeros_like(b_f),
             "W_h.weight": np.zeros_like(W_h), "W_h.bias": np.zeros_like(b_h)}
    dxs = np.empty_like(xs) if need_dx else None
    dh_next = np.zeros((B, H), xs.dtype)
    for t in reversed(range(T)):
        f, fh, h_tilde, h_prev = fs[t], fhs[t], h_tildes[t], hs[t]
        dh = dys[t] + dh_next
        da_h = dh * f
        da_h *= 1 - h_tilde * h_tilde          # gradient of h~'s pre-activation
        dfh = da_h @ W_h[:, I:]                # gradient of f h_{t-1}
        df = dh * (h_tilde - h_prev)
        df += dfh * h_prev
        da_f = df * f * (1 - f)                # gradient of f's pre-activation
        dh_next = dh * (1 - f)
        dh_next += dfh * f
        dh_next += da_f @ W_f[:, I:]
        grads["W_h.weight"][:, :I] += da_h.T @ xs[t]
        grads["W_h.weight"][:, I:] += da_h.T @ fh
        grads["W_h.bias"] += da_h.sum(axis=0)
        grads["W_f.weight"][:, :I] += da_f.T @ xs[t]
        grads["W_f.weight"][:, I:] += da_f.T @ h_prev
        grads["W_f.bias"] += da_f.sum(axis=0)
        if need_dx:
            dxs[t] = da_h @ W_h[:, :I] + da_f @ W_f[:, :I]
    if need_dx:
        grads["xs"] = dxs
    return ys, grads


FORWARD_BACKWARD = {"rnn": rnn_forward_backward, "lstm": lstm_forward_backward,
                    "gru": gru_forward_backward, "mgu": mgu_forward_backward}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
PARAMETER_NAMES = {cell: ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for cell in GATES}
PARAMETER_NAMES["mgu"] = ("W_f.weight", "W_f.bias", "W_h.weight", "W_h.bias")


def parameter_shapes(cell, I, H):
    """The parameters' shapes in ``PARAMETER_NAMES`` order (PyTorch's layouts)."""
    if cell == "mgu":
        return [(H, I + H), (H,), (H, I + H), (H,)]
    G = GATES[cell]
    return [(G * H, I), (G * H, H), (G * H,), (G * H,)]


def init_parameters(cell, I, H, dtype, rng):
    """PyTorch's init, uniform(-1/sqrt(fan), 1/sqrt(fan)), fan = H for the built-in cells and
    I + H for the MGU's Linear layers."""
    bound = (I + H) ** -0.5 if cell == "mgu" else H ** -0.5
    return [rng.uniform(-bound, bound, s).astype(dtype) for s in parameter_shapes(cell, I, H)]


def reference_gradients(cell, xs, dys, params):
    """``[dx, *parameter gradients]`` (``PARAMETER_NAMES`` order): what every contestant of
    bench_rnn.py must return."""
    _, grads = FORWARD_BACKWARD[cell](xs, dys, *params, need_dx=True)
    return [grads["xs"]] + [grads[name] for name in PARAMETER_NAMES[cell]]
