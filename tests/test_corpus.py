"""The training text: the default standard-library corpus, --text files and folders, the
vocabulary, and the truncated-BPTT streams."""

import os
import warnings

import numpy as np
import pytest

from tinygrad_rnn.training import corpus as C
from tinygrad_rnn.training.loop import Streams, TrainError


def test_default_corpus_files_exist_and_the_split_is_by_file():
    assert not set(C.STDLIB_TRAIN) & set(C.STDLIB_VALID)
    root = C.stdlib_dir()
    for rel in C.STDLIB_TRAIN + C.STDLIB_VALID:
        assert os.path.isfile(os.path.join(root, rel)), rel
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing missing on this install
        corpus = C.stdlib_corpus()
    assert len(corpus.train) > 1_000_000 and len(corpus.valid) > 80_000
    assert corpus.train_files == C.STDLIB_TRAIN and corpus.valid_files == C.STDLIB_VALID
    with open(os.path.join(root, "textwrap.py"), encoding="utf-8") as f:
        held_out = f.read()
    assert held_out in corpus.valid and held_out not in corpus.train
    assert corpus.fingerprint() == C.stdlib_corpus().fingerprint()


def _fake_stdlib(tmp_path, files):
    for rel in files:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {rel}\ndef f():\n    return 1\n", encoding="utf-8")
    return str(tmp_path)


def test_default_corpus_fallback_skips_a_few_missing_files(tmp_path):
    root = _fake_stdlib(tmp_path, C.STDLIB_TRAIN[1:] + C.STDLIB_VALID)
    with pytest.warns(UserWarning, match=r"1 training file\(s\) missing .* skipped: argparse.py"):
        corpus = C.stdlib_corpus(root)
    assert "argparse.py" not in corpus.train_files and len(corpus.train_files) == len(C.STDLIB_TRAIN) - 1


def test_default_corpus_fails_clearly_when_most_files_are_missing(tmp_path):
    root = _fake_stdlib(tmp_path, C.STDLIB_TRAIN[:3] + C.STDLIB_VALID)
    with pytest.raises(C.CorpusError, match=r"only 3 of the 40 training files .* --text PATH"):
        C.stdlib_corpus(root)
    with pytest.raises(C.CorpusError, match="standard library source was not found"):
        C.stdlib_corpus(str(tmp_path / "nowhere"))


def test_text_file_is_split_by_position_at_a_line_break(tmp_path):
    path = tmp_path / "a.txt"
    lines = [f"line {i}: {'x' * (i % 7)}\n" for i in range(200)]
    path.write_text("".join(lines), encoding="utf-8")
    corpus = C.text_corpus(path)
    assert corpus.train + corpus.valid == "".join(lines)
    assert corpus.train.endswith("\n") and corpus.valid.startswith("line ")
    assert 0.05 < len(corpus.valid) / len("".join(lines)) < 0.15


def test_text_folder_is_split_by_file_and_skips_binaries(tmp_path):
    for i in range(12):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i}\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / ".hidden").write_text("secret\n")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) .*image.png"):
        corpus = C.text_corpus(tmp_path)
    assert corpus.valid_files == ("f09.txt",)            # every 10th file in sorted order
    assert "file 9" in corpus.valid and "file 9" not in corpus.train
    assert "secret" not in corpus.train


@pytest.mark.parametrize("kind", ["missing", "empty", "blank", "binary", "latin1", "empty_folder"])
def test_bad_text_errors_clearly(tmp_path, kind):
    path = tmp_path / "input.txt"
    expected = {
        "missing": "does not exist",
        "empty": "is empty",
        "blank": "is empty",
        "binary": "looks binary",
        "latin1": "is not UTF-8 text",
        "empty_folder": "holds no non-empty UTF-8 text files",
    }[kind]
    if kind == "empty":
        path.write_text("")
    elif kind == "blank":
        path.write_text("  \n\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin1":
        path.write_bytes("café crème\n".encode("latin-1"))
    elif kind == "empty_folder":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "zero.txt").write_text("")
    with pytest.raises(C.CorpusError, match=expected) as info:
        C.text_corpus(path)
    assert "input.txt" in str(info.value) or "folder" in str(info.value)


def test_vocab_encode_decode_and_unknown():
    v = C.Vocab.from_text("hello world")
    assert v.chars == " dehlorw" and len(v) == 9
    ids = v.encode("hello")
    assert ids.dtype == np.int32 and list(ids) == [4, 3, 5, 5, 6]
    assert v.decode(ids) == "hello"
    assert list(v.encode("h€z")) == [4, 0, 0]              # outside the vocabulary: 0
    assert v.decode(v.encode("hz")) == "h" + C.UNK
    assert len(v.encode("")) == 0
    wide = C.Vocab.from_text("😀a\u00e9")
    assert wide.decode(wide.encode("a😀\u00e9")) == "a😀\u00e9"


def test_unigram_baseline_is_the_smoothed_frequency_model():
    v = C.Vocab.from_text("aab")
    train = v.encode("aab")
    # counts + 1 over [unk, a, b] = [1, 3, 2] / 6
    bits = v.unigram_bits(train, v.encode("ab"))
    assert bits == pytest.approx(-(np.log2(3 / 6) + np.log2(2 / 6)) / 2)


def test_streams_are_consecutive_windows_that_wrap():
    ids = np.arange(2 * 23, dtype=np.int32)        # two streams of 23 characters
    s = Streams(ids, batch=2, seq_len=5)
    assert s.windows == 4                          # (23 - 1) // 5
    x0, y0, fresh0 = s.window(0)
    x1, y1, fresh1 = s.window(1)
    assert fresh0 and not fresh1
    assert list(x0[:, 0]) == [0, 1, 2, 3, 4] and list(y0[:, 0]) == [1, 2, 3, 4, 5]
    assert list(x0[:, 1]) == [23, 24, 25, 26, 27]  # the second stream starts halfway
    assert x1[0, 0] == y0[-1, 0]                   # the next window continues the text
    x4, _, fresh4 = s.window(4)                    # epoch 2 starts over
    assert fresh4 and np.array_equal(x4, x0)
    with pytest.raises(TrainError, match=r"too short for --batch 2 x --seq-len 30"):
        Streams(ids, batch=2, seq_len=30)
