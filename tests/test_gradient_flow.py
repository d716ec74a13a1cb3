"""Gradient flow through time: the tape's Jacobians against numpy, and the seed's formula."""

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import observers
from tinygrad_rnn.inspect import gradient_flow, set_forget_bias, set_spectral_radius, step_jacobian
from tinygrad_rnn.inspect.gradient_flow import rnn_closed_form


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --- numpy references, written from the equations (not from the package) -----------------

def np_rnn_step(p, x, s):
    return np.tanh(p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ s + p["bias_hh"])


def np_lstm_step(p, x, s):
    H = len(s) // 2
    h, c = s[:H], s[H:]
    z = p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
    i, f, g, o = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return np.concatenate([h, c])


def np_gru_step(p, x, s):
    H = len(s)
    gx = p["weight_ih"] @ x + p["bias_ih"]
    gh = p["weight_hh"] @ s + p["bias_hh"]
    r = sigmoid(gx[:H] + gh[:H])
    z = sigmoid(gx[H:2 * H] + gh[H:2 * H])
    n = np.tanh(gx[2 * H:] + r * gh[2 * H:])
    return (1 - z) * n + z * s


def fd_jacobian(step, s, eps=1e-6):
    """Central finite differences, column j = (step(s + eps e_j) - step(s - eps e_j)) / 2 eps."""
    n = len(s)
    J = np.empty((len(step(s)), n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = eps
        J[:, j] = (step(s + e) - step(s - e)) / (2 * eps)
    return J


def reference(step, p, xs, s0):
    """States, per-step Jacobians and products ds_T/ds_t for one sequence, all in numpy."""
    states = [s0]
    for x in xs:
        states.append(step(p, x, states[-1]))
    J = [fd_jacobian(lambda s, x=x: step(p, x, s), states[k]) for k, x in enumerate(xs)]
    T, n = len(xs), len(s0)
    P = [None] * (T + 1)
    P[T] = np.eye(n)
    for t in range(T, 0, -1):
        P[t - 1] = P[t] @ J[t - 1]
    return states, np.array(J), np.array(P)


def params(cell):
    return {name: p.data for name, p in cell.named_parameters()}


CELLS = {"rnn": (tg.RNNCell, np_rnn_step, 1), "lstm": (tg.LSTMCell, np_lstm_step, 2),
         "gru": (tg.GRUCell, np_gru_step, 1)}


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_jacobians_products_and_norms_match_numpy(kind):
    cls, np_step, parts = CELLS[kind]
    tg.manual_seed(3)
    T, B, I, H = 7, 3, 2, 4
    cell = cls(I, H)
    if kind == "lstm":
        set_forget_bias(cell, 1.0)
    xs = np.random.default_rng(0).standard_normal((T, B, I))
    flow = gradient_flow(cell, xs, seed=5)
    n = parts * H
    assert flow.step_jacobians.shape == (T, B, n, n) and flow.products.shape == (T + 1, B, n, n)
    for b in range(B):
        states, J, P = reference(np_step, params(cell), xs[:, b], np.zeros(n))
        np.testing.assert_allclose(flow.step_jacobians[:, b], J, atol=1e-8)
        np.testing.assert_allclose(flow.products[:, b], P, atol=1e-8)
        sv = np.linalg.svd(P, compute_uv=False)
        np.testing.assert_allclose(flow.sigma_max[:, b], sv[:, 0], rtol=1e-6)
        np.testing.assert_allclose(flow.sigma_min[:, b], sv[:, -1], rtol=1e-5, atol=1e-12)
        # The adjoint of the state slots: lambda_t = (ds_T/ds_t)^T lambda_T, with lambda_T =
        # (dL/dh_T, 0) since the loss reads h_T only.
        lam_T = np.zeros(n)
        lam_T[:H] = flow.state_grads[T, b, :H]
        for t in range(T + 1):
            lam = P[t].T @ lam_T
            # h_t is used only by step t + 1 and the loss: its retained gradient is lambda^h.
            np.testing.assert_allclose(flow.state_grads[t, b, :H], lam[:H], atol=1e-12)
            if kind == "lstm" and t > 0:
                # c_t also feeds h_t = o_t tanh(c_t) inside its own step, so the tensor c_t's
                # gradient is lambda^c + diag(o_t tanh'(c_t)) lambda^h.
                p = params(cell)
                z = p["weight_ih"] @ xs[t - 1, b] + p["bias_ih"] + p["weight_hh"] @ states[t - 1][:H] \
                    + p["bias_hh"]
                o, c = sigmoid(z[3 * H:]), states[t][H:]
                np.testing.assert_allclose(flow.state_grads[t, b, H:],
                                           lam[H:] + o * (1 - np.tanh(c) ** 2) * lam[:H], atol=1e-12)
            elif kind == "lstm":
                np.testing.assert_allclose(flow.state_grads[t, b, H:], lam[H:], atol=1e-12)
    # ||dL/dh_t|| over the batch, normalised to 1 at t = T.
    np.testing.assert_allclose(flow.grad_norms, np.linalg.norm(flow.state_grads[:, :, :H], axis=(1, 2)))
    assert flow.grad_norms[T] == pytest.approx(1.0)
    assert flow.h_name == "h" and flow.state_names == (["h", "c"] if kind == "lstm" else ["h"])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_the_seed_formula_and_the_tape_agree_for_rnncell(nonlinearity):
    tg.manual_seed(0)
    cell = tg.RNNCell(3, 5, nonlinearity=nonlinearity)
    xs = np.random.default_rng(1).standard_normal((9, 2, 3))
    flow = gradient_flow(cell, xs)
    assert flow.formula_error < 1e-13
    # And the formula, computed here from the states: J_k = diag(tanh'(a_k)) W_hh.
    W_ih, W_hh = cell.weight_ih.data, cell.weight_hh.data
    b = cell.bias_ih.data + cell.bias_hh.data
    h = np.zeros((2, 5))
    for k in range(9):
        a = xs[k] @ W_ih.T + h @ W_hh.T + b
        d = 1 - np.tanh(a) ** 2 if nonlinearity == "tanh" else (a > 0) * 1.0
        np.testing.assert_allclose(flow.jacobian(k + 1), d[:, :, None] * W_hh[None], atol=1e-14)
        h = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)
    states = [np.zeros((2, 5))]
    for k in range(9):
        states.append(np.tanh(xs[k] @ W_ih.T + states[-1] @ W_hh.T + b) if nonlinearity == "tanh"
                      else np.maximum(xs[k] @ W_ih.T + states[-1] @ W_hh.T + b, 0))
    np.testing.assert_allclose(rnn_closed_form(cell, xs, states), flow.closed_form_jacobians)


def test_any_cell_including_a_stack_against_finite_differences_of_its_forward():
    tg.manual_seed(0)
    cell = tg.Stack([tg.LSTMCell(2, 3), tg.RNNCell(3, 3)])
    x = tg.Tensor(np.random.default_rng(0).standard_normal((2, 2)))
    state = ((tg.randn(2, 3, seed=1), tg.randn(2, 3, seed=2)), tg.randn(2, 3, seed=3))
    J = step_jacobian(cell, x, state)
    assert J.shape == (2, 9, 9)
    for b in range(2):
        s0 = np.concatenate([state[0][0].data[b], state[0][1].data[b], state[1].data[b]])

        def step(s, b=b):
            st = ((tg.Tensor(s[None, :3]), tg.Tensor(s[None, 3:6])), tg.Tensor(s[None, 6:]))
            with tg.no_grad():
                _, (lstm_state, h1) = cell(tg.Tensor(x.data[b:b + 1]), st)
            return np.concatenate([lstm_state[0].data[0], lstm_state[1].data[0], h1.data[0]])
        np.testing.assert_allclose(J[b], fd_jacobian(step, s0), atol=1e-8)


def orthogonal_rnn(H, radius, seed=0, zero_bias=False):
    tg.manual_seed(seed)
    cell = tg.RNNCell(2, H)
    tg.nn.init.orthogonal_(cell.weight_hh, gain=radius)       # every singular value = radius
    if zero_bias:
        cell.bias_ih.data[:] = 0
        cell.bias_hh.data[:] = 0
    return cell


def formula_bounds(flow, cell, xs):
    """With W_hh = rho Q (Q orthogonal), sigma(prod_k diag(tanh'(a_k)) W_hh) lies between
    prod_k min(tanh'(a_k)) rho and prod_k max(tanh'(a_k)) rho."""
    rho = np.linalg.svd(cell.weight_hh.data, compute_uv=False)[0]
    d = 1.0 - np.array([s[0] for s in _states(cell, xs)[1:]]) ** 2     # tanh'(a_k) = 1 - h_k^2
    T = len(xs)
    lo, hi = np.ones(T + 1), np.ones(T + 1)
    for t in range(T - 1, -1, -1):
        lo[t] = lo[t + 1] * d[t].min() * rho
        hi[t] = hi[t + 1] * d[t].max() * rho
    return lo, hi


def _states(cell, xs):
    W_ih, W_hh = cell.weight_ih.data, cell.weight_hh.data
    b = cell.bias_ih.data + cell.bias_hh.data
    hs = [np.zeros((xs.shape[1], W_hh.shape[0]))]
    for x in xs:
        hs.append(np.tanh(x @ W_ih.T + hs[-1] @ W_hh.T + b))
    return hs


def test_vanishing_when_the_spectral_radius_is_below_one():
    cell = orthogonal_rnn(8, 0.5)
    xs = np.random.default_rng(0).standard_normal((30, 1, 2))
    flow = gradient_flow(cell, xs)
    lo, hi = formula_bounds(flow, cell, xs)
    assert np.all(flow.sigma_max[:, 0] <= hi * (1 + 1e-9))
    assert np.all(flow.sigma_min[:, 0] >= lo * (1 - 1e-9))
    assert np.all(np.diff(flow.grad_norms) > 0)                # smaller the further back
    assert flow.grad_norms[0] <= 0.5 ** 30 * (1 + 1e-9)        # ||dL/dh_T|| = 1


def test_exploding_when_the_spectral_radius_is_above_one():
    # Near h = 0 tanh' is ~1, so the product is ~(1.5 Q)^d: it grows like 1.5^d.
    cell = orthogonal_rnn(8, 1.5, zero_bias=True)
    xs = 1e-7 * np.random.default_rng(0).standard_normal((20, 1, 2))
    flow = gradient_flow(cell, xs)
    lo, hi = formula_bounds(flow, cell, xs)
    assert np.all(flow.sigma_min[:, 0] >= lo * (1 - 1e-9))
    assert np.all(flow.sigma_max[:, 0] <= hi * (1 + 1e-9))
    assert lo[0] > 0.9 * 1.5 ** 20
    assert np.all(np.diff(flow.grad_norms) < 0)                # larger the further back
    assert flow.grad_norms[0] > 0.9 * 1.5 ** 20


def test_set_spectral_radius_rescales_every_gate_block():
    tg.manual_seed(0)
    for cell in (tg.RNNCell(3, 5), tg.GRUCell(3, 5), tg.LSTMCell(3, 5)):
        set_spectral_radius(cell, 1.7)
        W = cell.weight_hh.data
        for g in range(W.shape[0] // 5):
            assert np.max(np.abs(np.linalg.eigvals(W[g * 5:(g + 1) * 5]))) == pytest.approx(1.7)
    with pytest.raises(ValueError, match="positive"):
        set_spectral_radius(tg.RNNCell(2, 2), 0.0)


def test_lstm_with_forget_bias_keeps_more_gradient_at_distance_50_than_a_vanilla_rnn():
    T, B, I, H = 50, 4, 4, 16
    for seed in range(3):
        xs = np.random.default_rng(seed).standard_normal((T, B, I))
        tg.manual_seed(seed)
        rnn = tg.RNNCell(I, H)
        tg.manual_seed(seed)
        lstm = set_forget_bias(tg.LSTMCell(I, H), 1.0)
        g_rnn = gradient_flow(rnn, xs, jacobians=False).grad_norms[0]
        g_lstm = gradient_flow(lstm, xs, jacobians=False).grad_norms[0]
        assert g_lstm > g_rnn, (seed, g_lstm, g_rnn)


def test_the_cell_runs_in_eval_mode_and_bad_input_is_explained():
    tg.manual_seed(0)
    stack = tg.Stack([tg.GRUCell(2, 3), tg.GRUCell(3, 3)], dropout=0.5)
    xs = np.random.default_rng(0).standard_normal((5, 2, 2))
    a = gradient_flow(stack, xs)
    b = gradient_flow(stack, xs)
    np.testing.assert_array_equal(a.products, b.products)       # no dropout noise
    assert stack.training and stack.dropout.training             # modes restored
    with pytest.raises(ValueError, match=r"\(T, B, I\)"):
        gradient_flow(stack, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="single-element"):
        gradient_flow(stack, xs, loss=lambda outs, s: outs[-1])
    assert not observers.observing()


# --- the command line ----------------------------------------------------------------------

def run_cli(args, capsys):
    from tinygrad_rnn.cli import main
    code = main(["gradflow", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_measured_numbers_and_saves_a_png(tmp_path, capsys):
    out_png = tmp_path / "flow.png"
    code, out, _ = run_cli(["--cells", "rnn,lstm", "--steps", "12", "--hidden", "5", "--batch", "2",
                            "--input-size", "3", "--seed", "4", "--out", str(out_png)], capsys)
    assert code == 0
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]]
            for line in out.splitlines() if line.split() and line.split()[0].isdigit()}
    assert sorted(rows) == [0, 1, 2, 5, 10, 12]
    # Recompute independently of the CLI: same seed, same cells, same inputs.
    rng = np.random.default_rng(4)
    tg.manual_seed(4)
    rnn = tg.RNNCell(3, 5)
    tg.manual_seed(4)
    lstm = set_forget_bias(tg.LSTMCell(3, 5), 1.0)
    f_rnn = gradient_flow(rnn, rng.standard_normal((12, 2, 3)), seed=4)
    f_lstm = gradient_flow(lstm, rng.standard_normal((12, 2, 3)), seed=4)
    for d, (g_r, s_r, g_l, s_l) in rows.items():
        assert g_r == pytest.approx(f_rnn.grad_norms[12 - d], rel=1e-3)
        assert s_r == pytest.approx(f_rnn.sigma_max[12 - d].mean(), rel=1e-3)
        assert g_l == pytest.approx(f_lstm.grad_norms[12 - d], rel=1e-3)
        assert s_l == pytest.approx(f_lstm.sigma_max[12 - d].mean(), rel=1e-3)
    assert "agree to" in out and f"plot saved to {out_png}" in out
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    import matplotlib.image
    assert matplotlib.image.imread(str(out_png)).shape[2] in (3, 4)


def test_cli_spectral_radius_and_errors(tmp_path, capsys):
    code, out, _ = run_cli(["--cells", "rnn", "--steps", "10", "--hidden", "4", "--batch", "1",
                            "--spectral-radius", "0.3", "--no-plot"], capsys)
    assert code == 0
    last = [line for line in out.splitlines() if line.split() and line.split()[0] == "10"][0]
    assert float(last.split()[1]) < 0.3 ** 10
    code, _, err = run_cli(["--cells", "rnn,transformer", "--no-plot"], capsys)
    assert code == 2 and "unknown cell(s) ['transformer']" in err
    code, _, err = run_cli(["--checkpoint", str(tmp_path / "missing.npz"), "--no-plot"], capsys)
    assert code == 2 and "missing.npz" in err


def test_cli_compares_trained_and_fresh_weights_from_a_checkpoint(tmp_path, capsys):
    if not hasattr(tg, "save"):
        pytest.skip("tg.save (serialization) is not available")
    tg.manual_seed(0)
    trained = tg.Unroll(tg.Stack([tg.GRUCell(3, 4), tg.GRUCell(4, 4)]))
    set_spectral_radius(trained.cell, 0.2)             # "training" that shrank W_hh
    path = tmp_path / "model.safetensors"
    tg.save({"model": trained.state_dict(), "step": 10}, path)
    code, out, _ = run_cli(["--checkpoint", str(path), "--steps", "8", "--batch", "2", "--no-plot"],
                           capsys)
    assert code == 0
    head = [line for line in out.splitlines() if "|dL/dh|" in line][0]
    assert "gru x2 (trained)" in head and "gru x2 (fresh)" in head
    row8 = [line for line in out.splitlines() if line.split() and line.split()[0] == "8"][0].split()
    assert float(row8[1]) < float(row8[3])              # the shrunken weights pass less back

    tg.save({"model": {"readout.weight": np.ones((2, 2))}}, tmp_path / "no_rnn.safetensors")
    code, _, err = run_cli(["--checkpoint", str(tmp_path / "no_rnn.safetensors"), "--no-plot"], capsys)
    assert code == 2 and "no key ending in 'weight_hh'" in err
