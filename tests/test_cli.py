"""The `tinygrad-rnn` train / sample / bench commands, run in-process on tiny budgets: the
model learns, resume is bit-identical (also after Ctrl-C), a custom cell trains by import
path, bad input or checkpoints fail clearly, and the dispatcher imports only the subcommand
asked for."""

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.cli import main
from tinygrad_rnn.serialization import LegacyFormatWarning
from tinygrad_rnn.training import corpus

TINY = ["--hidden", "16", "--embed", "8", "--seq-len", "16", "--batch", "4", "--lr", "0.01",
        "--eval-every", "10", "--sample-length", "20", "--no-progress"]


class MGUCell(tg.Cell):
    """Minimal gated unit, the DESIGN's custom cell: trained below by --cell <module>:MGUCell."""

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_f = nn.Linear(input_size + hidden_size, hidden_size)
        self.W_h = nn.Linear(input_size + hidden_size, hidden_size)

    def init_state(self, batch_size):
        return tg.zeros(batch_size, self.hidden_size)

    def forward(self, x, h):
        f = self.W_f(tg.cat([x, h], axis=-1)).sigmoid()
        h_tilde = self.W_h(tg.cat([x, f * h], axis=-1)).tanh()
        h = (1 - f) * h + f * h_tilde
        return h, h


class BlowUpCell(MGUCell):
    """Turns non-finite on its 40th step (the third training window of 16 steps)."""

    calls = 0

    def forward(self, x, h):
        BlowUpCell.calls += 1
        out, h = super().forward(x, h)
        if BlowUpCell.calls >= 40:
            out = out * np.float32(np.inf)
        return out, h


class NotACell:
    def __init__(self, input_size, hidden_size):
        pass


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """About 8,000 characters of Python source (the start of the stdlib's textwrap.py)."""
    path = tmp_path_factory.mktemp("text") / "tiny.py"
    with open(f"{corpus.stdlib_dir()}/textwrap.py", encoding="utf-8") as f:
        path.write_text(f.read()[:8000], encoding="utf-8")
    return str(path)


def train(tmp_path, text_file, *extra, name="run"):
    ckpt, metrics = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json"
    code = main(["train", "--text", text_file, *TINY, "--checkpoint", str(ckpt),
                 "--metrics-out", str(metrics), *extra])
    return code, ckpt, (json.loads(metrics.read_text()) if metrics.exists() else None)


def test_train_learns_and_reports_metrics(tmp_path, text_file, capsys):
    code, ckpt, m = train(tmp_path, text_file, "--steps", "40")
    assert code == 0
    losses = m["train_loss"]
    assert m["steps"] == 40 and len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5      # nats per character
    assert np.mean(losses[:3]) == pytest.approx(np.log(m["vocab_size"]), abs=0.3)   # uniform start
    assert [v["step"] for v in m["validation"]] == [10, 20, 30, 40]
    assert m["final_val_bits_per_char"] == m["validation"][-1]["bits_per_char"]
    assert m["validation"][-1]["bits_per_char"] < m["validation"][0]["bits_per_char"]
    assert m["unigram_bits_per_char"] > 3 and m["tokens_per_s"] > 0 and m["wall_time_s"] > 0
    out = capsys.readouterr().out
    assert "unigram baseline" in out and f"checkpoint saved to '{ckpt}'" in out
    saved = tg.load(ckpt)
    assert saved["trainer"]["step"] == 40 and saved["config"]["cell"] == "lstm"


def test_resume_is_bit_identical(tmp_path, text_file):
    """2N steps in one go == N steps, then --resume to 2N: same losses, weights, optimizer
    moments and carried state. The tiny text wraps around (epochs) inside the run. A constant
    rate: a cosine schedule spans the run's --steps, so a 25-step run decays faster."""
    constant = ("--lr-schedule", "constant")
    code, full_ckpt, full = train(tmp_path, text_file, "--steps", "50", *constant, name="full")
    assert code == 0
    code, half_ckpt, _ = train(tmp_path, text_file, "--steps", "25", *constant, name="half")
    assert code == 0
    code = main(["train", "--resume", "--steps", "50", "--checkpoint", str(half_ckpt),
                 "--metrics-out", str(tmp_path / "resumed.json"), "--no-progress",
                 "--eval-every", "10", "--sample-length", "20"])
    assert code == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["final_val_bits_per_char"] == full["final_val_bits_per_char"]
    assert_same_checkpoint(tg.load(full_ckpt), tg.load(half_ckpt))


def test_the_cosine_schedule_decays_the_rate_over_the_runs_steps(tmp_path, text_file):
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "20", "--lr", "0.01", name="cos")
    assert code == 0
    saved = tg.load(ckpt)
    assert saved["config"]["lr_schedule"] == "cosine"           # the default
    # the rate of the last step (19 of 20): the floor plus what is left of the half cosine
    want = 0.01 * (0.05 + 0.95 * (1 + math.cos(math.pi * 19 / 20)) / 2)
    assert saved["optimizer"]["hyper"]["lr"] == pytest.approx(want, rel=1e-12)
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "20", "--lr", "0.01",
                          "--lr-schedule", "constant", name="const")
    assert code == 0 and tg.load(ckpt)["optimizer"]["hyper"]["lr"] == 0.01


def test_the_schedule_cannot_change_on_resume(tmp_path, text_file, capsys):
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "5", name="sched")
    assert code == 0
    code = main(["train", "--resume", "--steps", "10", "--checkpoint", str(ckpt),
                 "--lr-schedule", "constant", "--no-progress"])
    assert code != 0
    assert "--lr-schedule constant (checkpoint: cosine)" in capsys.readouterr().err


def assert_same_checkpoint(a, b):
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, b["optimizer"]["state"][i][k])
    ha = tg.rnn.cell.tree_leaves(a["trainer"]["hidden"])
    hb = tg.rnn.cell.tree_leaves(b["trainer"]["hidden"])
    assert len(ha) == len(hb) == 2                   # one LSTM layer: (h, c)
    for x, y in zip(ha, hb):
        np.testing.assert_array_equal(x, y)
    assert a["trainer"]["step"] == b["trainer"]["step"]
    assert a["trainer"]["rng_sample"] == b["trainer"]["rng_sample"]


def test_ctrl_c_checkpoints_and_resume_continues_exactly(tmp_path, text_file, monkeypatch, capsys):
    code, full_ckpt, full = train(tmp_path, text_file, "--steps", "30", name="full")
    assert code == 0
    calls = {"n": 0}
    clip = tg.optim.clip_grad_norm

    def clip_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:                 # Ctrl-C arrives in the middle of step 12
            signal.raise_signal(signal.SIGINT)
        return clip(*args, **kwargs)

    monkeypatch.setattr(tg.optim, "clip_grad_norm", clip_then_interrupt)
    code, ckpt, m = train(tmp_path, text_file, "--steps", "30", name="cut")
    monkeypatch.undo()
    assert code == 130
    assert m["status"] == "interrupted" and m["steps"] == 12       # the step in flight finished
    assert "interrupted at step 12" in capsys.readouterr().out
    assert tg.load(ckpt)["trainer"]["step"] == 12
    code = main(["train", "--resume", "--checkpoint", str(ckpt), "--no-progress", "--eval-every", "10",
                 "--sample-length", "20", "--metrics-out", str(tmp_path / "after.json")])
    assert code == 0
    after = json.loads((tmp_path / "after.json").read_text())
    assert after["train_loss"] == full["train_loss"]
    assert_same_checkpoint(tg.load(full_ckpt), tg.load(ckpt))


def test_custom_cell_by_import_path(tmp_path, text_file):
    spec = f"{__name__}:MGUCell"
    code, ckpt, m = train(tmp_path, text_file, "--cell", spec, "--steps", "30", "--layers", "2")
    assert code == 0
    assert np.mean(m["train_loss"][-5:]) < np.mean(m["train_loss"][:5]) - 0.3
    saved = tg.load(ckpt)
    assert saved["config"]["cell"] == spec
    assert "rnn.cell.cells.1.W_f.weight" in saved["model"]
    assert saved["model"]["rnn.cell.cells.0.W_h.weight"].dtype == np.float32


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_stops_with_a_clear_error(tmp_path, text_file, capsys):
    BlowUpCell.calls = -1                     # the dry step that checks the cell
    # Eager: the cell counts its own calls, and the compiled path calls forward only to trace.
    code, ckpt, m = train(tmp_path, text_file, "--cell", f"{__name__}:BlowUpCell", "--steps", "10",
                          "--eval-every", "0", "--eager")
    assert code == 1
    assert "training diverged at step 3: the loss is nan" in capsys.readouterr().err
    assert m["status"] == "diverged" and m["steps"] == 2 and len(m["train_loss"]) == 2
    assert not ckpt.exists()                  # nothing half-broken was saved


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_min_cells_train_from_the_command_line(tmp_path, text_file, cell):
    # Two layers: the model's Unroll(Stack) runs the stack's forward_sequence (linear scans).
    code, ckpt, m = train(tmp_path, text_file, "--cell", cell, "--steps", "30", "--layers", "2")
    assert code == 0
    assert np.mean(m["train_loss"][-5:]) < np.mean(m["train_loss"][:5]) - 0.3
    saved = tg.load(ckpt)
    assert saved["config"]["cell"] == cell
    assert saved["model"]["rnn.cell.cells.1.weight_ih"].dtype == np.float32
    assert "rnn.cell.cells.1.weight_hh" not in saved["model"]      # gates read x_t only


@pytest.mark.parametrize("spec,message", [
    ("nosuchmodule_xyz:Cell", "cannot import module 'nosuchmodule_xyz'"),
    (f"{__name__}:Missing", "has no attribute 'Missing'"),
    (f"{__name__}:NotACell", "is not a subclass of tinygrad_rnn.Cell"),
    ("transformer", "expected rnn, lstm, gru, mingru, minlstm or package.module:ClassName"),
])
def test_bad_cell_spec(tmp_path, text_file, capsys, spec, message):
    code, _, _ = train(tmp_path, text_file, "--cell", spec, "--steps", "2")
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_bad_text_is_a_clear_error(tmp_path, capsys, kind):
    path = tmp_path / "data.txt"
    if kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(b"\x7fELF\x02\x01\x01\0\0\0" * 100)
    code = main(["train", "--text", str(path), "--steps", "1", "--checkpoint", str(tmp_path / "c.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.txt" in err and {"missing": "does not exist", "empty": "is empty",
                                  "binary": "looks binary"}[kind] in err
    assert not (tmp_path / "c.npz").exists()


def test_text_too_short_for_the_batch(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("abc\n" * 20)
    code = main(["train", "--text", str(path), "--batch", "32", "--seq-len", "50",
                 "--checkpoint", str(tmp_path / "c.npz")])
    assert code == 2
    assert "too short for --batch 32 x --seq-len 50" in capsys.readouterr().err


def test_resume_errors(tmp_path, text_file, capsys):
    code = main(["train", "--resume", "--checkpoint", str(tmp_path / "none.npz")])
    assert code == 2 and "no checkpoint at" in capsys.readouterr().err
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "3")
    assert code == 0
    capsys.readouterr()
    code = main(["train", "--resume", "--checkpoint", str(ckpt), "--hidden", "32"])
    assert code == 2 and "--hidden 32 (checkpoint: 16)" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text(open(text_file, encoding="utf-8").read()[::-1])
    code = main(["train", "--resume", "--checkpoint", str(ckpt), "--text", str(other)])
    assert code == 2 and "--text" in capsys.readouterr().err
    foreign = tmp_path / "foreign.safetensors"
    tg.save({"model": {}}, foreign)
    code = main(["train", "--resume", "--checkpoint", str(foreign)])
    assert code == 2 and "not a language-model checkpoint" in capsys.readouterr().err
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    code = main(["sample", "--checkpoint", str(truncated)])
    assert code == 2 and "truncated.safetensors' is not a readable checkpoint" in capsys.readouterr().err


def test_mismatched_weights_in_a_checkpoint(tmp_path, text_file, capsys):
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "2")
    saved = tg.load(ckpt)
    saved["config"]["hidden"] = 24                   # config and weights disagree
    tg.save(saved, ckpt)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "has shape" in err


def test_sample_from_checkpoint(tmp_path, text_file, capsys):
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "20")
    assert code == 0
    capsys.readouterr()
    args = ["sample", "--checkpoint", str(ckpt), "--prime", "def ", "--length", "50"]
    assert main(args + ["--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--seed", "3"]) == 0
    assert capsys.readouterr().out == first               # seeded: reproducible
    assert first.startswith("def ") and len(first) == len("def ") + 50 + 1
    vocab = set(tg.load(ckpt)["vocab"])
    assert set(first[4:-1]) <= vocab                      # never the unknown symbol
    assert main(args + ["--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(args + ["--temperature", "0", "--seed", "99"]) == 0
    assert capsys.readouterr().out == greedy              # greedy ignores the seed
    assert main(["sample", "--checkpoint", str(ckpt), "--temperature", "-1"]) == 2
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.npz")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_an_old_npz_checkpoint_still_samples_and_resumes(tmp_path, text_file, capsys):
    """Checkpoints of earlier versions (.npz) load with a note on how to convert them."""
    code, ckpt, _ = train(tmp_path, text_file, "--steps", "10")
    assert code == 0
    old = tmp_path / "old.npz"
    with pytest.warns(LegacyFormatWarning):
        tg.save(tg.load(ckpt), old)
    capsys.readouterr()
    args = ["--prime", "def ", "--length", "30", "--seed", "1"]
    assert main(["sample", "--checkpoint", str(ckpt), *args]) == 0
    from_safetensors = capsys.readouterr().out
    with pytest.warns(LegacyFormatWarning, match=r"tg\.serialization\.convert"):
        assert main(["sample", "--checkpoint", str(old), *args]) == 0
    assert capsys.readouterr().out == from_safetensors
    with pytest.warns(LegacyFormatWarning):
        assert main(["train", "--resume", "--steps", "12", "--checkpoint", str(old), "--no-progress",
                     "--eval-every", "0", "--sample-length", "0"]) == 0
        assert tg.load(old)["trainer"]["step"] == 12
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "old.safetensors")]) == 2
    assert f"'{old}' is an older checkpoint: pass --checkpoint {old}" in capsys.readouterr().err


@pytest.mark.parametrize("flags,path", [([], "compiled (tg.compile)"), (["--eager"], "eager")])
def test_bench_prints_a_row_per_cell(capsys, flags, path):
    assert main(["bench", "--seq-len", "5", "--batch", "2", "--input", "3", "--hidden", "4",
                 "--repeats", "1", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f", {path}, " in out[0]
    rows = [line.split()[0] for line in out[2:]]
    assert rows == ["rnn", "lstm", "gru"]
    assert main(["bench", "--cells", "lstm,transformer"]) == 2


def run_python(code):
    """A fresh interpreter, so that sys.modules shows what the command imported."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("argv,expected", [
    ([], set()),
    (["--help"], set()),
    (["train", "--help"], {"train"}),
    (["sample", "--help"], {"sample"}),
    (["gradflow", "--help"], {"gradflow"}),
    (["bench", "--help"], {"bench"}),
])
def test_the_dispatcher_imports_only_the_requested_subcommand(argv, expected):
    out = run_python(f"""
import contextlib, io, sys
from tinygrad_rnn.cli import SUBCOMMANDS, main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        main({argv!r})
    except SystemExit:
        pass
print(sorted(name for name in SUBCOMMANDS if "tinygrad_rnn.cli." + name in sys.modules))
print(buf.getvalue())
""")
    loaded, _, help_text = out.partition("\n")
    assert loaded == str(sorted(expected))
    if "--help" in argv and argv[0] == "--help":
        assert all(name in help_text for name in ("train", "sample", "gradflow", "bench"))
    elif argv:
        assert help_text.startswith(f"usage: tinygrad-rnn {argv[0]}") and "--" in help_text


def test_python_dash_m_and_an_unknown_subcommand(capsys):
    result = subprocess.run([sys.executable, "-m", "tinygrad_rnn", "bench", "--cells", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown cell(s) ['nope']" in result.stderr
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["transformer"])
    assert exc.value.code == 2 and "invalid choice: 'transformer'" in capsys.readouterr().err


def test_train_runs_compiled_by_default_with_the_eager_numbers(tmp_path, text_file):
    code, _, compiled = train(tmp_path, text_file, "--steps", "20", name="compiled")
    assert code == 0
    code, _, eager = train(tmp_path, text_file, "--steps", "20", "--eager", name="eager")
    assert code == 0
    # float32, 20 Adam steps: the two paths round differently, nothing more.
    np.testing.assert_allclose(compiled["train_loss"], eager["train_loss"], rtol=2e-3)
    assert compiled["train_loss"][-1] < compiled["train_loss"][0] - 0.5


def test_charlm_compile_shares_parameters_and_gives_the_eager_gradients():
    from tinygrad_rnn.compile import CompiledStack
    from tinygrad_rnn.training import CharLM
    tg.manual_seed(0)
    eager = CharLM(11, cell="lstm", hidden=8, layers=2, embed=4, dtype=np.float64)
    compiled = CharLM(11, cell="lstm", hidden=8, layers=2, embed=4, dtype=np.float64)
    compiled.load_state_dict(eager.state_dict())
    params_before = [id(p) for p in compiled.parameters()]
    compiled.compile()
    assert isinstance(compiled.rnn.cell, CompiledStack)
    assert [id(p) for p in compiled.parameters()] == params_before
    assert list(compiled.state_dict()) == list(eager.state_dict())
    ids = np.random.default_rng(0).integers(0, 11, size=(7, 3))
    results = []
    for model in (eager, compiled):
        logits, (state_1, state_2) = model(ids)
        (logits * logits).sum().backward()
        results.append([logits.data, state_2[1].data] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
