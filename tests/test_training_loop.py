"""The pieces of ``tinygrad-rnn train``, each alone: the batches cover the text as specified,
one step lowers the loss, the evaluation equals a hand computation, a checkpoint restores a
run bit for bit, and ``--cell`` imports a cell file from the current directory without
touching ``sys.path``. The whole command is tested in test_cli.py."""

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import optim
from tinygrad_rnn.training import corpus as C
from tinygrad_rnn.training.checkpoint import (
    TrainerState,
    load_run_checkpoint,
    model_from_checkpoint,
    restore_trainer,
    save_run_checkpoint,
)
from tinygrad_rnn.training.loop import Streams, evaluate, train_step
from tinygrad_rnn.training.model import CellSpecError, CharLM, resolve_cell

TEXT = "def f(x):\n    return x * 2\n\nclass A:\n    pass\n" * 6


def tiny_model(vocab_size, dtype=np.float64, seed=0, cell="lstm"):
    tg.manual_seed(seed)
    return CharLM(vocab_size, cell=cell, hidden=6, layers=1, embed=4, dtype=dtype)


# --- batches -------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 5), seq_len=st.integers(1, 7), extra=st.integers(0, 40))
def test_streams_cover_each_stream_once_per_epoch(batch, seq_len, extra):
    length = seq_len + 1 + extra                      # characters per stream
    ids = np.arange(batch * length + batch - 1)       # the tail that does not fill a stream is dropped
    s = Streams(ids, batch, seq_len)
    assert s.windows == (length - 1) // seq_len
    seen_x, seen_y = [], []
    for step in range(s.windows):
        x, y, fresh = s.window(step)
        assert x.shape == y.shape == (seq_len, batch)
        assert fresh == (step == 0)
        np.testing.assert_array_equal(y, x + 1)       # targets are the inputs shifted by one
        seen_x.append(x)
        seen_y.append(y)
    xs = np.concatenate(seen_x)                       # (windows * T, B): one epoch, in order
    for b in range(batch):                            # stream b is the b-th contiguous slice
        np.testing.assert_array_equal(xs[:, b], np.arange(len(xs)) + b * length)
    assert np.concatenate(seen_y).max() < batch * length    # never reads past the streams
    np.testing.assert_array_equal(s.window(s.windows)[0], seen_x[0])   # the next epoch starts over
    assert s.window(s.windows)[2]


# --- one step ------------------------------------------------------------------------------

def test_one_step_lowers_the_loss_and_cuts_the_state_from_the_graph():
    vocab = C.Vocab.from_text(TEXT)
    ids = vocab.encode(TEXT)
    x, y, _ = Streams(ids, batch=3, seq_len=10).window(0)
    model = tiny_model(len(vocab))
    opt = optim.Adam(model.parameters(), lr=0.05)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    first, state = train_step(model, opt, x, y, None, clip=1.0)
    assert first == pytest.approx(math.log(len(vocab)), abs=0.3)        # a fresh model is near uniform
    assert all(not np.array_equal(p.data, before[name]) for name, p in model.named_parameters())
    assert all(not h.requires_grad and h._ctx is None for h in tg.rnn.cell.tree_leaves(state))
    later = [train_step(model, opt, x, y, None, clip=1.0)[0] for _ in range(5)]
    assert later[-1] < first - 0.5


def test_one_step_equals_the_steps_written_out():
    vocab = C.Vocab.from_text(TEXT)
    x, y, _ = Streams(vocab.encode(TEXT), batch=2, seq_len=8).window(1)
    results = []
    for by_hand in (False, True):
        model = tiny_model(len(vocab), seed=3)
        opt = optim.Adam(model.parameters(), lr=0.01)
        if by_hand:
            logits, _ = model(x, None)
            loss = tg.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            optim.clip_grad_norm(model.parameters(), 0.5)
            opt.step()
            value = float(loss.data)
        else:
            value, _ = train_step(model, opt, x, y, None, clip=0.5)
        results.append((value, [p.data.copy() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_loss_raises_before_any_weight_changes():
    vocab = C.Vocab.from_text(TEXT)
    x, y, _ = Streams(vocab.encode(TEXT), batch=2, seq_len=8).window(0)
    model = tiny_model(len(vocab))
    model.readout.bias.data[:] = np.nan
    opt = optim.Adam(model.parameters(), lr=0.01)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        train_step(model, opt, x, y, None)
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.data)


# --- evaluation ----------------------------------------------------------------------------

def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("seq_len,batch", [(5, 3), (7, 2), (50, 64)])
def test_evaluate_equals_a_hand_computation(seq_len, batch):
    """Bits/char over the streams, the state carried across windows, equals one unbroken
    pass over each stream scored with numpy's log-softmax."""
    vocab = C.Vocab.from_text(TEXT)
    ids = vocab.encode(TEXT[:97])
    model = tiny_model(len(vocab))
    bits, targets = evaluate(model, ids, seq_len, batch=batch)
    nb = max(1, min(batch, (len(ids) - 1) // seq_len))
    length = len(ids) // nb
    streams = ids[:length * nb].reshape(nb, length).T                  # (L, nb)
    with tg.no_grad():
        logits, _ = model(streams[:-1], None)                           # one pass, no windows
    logp = log_softmax(logits.data)
    nll = -np.take_along_axis(logp, streams[1:, :, None], axis=-1).sum()
    assert bits == pytest.approx(nll / streams[1:].size / np.log(2), rel=1e-10)
    np.testing.assert_array_equal(targets, streams[1:].ravel())
    assert model.training                                               # mode restored


def test_evaluate_stops_when_asked():
    vocab = C.Vocab.from_text(TEXT)
    assert evaluate(tiny_model(len(vocab)), vocab.encode(TEXT), 5, stop=lambda: True) is None


# --- checkpoint and resume -----------------------------------------------------------------

class FakeCorpus:
    description, train_files, valid_files = "a test text", ["a.py"], ["b.py"]

    def fingerprint(self):
        return "fingerprint"


def run_steps(model, opt, streams, trainer, n, clip=1.0):
    for _ in range(n):
        x, y, fresh = streams.window(trainer.step)
        value, trainer.hidden = train_step(model, opt, x, y, None if fresh else trainer.hidden, clip)
        trainer.train_loss.append(value)
        trainer.step += 1


def test_a_restored_run_continues_bit_identically(tmp_path):
    vocab = C.Vocab.from_text(TEXT)
    streams = Streams(vocab.encode(TEXT), batch=2, seq_len=9)
    config = {"cell": "gru", "hidden": 6, "layers": 1, "embed": 4, "dtype": "float32"}

    def fresh_run():
        model = tiny_model(len(vocab), dtype=np.float32, cell="gru")
        return model, optim.Adam(model.parameters(), lr=0.02), TrainerState(), np.random.default_rng(7)

    model, opt, trainer, sample_rng = fresh_run()
    run_steps(model, opt, streams, trainer, 8)
    sample_rng.random(3)
    path = str(tmp_path / "sub" / "run.safetensors")
    trainer.val.append([8, 1.5])
    trainer.wall_time_s = 2.5
    save_run_checkpoint(path, config=config, vocab=vocab, corpus=FakeCorpus(), model=model,
                        optimizer=opt, trainer=trainer, sample_rng=sample_rng)
    run_steps(model, opt, streams, trainer, 7)
    expected_rng = sample_rng.random(4)

    tg.manual_seed(123)                                       # disturb the global generator
    ckpt = load_run_checkpoint(path)
    model2, vocab2 = model_from_checkpoint(ckpt, path)
    assert vocab2.chars == vocab.chars and model2.dtype == np.float32
    opt2 = optim.Adam(model2.parameters(), lr=0.02)
    rng2 = np.random.default_rng(0)
    trainer2 = restore_trainer(ckpt, path, opt2, rng2)
    assert (trainer2.step, trainer2.val, trainer2.wall_time_s) == (8, [[8, 1.5]], 2.5)
    assert trainer2.train_loss == trainer.train_loss[:8]
    run_steps(model2, opt2, streams, trainer2, 7)
    assert trainer2.train_loss == trainer.train_loss
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for a, b in zip(tg.rnn.cell.tree_leaves(trainer.hidden), tg.rnn.cell.tree_leaves(trainer2.hidden)):
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(rng2.random(4), expected_rng)


def test_a_foreign_or_damaged_checkpoint_is_a_clear_error(tmp_path):
    path = str(tmp_path / "other.safetensors")
    tg.save({"model": {}}, path)
    with pytest.raises(tg.CheckpointError, match="not a language-model checkpoint"):
        load_run_checkpoint(path)
    vocab = C.Vocab.from_text(TEXT)
    model = tiny_model(len(vocab))
    opt = optim.Adam(model.parameters(), lr=0.01)
    save_run_checkpoint(path, config={"cell": "lstm", "hidden": 6, "layers": 1, "embed": 4,
                                      "dtype": "float64"},
                        vocab=vocab, corpus=FakeCorpus(), model=model, optimizer=opt,
                        trainer=TrainerState(), sample_rng=np.random.default_rng(0))
    ckpt = load_run_checkpoint(path)
    del ckpt["trainer"]["rng_sample"]
    with pytest.raises(tg.CheckpointError, match="trainer state is incomplete or damaged: KeyError"):
        restore_trainer(ckpt, path, optim.Adam(model.parameters(), lr=0.01), np.random.default_rng(0))


# --- --cell: user cells by import ----------------------------------------------------------

CELL_SOURCE = '''
from tinygrad_rnn import GRUCell


class MyCell(GRUCell):
    """A GRU by another name, defined in a file of the current directory."""
'''


@pytest.fixture
def cell_dir(tmp_path, monkeypatch):
    """A fresh current directory; modules loaded from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_cell_file_in_the_current_directory_loads_without_touching_sys_path(cell_dir):
    (cell_dir / "mycells_9b.py").write_text(CELL_SOURCE)
    pkg = cell_dir / "mypkg_9b"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cells.py").write_text(CELL_SOURCE)
    path_before = list(sys.path)
    for spec, file in (("mycells_9b:MyCell", cell_dir / "mycells_9b.py"),
                       ("mypkg_9b.cells:MyCell", pkg / "cells.py")):
        cls = resolve_cell(spec)
        assert cls.__name__ == "MyCell" and sys.modules[cls.__module__].__file__ == str(file)
        model = CharLM(5, cell=spec, hidden=4, layers=2, embed=3)
        logits, _ = model(np.zeros((3, 2), dtype=np.int32))
        assert logits.shape == (3, 2, 5)
    assert sys.path == path_before


def test_cell_import_errors_name_the_spec_and_how_to_fix(cell_dir):
    with pytest.raises(CellSpecError) as info:
        resolve_cell("nowhere_9b:Cell")
    message = str(info.value)
    assert "--cell nowhere_9b:Cell" in message and "nowhere_9b.py" in message
    assert str(cell_dir) in message and "PYTHONPATH" in message
    (cell_dir / "broken_9b.py").write_text("import not_installed_9b\n")
    with pytest.raises(CellSpecError, match=r"broken_9b.py: ModuleNotFoundError: .*not_installed_9b"):
        resolve_cell("broken_9b:Cell")
    assert "broken_9b" not in sys.modules                  # a failed import leaves nothing behind
    with pytest.raises(CellSpecError, match="cannot import module 'tinygrad_rnn.no_such_9b'"):
        resolve_cell("tinygrad_rnn.no_such_9b:Cell")
