"""The examples, each on a tiny budget: their data is what they claim, they learn, they plot.

Each example's ``main(steps, seed, quick=True, out_dir)`` runs a small model for a few steps
(seconds); the assertions are about outcomes (losses fall, accuracies beat chance, shapes,
valid PNGs), not just that the script ran. The full-size runs and their numbers are in
examples/README.md.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPTS = ["01_parity", "02_sine_forecast", "03_digit_captions", "04_seq2seq_reverse",
           "05_adding_problem", "06_custom_cell_mgu", "07_parallel_vs_sequential"]


def load(name):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def assert_png(path):
    assert path is not None and Path(path).is_file(), f"no plot at {path}"
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes) for a plot"


# --- 1. many-to-one: parity -----------------------------------------------------------------

def test_parity_batch_labels_count_ones_within_each_length():
    ex = load("01_parity")
    xs, lengths, labels = ex.make_batch(np.random.default_rng(0), 50, 1, 9)
    bits = xs.data.argmax(-1)                                  # one-hot back to bits (T, B)
    for b, n in enumerate(lengths):
        assert labels[b] == bits[:n, b].sum() % 2
        assert not bits[n:, b].any()                           # padding is zero bits


def test_parity_learns_beyond_chance():
    r = load("01_parity").main(steps=150, seed=0, quick=True)
    assert r["loss_last"] < 0.5 * r["loss_first"]
    assert r["accuracy"] >= 0.9 > r["chance"]


# --- 2. one-to-many, autoregressive: sine forecast -------------------------------------------

def test_sine_forecast_beats_predicting_zero_and_plots(tmp_path):
    r = load("02_sine_forecast").main(steps=120, seed=0, quick=True, out_dir=str(tmp_path))
    assert r["forecast_shape"] == (20, 256)                    # (horizon, series)
    assert r["loss_last"] < 0.7 * r["loss_first"]
    assert r["forecast_mse"] < r["baseline_zero_mse"] < r["baseline_last_value_mse"]
    assert_png(r["plot"])


def test_sine_forecast_is_closed_loop():
    # The forecast must not see the future: changing observations after the warm-up
    # cannot change it, changing the warm-up must.
    import tinygrad_rnn as tg
    ex = load("02_sine_forecast")
    tg.manual_seed(0)
    cell, readout = tg.LSTMCell(1, 4, dtype=np.float32), tg.nn.Linear(4, 1, dtype=np.float32)
    _, noisy = ex.sine_waves(np.random.default_rng(0), 3, 12)
    a = ex.forecast(cell, readout, noisy[:8], 5)
    assert a.shape == (5, 3)
    changed = noisy.copy()
    changed[3] += 1.0
    assert not np.allclose(ex.forecast(cell, readout, changed[:8], 5), a)


def test_plot_is_skipped_with_a_message_without_matplotlib(monkeypatch, capsys, tmp_path):
    ex = load("02_sine_forecast")
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # makes `import matplotlib` fail
    clean, noisy = ex.sine_waves(np.random.default_rng(0), 4, 10)
    assert ex.plot(noisy, clean, clean[5:], 5, str(tmp_path)) is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# --- 3. one-to-many from an image: digit captions --------------------------------------------

def test_caption_data_spells_each_digit_and_draws_its_glyph():
    ex = load("03_digit_captions")
    inputs, targets = ex.spell([7, 1])
    assert ex.decode(targets[:, 0]) == "seven" and ex.decode(targets[:, 1]) == "one"
    assert inputs[0, 0] == ex.BOS and list(inputs[1:6, 0]) == list(targets[:5, 0])
    assert (targets[4:, 1] == [ex.PAD] * (ex.MAX_LEN - 4)).all()
    images = ex.draw_digits(np.random.default_rng(0), [8, 1], flip=0.0)
    assert images.shape == (2, ex.CANVAS[0] * ex.CANVAS[1])
    assert images.sum(axis=1).tolist() == [ex.GLYPHS[8].sum(), ex.GLYPHS[1].sum()]


def test_captioner_learns_to_spell_names():
    r = load("03_digit_captions").main(steps=150, seed=0, quick=True)
    assert r["loss_last"] < 0.5 * r["loss_first"]
    # Greedy decoding through tg.generate: after a short training the decoder already spells
    # valid names (telling the digits apart takes longer).
    assert r["misspelled"] <= 0.1
    assert all(isinstance(c, str) for c in r["captions"])
    assert r["exact_match"] > r["chance"]


# --- 4. seq2seq: reversal --------------------------------------------------------------------

def test_reverse_batch_targets_are_the_reversed_source():
    ex = load("04_seq2seq_reverse")
    src, lengths, tgt_in, tgt_out = ex.make_batch(np.random.default_rng(0), 20, 5)
    for b, n in enumerate(lengths):
        assert list(tgt_out[:n, b]) == list(src[:n, b][::-1])
        assert tgt_out[n, b] == ex.EOS and tgt_in[0, b] == ex.BOS
        assert list(tgt_in[1:n + 1, b]) == list(tgt_out[:n, b])


def test_seq2seq_learns_beyond_chance(tmp_path):
    r = load("04_seq2seq_reverse").main(steps=150, seed=0, quick=True, out_dir=str(tmp_path))
    assert (tmp_path / "seq2seq_reverse.safetensors").is_file()        # evaluated from the reloaded copy
    assert r["loss_last"] < 0.7 * r["loss_first"]
    assert r["token_accuracy"] > 3 / 11                       # chance is 1/11 per token
    assert r["accuracy_by_length"][1] > 0.5                    # one digit: nearly solved already


def test_reloaded_reverser_decodes_exactly_like_the_original(tmp_path):
    import tinygrad_rnn as tg
    ex = load("04_seq2seq_reverse")
    tg.manual_seed(3)
    model = ex.Reverser(8, 4)
    src, lengths, _, _ = ex.make_batch(np.random.default_rng(0), 16, 5)
    copy = ex.save_and_reload(model, str(tmp_path), 8, 4)
    assert copy is not model
    np.testing.assert_array_equal(copy.greedy(src, lengths, 6), model.greedy(src, lengths, 6))
    for (name, p), (_, q) in zip(model.named_parameters(), copy.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


# --- 5. long-range dependence: the adding problem --------------------------------------------

def test_adding_targets_sum_two_marked_values():
    ex = load("05_adding_problem")
    xs, targets = ex.adding_batch(np.random.default_rng(0), 30, 12)
    values, markers = xs.data[..., 0], xs.data[..., 1]
    assert (markers.sum(axis=0) == 2).all()
    assert (markers[:6].sum(axis=0) == 1).all()                # one marker in each half
    np.testing.assert_allclose(targets.data[:, 0], (values * markers).sum(axis=0), rtol=1e-6)


def test_adding_problem_compares_cells_and_shows_vanishing_gradients(tmp_path):
    ex = load("05_adding_problem")
    r = ex.main(steps=30, seed=0, quick=True, out_dir=str(tmp_path))
    for kind in ("RNN", "LSTM", "GRU"):
        assert r[kind]["input_grad"].shape == (10,)            # one norm per input step (T = 10)
        assert r[kind]["grad_norms"].shape == (30,) and (r[kind]["grad_norms"] > 0).all()
        assert np.isfinite(r[kind]["test_mse"])
    rnn, lstm = r["RNN"]["input_grad"], r["LSTM"]["input_grad"]
    # The seed's argument: in a vanilla RNN the gradient shrinks going back in time, more
    # than along the LSTM's cell state.
    assert rnn[0] < rnn[-1]
    assert rnn[0] / rnn[-1] < lstm[0] / lstm[-1]
    assert_png(r["plot"])


def test_lstm_forget_bias_starts_at_one():
    ex = load("05_adding_problem")
    cell = ex.make_cell("LSTM", 3)
    f = slice(3, 6)                                            # gates i, f, g, o
    np.testing.assert_array_equal(cell.bias_ih.data[f] + cell.bias_hh.data[f], 1.0)


# --- 6. a custom cell: MGU -------------------------------------------------------------------

def test_mgu_cell_is_ten_lines_of_equations():
    import inspect
    ex = load("06_custom_cell_mgu")
    body = [line for name in ("__init__", "init_state", "forward")
            for line in inspect.getsource(getattr(ex.MGUCell, name)).splitlines()
            if line.strip() and not line.strip().startswith(("def ", "#", '"'))]
    assert len(body) <= 10, body


def test_mgu_passes_check_cell_and_learns_the_echo():
    pytest.importorskip("hypothesis")
    r = load("06_custom_cell_mgu").main(steps=150, seed=0, quick=True, check_examples=3)
    assert r["checked"]
    assert r["loss_last"] < 0.5 * r["loss_first"]
    assert r["accuracy"] >= 0.9 > r["chance"]


def test_mgu_example_skips_check_cell_with_a_message_without_hypothesis(monkeypatch, capsys):
    ex = load("06_custom_cell_mgu")
    monkeypatch.setitem(sys.modules, "hypothesis", None)        # makes `import hypothesis` fail
    monkeypatch.delitem(sys.modules, "tinygrad_rnn.testing.cells", raising=False)
    assert ex.property_test(2) is False
    assert "skipping check_cell" in capsys.readouterr().out


# --- 7. parallel over time: minGRU stack vs LSTM --------------------------------------------

def test_parallel_vs_sequential_compares_similar_models_and_plots(tmp_path):
    ex = load("07_parallel_vs_sequential")
    r = ex.main(steps=60, seed=0, quick=True, out_dir=str(tmp_path))
    for T in (20, 40):
        lstm, mingru = r[T]["LSTM"], r[T]["minGRU x3"]
        # Similar size: within 15 % of each other's parameter count.
        assert abs(lstm["parameters"] - mingru["parameters"]) < 0.15 * lstm["parameters"]
        for res in (lstm, mingru):
            assert res["step_ms"] > 0 and np.isfinite(res["test_mse"])
            assert res["losses"].shape == (60,)
        # Both learn something on the tiny budget (the mean of the last 10 losses).
        assert mingru["losses"][-10:].mean() < 0.5 * mingru["losses"][:10].mean()
        assert lstm["losses"][-10:].mean() < lstm["losses"][:10].mean()
    assert_png(r["plot"])


def test_both_models_start_keeping_the_same_share_of_their_state():
    ex = load("07_parallel_vs_sequential")
    stack, _, how = ex.make_model("minGRU x3", 4)
    assert stack.forward_sequence is not None and how == "linear_scan per layer"
    assert [c.hidden_size for c in stack.cells] == [4, 4, 4]
    lstm, _, _ = ex.make_model("LSTM", 4)
    lstm = getattr(lstm, "cell", lstm)                 # the compiled cell, if any, wraps it
    f = lstm.bias_ih.data[4:8] + lstm.bias_hh.data[4:8]     # gates i, f, g, o
    np.testing.assert_array_equal(f, ex.KEEP_BIAS)
    for cell in stack.cells:                                # 1 - z_t = sigmoid(-bias_z)
        np.testing.assert_array_equal(cell.bias_ih.data[:4], -ex.KEEP_BIAS)


# --- every script from the command line ------------------------------------------------------

@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_from_the_command_line(name, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--steps", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout or "mse" in proc.stdout


@pytest.mark.parametrize("name", ["01_parity", "04_seq2seq_reverse"])
def test_examples_compiled_by_default_learn_what_eager_learns(name, tmp_path):
    """The examples run the compiled path unless --eager: the same training, to float32
    rounding (the examples compute in float32; the two paths sum in different orders)."""
    ex = load(name)
    compiled = ex.main(steps=40, seed=0, quick=True, out_dir=str(tmp_path))
    eager = ex.main(steps=40, seed=0, quick=True, out_dir=str(tmp_path), eager=True)
    assert compiled["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-6)
    assert compiled["loss_last"] == pytest.approx(eager["loss_last"], rel=1e-3)
