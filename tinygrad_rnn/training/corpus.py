"""Text for the character-level language model: the default corpus (Python's own standard
library source, present wherever Python is), the user's ``--text``, and the vocabulary.

Default corpus: the fixed lists `STDLIB_TRAIN` and `STDLIB_VALID` below, paths relative to
``sysconfig.get_paths()["stdlib"]``; every file exists, as a plain ``.py`` file, in CPython
3.10, 3.11, 3.12 and 3.13 (modules that became packages or were removed in that span, such
as ``re``, ``pathlib``, ``zipfile`` and ``sysconfig``, are left out). The split is by file:
no validation file is ever trained on. Fallback for trimmed installs: a missing file is
skipped with a warning, and only if a split keeps less than half of its listed files does
loading stop with an error that suggests ``--text``.
"""

import hashlib
import os
import sysconfig
import warnings
from dataclasses import dataclass

import numpy as np

# ~1.3 MB of code, docstrings and comments in 40 modules (sizes from CPython 3.11).
STDLIB_TRAIN = (
    "argparse.py", "ast.py", "base64.py", "calendar.py", "cmd.py", "codecs.py",
    "collections/__init__.py", "configparser.py", "contextlib.py", "copy.py", "csv.py",
    "dataclasses.py", "difflib.py", "enum.py", "fileinput.py", "fnmatch.py", "functools.py",
    "gettext.py", "glob.py", "gzip.py", "hashlib.py", "inspect.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "operator.py", "optparse.py", "os.py",
    "pprint.py", "random.py", "selectors.py", "shutil.py", "socket.py", "statistics.py",
    "string.py", "subprocess.py", "tempfile.py", "threading.py", "tokenize.py", "traceback.py",
)
# ~110 KB held out: modules of the same kind, none of them in the training list.
STDLIB_VALID = (
    "bisect.py", "fractions.py", "heapq.py", "queue.py", "sched.py", "shlex.py", "textwrap.py",
    "weakref.py",
)

UNK = "\ufffd"      # shown for characters outside the vocabulary (the replacement character)


class CorpusError(ValueError):
    """The training text cannot be used (missing, unreadable, empty or binary)."""


@dataclass
class Corpus:
    train: str
    valid: str
    description: str            # one line for the log: where the text came from
    train_files: tuple = ()
    valid_files: tuple = ()

    def fingerprint(self):
        """A hash of both splits: resuming checks that the text has not changed."""
        h = hashlib.sha256()
        h.update(self.train.encode("utf-8"))
        h.update(b"\0")
        h.update(self.valid.encode("utf-8"))
        return h.hexdigest()[:16]


# --- reading -------------------------------------------------------------------------------

def _read_utf8(path):
    """The text of ``path``; CorpusError if it cannot be read, looks binary, or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CorpusError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if b"\0" in raw[:8192]:
        raise CorpusError(f"'{path}' looks binary (it contains NUL bytes); expected a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"'{path}' is not UTF-8 text (invalid byte at offset {exc.start}); "
                          "expected a UTF-8 text file") from None


def stdlib_dir():
    return sysconfig.get_paths()["stdlib"]


def stdlib_corpus(root=None):
    """The default corpus: `STDLIB_TRAIN` / `STDLIB_VALID` read from the standard library."""
    root = root or stdlib_dir()
    if not os.path.isdir(root):
        raise CorpusError(f"the Python standard library source was not found at '{root}'; "
                          "pass your own text with --text PATH")
    splits = []
    for name, files in (("training", STDLIB_TRAIN), ("validation", STDLIB_VALID)):
        texts, found, missing = [], [], []
        for rel in files:
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                missing.append(rel)
                continue
            texts.append(_read_utf8(path))
            found.append(rel)
        if len(found) * 2 < len(files):
            raise CorpusError(f"only {len(found)} of the {len(files)} {name} files of the default "
                              f"corpus exist under '{root}' (is the standard library source "
                              f"installed?); missing: {', '.join(missing[:8])}. Pass your own text "
                              "with --text PATH")
        if missing:
            warnings.warn(f"default corpus: {len(missing)} {name} file(s) missing under '{root}' "
                          f"and skipped: {', '.join(missing)}", stacklevel=2)
        splits.append(("\n".join(texts), tuple(found)))
    (train, train_files), (valid, valid_files) = splits
    desc = (f"the Python standard library source under {root} ({len(train_files)} training "
            f"files, {len(valid_files)} validation files)")
    return Corpus(train, valid, desc, train_files, valid_files)


def _text_files(folder):
    """Every regular file under ``folder``, recursively, sorted; hidden entries skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


def text_corpus(path, valid_fraction=0.1):
    """The user's ``--text``: one UTF-8 file, or a folder of them.

    A folder is split by file (every 10th file, in sorted order, is held out), so the model
    is validated on files it never saw; files in it that are binary or not UTF-8 are skipped
    with a warning. A single file (or a folder with fewer than 2 usable files) is split by
    position: its last ``valid_fraction`` (cut at a line break) is held out.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CorpusError(f"--text: '{path}' does not exist")
    if os.path.isdir(path):
        texts, names, skipped = [], [], []
        for f in _text_files(path):
            try:
                text = _read_utf8(f)
            except CorpusError as exc:
                skipped.append(str(exc))
                continue
            if text:
                texts.append(text)
                names.append(os.path.relpath(f, path))
        if skipped:
            warnings.warn(f"--text: skipped {len(skipped)} file(s) that are not UTF-8 text, e.g. "
                          f"{skipped[0]}", stacklevel=2)
        if not texts:
            raise CorpusError(f"--text: the folder '{path}' holds no non-empty UTF-8 text files")
        if len(texts) >= 2:
            every = max(2, round(1 / valid_fraction))
            held = [i for i in range(len(texts)) if i % every == every - 1] or [len(texts) - 1]
            train = [t for i, t in enumerate(texts) if i not in held]
            valid = [texts[i] for i in held]
            return Corpus("\n".join(train), "\n".join(valid),
                          f"{len(texts)} files under '{path}' ({len(train)} training, "
                          f"{len(valid)} validation)",
                          tuple(n for i, n in enumerate(names) if i not in held),
                          tuple(names[i] for i in held))
        text, label = texts[0], f"'{os.path.join(path, names[0])}'"
    else:
        text, label = _read_utf8(path), f"'{path}'"
    if not text.strip():
        raise CorpusError(f"--text: {label} is empty")
    train, valid = _split_by_position(text, valid_fraction)
    return Corpus(train, valid, f"{label} ({len(text):,} characters; the last "
                  f"{len(valid):,} held out for validation)", (label,), (label,))


def _split_by_position(text, fraction):
    cut = int(len(text) * (1 - fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > len(text) // 2:
        cut = newline + 1
    return text[:cut], text[cut:]


# --- vocabulary ----------------------------------------------------------------------------

class Vocab:
    """Characters <-> integer ids. Id 0 is the unknown symbol; ids 1.. are ``chars`` in order.

    ``Vocab.from_text(train)`` takes the sorted distinct characters of the training split;
    any other character (say, in the validation split or a prime) encodes to 0.
    """

    def __init__(self, chars):
        chars = "".join(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("Vocab: characters must be distinct")
        self.chars = chars
        self.itos = [UNK] + list(chars)
        # Sorted code points and their ids: encoding is a vectorised searchsorted.
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(codes)
        self._codes = codes[order]
        self._ids = (order + 1).astype(np.int32)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        """int32 ids of ``text``, 0 for characters outside the vocabulary."""
        if not text:
            return np.zeros(0, dtype=np.int32)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if not self._codes.size:
            return np.zeros(codes.size, dtype=np.int32)
        pos = np.clip(np.searchsorted(self._codes, codes), 0, self._codes.size - 1)
        found = self._codes[pos] == codes
        return np.where(found, self._ids[pos], 0).astype(np.int32)

    def decode(self, ids):
        return "".join(self.itos[int(i)] for i in ids)

    def unigram_bits(self, train_ids, eval_ids):
        """Bits per character of the unigram model (training-split character frequencies,
        add-one smoothed over the vocabulary) on ``eval_ids``: the baseline to beat."""
        counts = np.bincount(train_ids, minlength=len(self)).astype(np.float64) + 1.0
        logp = np.log2(counts / counts.sum())
        return float(-logp[eval_ids].mean())
