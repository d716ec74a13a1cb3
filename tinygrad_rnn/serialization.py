"""``tg.save(obj, path)`` / ``tg.load(path)``: checkpoints as ``.npz`` files that load without
running code.

``obj`` is a (nested) dict with string keys whose values are numpy arrays, numpy scalars,
Python numbers, strings, booleans, None, and lists/tuples/dicts of those: a model's
``state_dict()``, an optimizer's, and any metadata, in one file. Arrays are stored as npz
members; everything else, and the nesting, goes into a JSON manifest kept as a uint8 array,
so ``np.load(..., allow_pickle=False)`` reads it all and loading can never execute code
(unlike pickle). Tuples and dicts come back as tuples and (insertion-ordered) dicts.

Writes are atomic: the file is written to a temporary name in the same directory, flushed
to disk (fsync) and renamed over the target (``os.replace``), so a crash or Ctrl-C during a
save leaves the previous checkpoint intact. A file that is not a readable checkpoint
(truncated, corrupt, or not an npz) raises `CheckpointError` naming the file.
"""

import json
import os
import secrets
import zipfile

import numpy as np

from .tensor import Tensor

MANIFEST_KEY = "__tinygrad_rnn_manifest__"
FORMAT = "tinygrad_rnn.save"
VERSION = 1


class CheckpointError(ValueError):
    """A file could not be read as a checkpoint (truncated, corrupt, or a foreign format)."""


# --- encoding ------------------------------------------------------------------------------

class _Encoder:
    """Turns the object tree into a JSON-able manifest plus a dict of named arrays."""

    def __init__(self):
        self.arrays = {}

    def _store(self, arr, where):
        if arr.dtype.hasobject:
            raise TypeError(f"tg.save: the array at {where} has dtype object, which cannot be "
                            "stored without pickle; convert it to a numeric or string array")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = arr
        return key

    def encode(self, value, where):
        if isinstance(value, Tensor):
            raise TypeError(f"tg.save: {where} is a Tensor; save arrays (tensor.data, or "
                            "module.state_dict()), so that loading needs no autograd objects")
        if isinstance(value, np.ndarray):
            return {"t": "array", "k": self._store(value, where)}
        if isinstance(value, np.generic):
            return {"t": "npscalar", "k": self._store(np.asarray(value), where)}
        if value is None:
            return {"t": "none"}
        if isinstance(value, bool):
            return {"t": "bool", "v": value}
        if isinstance(value, int):
            return {"t": "int", "v": value}
        if isinstance(value, float):
            # JSON has no NaN/inf; repr round-trips every float exactly.
            return {"t": "float", "v": repr(value)}
        if isinstance(value, str):
            return {"t": "str", "v": value}
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return {"t": "tuple" if isinstance(value, tuple) else "list", "v": items}
        if isinstance(value, dict):
            out = []
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"tg.save: dict keys must be strings, got {type(k).__name__} "
                                    f"key {k!r} at {where}")
                out.append([k, self.encode(v, f"{where}[{k!r}]")])
            return {"t": "dict", "v": out}
        raise TypeError(f"tg.save: cannot store {type(value).__name__} at {where}; expected "
                        "numpy arrays, numbers, strings, booleans, None, or lists/tuples/dicts "
                        "of those")


def _decode(node, arrays, path):
    t = node["t"]
    if t == "array":
        return arrays[node["k"]]
    if t == "npscalar":
        return arrays[node["k"]][()]
    if t == "none":
        return None
    if t in ("bool", "int", "str"):
        return node["v"]
    if t == "float":
        return float(node["v"])
    if t in ("list", "tuple"):
        items = [_decode(v, arrays, path) for v in node["v"]]
        return tuple(items) if t == "tuple" else items
    if t == "dict":
        return {k: _decode(v, arrays, path) for k, v in node["v"]}
    raise CheckpointError(f"tg.load: '{path}' has an unknown entry type {t!r} in its manifest")


# --- save / load ---------------------------------------------------------------------------

def save(obj, path):
    """Write ``obj`` (a dict, see the module docstring) to ``path`` atomically.

    The file name is used as given (no ``.npz`` is appended). The directory must exist.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"tg.save: expected a dict (e.g. {{'model': model.state_dict()}}), got "
                        f"{type(obj).__name__}")
    path = os.fspath(path)
    enc = _Encoder()
    manifest = {"format": FORMAT, "version": VERSION, "root": enc.encode(obj, "obj")}
    blob = json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    members = dict(enc.arrays)
    members[MANIFEST_KEY] = np.frombuffer(blob, dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tg.save: directory '{directory}' does not exist (for '{path}')")
    # A unique name beside the target (same filesystem, so the rename is atomic); os.open with
    # 0o666 lets the umask set the permissions, as for any file the user creates.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Ctrl-C included: the half-written temporary goes, the old checkpoint stays.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _write_npz(f, members):
    np.savez(f, **members)


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible on every platform (Windows), so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """Read a file written by ``tg.save`` (a plain ``np.savez`` file loads as a flat dict).

    Never unpickles. A missing file raises FileNotFoundError; a truncated, corrupt or
    foreign file raises `CheckpointError` naming it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tg.load: no such file '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"tg.load: '{path}' is a directory, expected a checkpoint file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"tg.load: '{path}' holds a single .npy array, not a checkpoint "
                                  "written by tg.save")
        with npz:
            arrays = {k: npz[k] for k in npz.files}    # reads (and CRC-checks) every member now
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"tg.load: '{path}' is not a readable checkpoint (truncated or "
                              f"corrupt?): {type(exc).__name__}: {exc}") from None
    blob = arrays.pop(MANIFEST_KEY, None)
    if blob is None:
        return arrays
    try:
        manifest = json.loads(blob.tobytes().decode("utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        if manifest.get("version", 0) > VERSION:
            raise CheckpointError(f"tg.load: '{path}' was written by a newer version (format "
                                  f"version {manifest['version']}, this reads up to {VERSION})")
        return _decode(manifest["root"], arrays, path)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"tg.load: '{path}' has a damaged manifest: "
                              f"{type(exc).__name__}: {exc}") from None
