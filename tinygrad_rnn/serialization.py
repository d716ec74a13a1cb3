"""``tg.save(obj, path)`` / ``tg.load(path)``: checkpoints as ``.safetensors`` files that load
without running code, and that PyTorch, JAX and the Hugging Face tools can read.

``obj`` is a (nested) dict with string keys whose values are numpy arrays, numpy scalars,
Python numbers, strings, booleans, None, and lists/tuples/dicts of those: a model's
``state_dict()``, an optimizer's, and any metadata (config, step, RNG state, corpus
identity), in one file. Tuples and dicts come back as tuples and (insertion-ordered) dicts.

The file format. safetensors holds a flat ``{name: array}`` plus a ``{str: str}`` metadata
dict, so the tree is split in two:

* every array becomes one tensor named by its path in the tree (``model/rnn.cell.weight_hh``,
  ``optimizer/state/0/exp_avg``, ``trainer/hidden/0``), so ``safetensors.numpy.load_file(path)``
  shows the weights under readable names;
* everything else, and the nesting, is a JSON manifest in the metadata under the key
  ``tinygrad_rnn``, which also records each tensor's dtype, shape and CRC-32 (safetensors
  itself has no checksum; ours catches a flipped byte instead of loading wrong weights).

Arrays of a dtype safetensors has no name for (strings, complex128, big-endian) are stored
as their raw bytes (uint8) and rebuilt from the manifest's dtype. Object arrays are refused:
they need pickle.

Which file is which. ``tg.save`` writes safetensors unless the path ends in ``.npz``, which
writes the format of earlier versions (a zip of ``.npy`` members with the manifest as a uint8
array) with a `LegacyFormatWarning`. ``tg.load`` tells the formats apart by their first bytes,
whatever the name: ``.npz`` files (ours or any ``np.savez``) still load, with a warning saying
how to convert them (`convert`), and a safetensors file written by anyone else (``save_for_torch``,
``safetensors.torch.save_file``) loads as a flat dict.

Loading never unpickles: safetensors cannot hold code, and npz is read with
``allow_pickle=False``. A truncated, corrupt, foreign or inconsistent file (a tensor whose
dtype or shape disagrees with the manifest) raises `CheckpointError` naming the file and what
is wrong; nothing is returned half-loaded.

Writes are atomic: the file is written to a temporary name in the same directory, flushed
to disk (fsync) and renamed over the target (``os.replace``), then the directory is fsynced,
so a crash, Ctrl-C or SIGKILL during a save leaves the previous checkpoint intact (a SIGKILL
can leave the hidden ``.name.<pid>.<random>.tmp`` file behind; it is never read).

Dependency. ``safetensors`` is a core dependency, not part of the ``train`` extra: ``tg.save``
and ``tg.load`` are core API used outside the trainer (examples, ``gradflow --checkpoint``,
user code), and the package is one small compiled wheel with no dependencies of its own.
"""

import os
import secrets
import warnings
import zlib

import numpy as np

from .tensor import Tensor

# json and zipfile are imported by the functions that use them: together ~5 ms of
# `import tinygrad_rnn` (benchmarks/import_time.py), for save and load only.

MANIFEST_KEY = "__tinygrad_rnn_manifest__"     # the npz member holding the manifest
METADATA_KEY = "tinygrad_rnn"                  # the safetensors metadata entry holding it
FORMAT = "tinygrad_rnn.save"
VERSION = 2                                    # 2: safetensors, per-tensor dtype/shape/crc32
SUFFIX = ".safetensors"

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"

# dtypes safetensors.numpy stores under their own name (others go as raw bytes).
_NATIVE_DTYPES = frozenset(np.dtype(d) for d in (
    "bool", "<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "<c8"))


class CheckpointError(ValueError):
    """A file could not be read as a checkpoint (truncated, corrupt, or a foreign format)."""


class LegacyFormatWarning(UserWarning):
    """A checkpoint in the ``.npz`` format of earlier versions was read or written."""


# --- encoding ------------------------------------------------------------------------------

def _where(path):
    """``obj['meta']['tags'][0]``: a tree position, for messages."""
    return "obj" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in path)


class _Encoder:
    """Turns the object tree into a JSON-able manifest plus a dict of arrays named by path."""

    def __init__(self):
        self.arrays = {}

    def _store(self, arr, path):
        if arr.dtype.hasobject:
            raise TypeError(f"tg.save: the array at {_where(path)} has dtype object, which cannot "
                            "be stored without pickle; convert it to a numeric or string array")
        if arr.dtype.fields is not None or np.dtype(arr.dtype.str) != arr.dtype:
            raise TypeError(f"tg.save: the array at {_where(path)} has the structured dtype "
                            f"{arr.dtype}; store its fields as separate arrays")
        key = "/".join(str(p) for p in path)
        if key in self.arrays:       # a dict key holding '/' can collide with a nested path
            n = 2
            while f"{key}#{n}" in self.arrays:
                n += 1
            key = f"{key}#{n}"
        self.arrays[key] = arr
        return key

    def encode(self, value, path=()):
        if isinstance(value, Tensor):
            raise TypeError(f"tg.save: {_where(path)} is a Tensor; save arrays (tensor.data, or "
                            "module.state_dict()), so that loading needs no autograd objects")
        if isinstance(value, np.ndarray):
            return {"t": "array", "k": self._store(value, path)}
        if isinstance(value, np.generic):
            return {"t": "npscalar", "k": self._store(np.asarray(value), path)}
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
            items = [self.encode(v, (*path, i)) for i, v in enumerate(value)]
            return {"t": "tuple" if isinstance(value, tuple) else "list", "v": items}
        if isinstance(value, dict):
            out = []
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"tg.save: dict keys must be strings, got {type(k).__name__} "
                                    f"key {k!r} at {_where(path)}")
                out.append([k, self.encode(v, (*path, k))])
            return {"t": "dict", "v": out}
        raise TypeError(f"tg.save: cannot store {type(value).__name__} at {_where(path)}; expected "
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


# --- the two file formats ------------------------------------------------------------------

def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("tg.save/tg.load need the safetensors package (a dependency of "
                          "tinygrad-rnn: pip install safetensors)") from None
    return safetensors.numpy


def _tensor_for_file(arr):
    """(the array safetensors stores, its manifest entry): native dtypes as they are, little
    endian and contiguous; anything else as raw bytes."""
    entry = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
    if arr.dtype in _NATIVE_DTYPES:
        # safetensors writes a strided array's memory as if it were C-ordered: copy first.
        # (Not np.ascontiguousarray, which turns a 0-d array into shape (1,).)
        stored = arr if arr.flags.c_contiguous else arr.copy(order="C")
    else:
        stored = np.frombuffer(arr.tobytes(), dtype=np.uint8)
        entry["raw"] = True
    entry["crc32"] = _crc32(stored)
    return stored, entry


def _crc32(arr):
    """CRC-32 of a C-contiguous array's bytes, without copying them."""
    return zlib.crc32(arr.reshape(-1).view(np.uint8))


def _encode_safetensors(manifest, arrays):
    import json
    tensors, entries = {}, {}
    for key, arr in arrays.items():
        tensors[key], entries[key] = _tensor_for_file(arr)
    manifest = dict(manifest, arrays=entries)
    metadata = {METADATA_KEY: json.dumps(manifest, ensure_ascii=False)}
    return _safetensors_numpy().save(tensors, metadata=metadata)


def _write_safetensors(f, manifest, arrays):
    f.write(_encode_safetensors(manifest, arrays))


def _write_npz(f, manifest, arrays):
    import json
    blob = json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    np.savez(f, **arrays, **{MANIFEST_KEY: np.frombuffer(blob, dtype=np.uint8)})


def _read_safetensors(path):
    """(manifest or None, {name: array}) from a safetensors file."""
    import json
    _safetensors_numpy()                       # the clear ImportError, if it is missing
    from safetensors import safe_open
    try:
        with safe_open(path, framework="np") as f:     # memory-mapped: one copy per tensor
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:     # SafetensorError (and its cousins) derive from Exception only
        raise CheckpointError(f"tg.load: '{path}' is not a readable checkpoint (truncated or "
                              f"corrupt safetensors file?): {exc}") from exc
    blob = metadata.get(METADATA_KEY)
    if blob is None:
        return None, tensors
    try:
        manifest = json.loads(blob)
        entries = manifest["arrays"]
        arrays = {key: _array_from_file(tensors[key], entry, key) for key, entry in entries.items()}
    except CheckpointError as exc:
        raise CheckpointError(f"tg.load: '{path}': {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"tg.load: '{path}' has a damaged manifest: "
                              f"{type(exc).__name__}: {exc}") from None
    extra = sorted(set(tensors) - set(entries))
    if extra:
        raise CheckpointError(f"tg.load: '{path}' holds tensors its manifest does not list: {extra}")
    return manifest, arrays


def _array_from_file(stored, entry, key):
    """The saved array, after checking the stored tensor against its manifest entry."""
    key = f"tensor '{key}'"
    dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
    expected_stored = np.dtype(np.uint8) if entry.get("raw") else dtype
    if stored.dtype != expected_stored:
        raise CheckpointError(f"{key} of shape {stored.shape} has dtype {stored.dtype}, but the "
                              f"manifest says {expected_stored} (the file was altered?)")
    if _crc32(stored) != entry["crc32"]:
        raise CheckpointError(f"{key} ({stored.dtype}, shape {stored.shape}) fails its CRC-32 "
                              "check: its bytes are corrupt")
    if not entry.get("raw"):
        if stored.shape != shape:
            raise CheckpointError(f"{key} has shape {stored.shape}, but the manifest says {shape}")
        return stored
    if stored.size != dtype.itemsize * int(np.prod(shape)):
        raise CheckpointError(f"raw {key} has {stored.size} bytes, not enough for {dtype} {shape}")
    return stored.view(dtype).reshape(shape).copy()          # aligned and writable


def _read_npz(path):
    """(manifest or None, {name: array}) from an npz file."""
    import json
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}    # reads (and CRC-checks) every member now
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"tg.load: '{path}' is not a readable checkpoint (truncated or "
                              f"corrupt?): {type(exc).__name__}: {exc}") from None
    blob = arrays.pop(MANIFEST_KEY, None)
    if blob is None:
        return None, arrays
    try:
        return json.loads(blob.tobytes().decode("utf-8")), arrays
    except ValueError as exc:
        raise CheckpointError(f"tg.load: '{path}' has a damaged manifest: "
                              f"{type(exc).__name__}: {exc}") from None


# --- save / load ---------------------------------------------------------------------------

def save(obj, path, format=None):
    """Write ``obj`` (a dict, see the module docstring) to ``path`` atomically.

    ``format``: ``"safetensors"`` (the default for any name but ``*.npz``) or ``"npz"`` (the
    format of earlier versions, kept for old pipelines; warns). The file name is used as given
    (no suffix is appended). The directory must exist.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"tg.save: expected a dict (e.g. {{'model': model.state_dict()}}), got "
                        f"{type(obj).__name__}")
    path = os.fspath(path)
    if format is None:
        format = "npz" if path.lower().endswith(".npz") else "safetensors"
    if format not in ("safetensors", "npz"):
        raise ValueError(f"tg.save: format must be 'safetensors' or 'npz', got {format!r}")
    enc = _Encoder()
    manifest = {"format": FORMAT, "version": VERSION, "root": enc.encode(obj)}
    if format == "npz":
        warnings.warn(f"tg.save: '{path}' is written in the old .npz checkpoint format; name it "
                      f"*{SUFFIX} to write safetensors, which PyTorch and JAX also read",
                      LegacyFormatWarning, stacklevel=2)
        atomic_write(path, lambda f: _write_npz(f, dict(manifest, version=1), enc.arrays), "tg.save")
    else:
        atomic_write(path, lambda f: _write_safetensors(f, manifest, enc.arrays), "tg.save")


def save_flat(tensors, path, metadata=None, who="save_flat"):
    """Write a flat ``{name: array}`` as a plain safetensors file (no manifest: what torch's
    ``safetensors.torch.load_file`` expects), atomically. ``metadata``: ``{str: str}``."""
    tensors = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in tensors.items()}
    blob = _safetensors_numpy().save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob), who)


def atomic_write(path, write, who):
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the directory: readers see the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{who}: directory '{directory}' does not exist (for '{path}')")
    # A unique name beside the target (same filesystem, so the rename is atomic); os.open with
    # 0o666 lets the umask set the permissions, as for any file the user creates.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    """Read a checkpoint written by ``tg.save``, in either format (told apart by content).

    A safetensors or npz file written by other tools loads as a flat ``{name: array}``.
    Never unpickles. A missing file raises FileNotFoundError; a truncated, corrupt, foreign or
    inconsistent file raises `CheckpointError` naming it. An ``.npz`` file loads with a
    `LegacyFormatWarning` saying how to convert it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tg.load: no such file '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"tg.load: '{path}' is a directory, expected a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        warnings.warn(f"tg.load: '{path}' is in the old .npz checkpoint format; it loads, but "
                      f"convert it once with tg.serialization.convert('{path}') (writes "
                      f"'{_converted_name(path)}')", LegacyFormatWarning, stacklevel=2)
        manifest, arrays = _read_npz(path)
    elif head.startswith(_NPY_MAGIC):
        raise CheckpointError(f"tg.load: '{path}' holds a single .npy array, not a checkpoint "
                              "written by tg.save")
    elif len(head) >= 9 and head[8:9] == b"{":          # 8-byte header size, then JSON
        manifest, arrays = _read_safetensors(path)
    else:
        raise CheckpointError(f"tg.load: '{path}' is not a readable checkpoint: neither a "
                              f"safetensors nor an npz file (it starts with {head[:12]!r})")
    if manifest is None:
        return arrays
    try:
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        if manifest.get("version", 0) > VERSION:
            raise CheckpointError(f"tg.load: '{path}' was written by a newer version (format "
                                  f"version {manifest['version']}, this reads up to {VERSION})")
        return _decode(manifest["root"], arrays, path)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"tg.load: '{path}' has a damaged manifest: "
                              f"{type(exc).__name__}: {exc}") from None


def _converted_name(path):
    root, ext = os.path.splitext(path)
    return (root if ext.lower() == ".npz" else path) + SUFFIX


def convert(path, out=None):
    """Rewrite an ``.npz`` checkpoint as safetensors (``x.npz`` -> ``x.safetensors`` unless
    ``out`` is given); returns the new path. The old file is left as it is."""
    path = os.fspath(path)
    out = _converted_name(path) if out is None else os.fspath(out)
    if os.path.abspath(out) == os.path.abspath(path):
        raise ValueError(f"convert: the output '{out}' would overwrite its input")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyFormatWarning)
        obj = load(path)
    save(obj, out, format="safetensors")
    return out
