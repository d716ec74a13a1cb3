"""The on-disk cache of generated loops: one Python file per generated source, named by its
hash, imported from there so that Numba's ``cache=True`` keeps the machine code beside it
(``__pycache__``) across processes. The directory is ``$TINYGRAD_RNN_CACHE_DIR``, else
``$XDG_CACHE_HOME/tinygrad_rnn``, else ``~/.cache/tinygrad_rnn``; if it cannot be written, a
temporary directory (then only this process gains)."""

import hashlib
import importlib.util
import os
import sys
import tempfile

import numba
import numpy as np


def cache_dir():
    root = os.environ.get("TINYGRAD_RNN_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tinygrad_rnn")
    return os.path.join(root, "compiled")


# Part of the cache key: machine code compiled under other settings is not reused.
LLVM_OPTIONS = ("-runtime-memory-check-threshold=512", "-vectorize-memory-check-threshold=512")


def source_key(source):
    """The file name's hash: the source and the versions that shape its machine code."""
    text = f"{source}\n# numba {numba.__version__} numpy {np.__version__} llvm {' '.join(LLVM_OPTIONS)}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write(directory, name, source):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)           # atomic: another process never reads half a file
    return path


_llvm_tuned = False


def _tune_llvm():
    """Let LLVM vectorize loops that touch many arrays (once per process).

    A fused step reads and writes a dozen arrays; LLVM cannot prove they do not overlap, so
    it vectorizes only behind run-time overlap checks, and by default gives up past 8 of
    them (and past 128 at all): the LSTM's gate loop then ran scalar, 5x slower. The options
    only raise those limits (code-generation heuristics); they change no result.
    """
    global _llvm_tuned
    if not _llvm_tuned:
        import llvmlite.binding as llvm
        for option in LLVM_OPTIONS:
            llvm.set_option("tinygrad_rnn", option)
        _llvm_tuned = True


def load(source):
    """The module of a generated source (written to the cache if new, imported once)."""
    key = source_key(source)
    module_name = f"tinygrad_rnn_compiled_{key}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    name = f"seq_{key}.py"
    try:
        path = _write(cache_dir(), name, source)
    except OSError:
        path = _write(tempfile.mkdtemp(prefix="tinygrad_rnn_compiled_"), name, source)
    _tune_llvm()
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
