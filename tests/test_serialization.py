"""tg.save / tg.load in both formats (safetensors, the default; npz, the old one): round trips
(model + optimizer + metadata), no pickle, atomic writes that survive a crash or a SIGKILL
mid-write, and clear errors for corrupt, truncated, wrong-dtype and mismatched files."""

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn import nn, optim, serialization
from tinygrad_rnn.serialization import CheckpointError, LegacyFormatWarning

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# The npz cases exercise the legacy format on purpose; its warning is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::tinygrad_rnn.serialization.LegacyFormatWarning")

FORMATS = {"safetensors": ".safetensors", "npz": ".npz"}
WRITERS = {"safetensors": "_write_safetensors", "npz": "_write_npz"}


@pytest.fixture(params=list(FORMATS))
def fmt(request):
    return request.param


def small_model():
    tg.manual_seed(0)
    return tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)])


def test_round_trip_of_model_optimizer_and_metadata(tmp_path, fmt):
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    obj = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "meta": {"step": 7, "lr": 0.1, "name": "char-lm ✓ \"quoted\"\n", "done": False, "none": None,
                 "big": 2 ** 100, "nan": float("nan"), "inf": -math.inf,
                 "history": [1.5, 2, [3, "x"]], "pair": (1, (2.0, "three")),
                 "np_scalar": np.float32(0.25), "empty": {},
                 "rng": np.random.default_rng(5).bit_generator.state},
        "arrays": [np.arange(6, dtype=np.int32).reshape(2, 3), np.array("text"), np.zeros((0, 4)),
                   np.array([True, False]), np.float16([1.5])],
    }
    path = tmp_path / f"ckpt{FORMATS[fmt]}"
    tg.save(obj, path)
    back = tg.load(path)

    fresh = tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)])
    fresh.load_state_dict(back["model"])
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    assert list(back["model"]) == list(model.state_dict())           # order kept
    opt2 = optim.Adam(fresh.parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.lr == 0.01 and opt2.step_count == 1
    for s1, s2 in zip(opt.state, opt2.state):
        for k in s1:
            np.testing.assert_array_equal(s1[k], s2[k])
    meta = back["meta"]
    assert meta["step"] == 7 and type(meta["step"]) is int
    assert meta["lr"] == 0.1 and meta["name"] == "char-lm ✓ \"quoted\"\n"
    assert meta["done"] is False and meta["none"] is None and meta["big"] == 2 ** 100
    assert math.isnan(meta["nan"]) and meta["inf"] == -math.inf
    assert meta["history"] == [1.5, 2, [3, "x"]]
    assert meta["pair"] == (1, (2.0, "three")) and isinstance(meta["pair"][1], tuple)
    assert meta["np_scalar"] == np.float32(0.25) and meta["np_scalar"].dtype == np.float32
    assert meta["empty"] == {}
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]                              # RNG state restores exactly
    assert rng.random() == np.random.default_rng(5).random()
    for a, b in zip(obj["arrays"], back["arrays"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# Every dtype a checkpoint may hold: safetensors' own, and those stored as raw bytes.
DTYPES = ["bool", "<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8",
          "<c8", "<c16", ">f8", ">i4", "<U3", "|S2", "<M8[s]"]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), transpose=st.booleans(),
       fmt=st.sampled_from(list(FORMATS)))
def test_every_dtype_and_layout_round_trips_exactly(data, dtype, transpose, fmt):
    """Strided views (a transposed weight) and raw-byte dtypes come back bit for bit."""
    arr = data.draw(hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                max_side=4)))
    if transpose:
        arr = arr.T
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"x{FORMATS[fmt]}")
        scalar = arr.reshape(-1)[0] if arr.size else None       # a numpy scalar
        tg.save({"a": arr, "scalar": scalar}, path)
        back = tg.load(path)
    assert back["a"].dtype == arr.dtype and back["a"].shape == arr.shape
    assert back["a"].tobytes() == arr.tobytes()                   # NaN payloads too
    assert back["a"].flags.writeable                              # as np.load gives them
    if arr.size:
        assert type(back["scalar"]) is type(scalar) and back["scalar"].dtype == scalar.dtype
        assert back["scalar"].tobytes() == scalar.tobytes()


def test_safetensors_file_is_readable_by_safetensors_with_path_names(tmp_path):
    model = small_model()
    path = tmp_path / "ckpt.safetensors"
    tg.save({"model": model.state_dict(), "trainer": {"hidden": (np.ones((2, 4)), np.zeros((2, 4)))},
             "step": 3}, path)
    tensors = safetensors_numpy.load_file(str(path))
    assert set(tensors) == {f"model/{k}" for k in model.state_dict()} | {"trainer/hidden/0",
                                                                         "trainer/hidden/1"}
    np.testing.assert_array_equal(tensors["model/cells.0.weight_hh"], model.cells[0].weight_hh.data)
    # The non-array part is JSON in the header's metadata: no pickle anywhere.
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + n])
    manifest = json.loads(header["__metadata__"]["tinygrad_rnn"])
    assert manifest["format"] == "tinygrad_rnn.save" and manifest["version"] == 2


def test_dict_keys_with_slashes_do_not_collide(tmp_path):
    obj = {"a/b": np.ones(2), "a": {"b": np.zeros(3)}}
    tg.save(obj, tmp_path / "c.safetensors")
    back = tg.load(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(back["a/b"], np.ones(2))
    np.testing.assert_array_equal(back["a"]["b"], np.zeros(3))


def test_npz_files_load_without_pickle(tmp_path):
    """The npz is plain: numpy reads every member with allow_pickle=False."""
    path = tmp_path / "c.npz"
    tg.save({"w": np.ones(3), "meta": {"a": [1, 2]}}, path)
    with np.load(path, allow_pickle=False) as f:
        for k in f.files:
            assert f[k].dtype != object


def test_save_refuses_what_it_cannot_store_without_pickle(tmp_path, fmt):
    path = tmp_path / f"x{FORMATS[fmt]}"
    with pytest.raises(TypeError, match=r"cannot store set at obj\['meta'\]\['tags'\]"):
        tg.save({"meta": {"tags": {1, 2}}}, path)
    with pytest.raises(TypeError, match=r"dtype object"):
        tg.save({"a": np.array([None, 1], dtype=object)}, path)
    with pytest.raises(TypeError, match="structured dtype"):
        tg.save({"a": np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])}, path)
    with pytest.raises(TypeError, match="dict keys must be strings"):
        tg.save({"a": {1: 2}}, path)
    with pytest.raises(TypeError, match="is a Tensor"):
        tg.save({"w": tg.Tensor(np.ones(2))}, path)
    with pytest.raises(TypeError, match="expected a dict"):
        tg.save([1, 2], path)
    with pytest.raises(ValueError, match="format must be"):
        tg.save({"a": 1}, path, format="pickle")
    assert not path.exists()
    assert os.listdir(tmp_path) == []                  # no temporary left behind


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, fmt):
    path = tmp_path / f"ckpt{FORMATS[fmt]}"
    tg.save({"w": np.arange(4.0), "step": 1}, path)
    before = path.read_bytes()

    def crash(f, manifest, arrays):
        f.write(before[: len(before) // 2])             # some bytes reach the disk, then...
        raise OSError("disk full")

    monkeypatch.setattr(serialization, WRITERS[fmt], crash)
    with pytest.raises(OSError, match="disk full"):
        tg.save({"w": np.zeros(4), "step": 2}, path)
    assert path.read_bytes() == before
    assert tg.load(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == [path.name]   # the temporary was removed


def test_ctrl_c_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, fmt):
    path = tmp_path / f"ckpt{FORMATS[fmt]}"
    tg.save({"step": 1}, path)
    write = getattr(serialization, WRITERS[fmt])

    def interrupted(f, manifest, arrays):
        write(f, manifest, arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization, WRITERS[fmt], interrupted)
    with pytest.raises(KeyboardInterrupt):
        tg.save({"step": 2}, path)
    monkeypatch.undo()
    assert tg.load(path)["step"] == 1
    assert os.listdir(tmp_path) == [path.name]


SAVE_FOREVER = """
import sys
import numpy as np
import tinygrad_rnn as tg
w = np.zeros(1_000_000)
step = 0
while True:
    step += 1
    w[:] = step
    tg.save({"w": w, "step": step}, sys.argv[1])
    print(step, flush=True)
"""


def test_sigkill_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A process saving an 8 MB checkpoint in a loop is killed (SIGKILL: no cleanup runs) while
    a temporary file is being written; the checkpoint on disk is a whole earlier save."""
    path = tmp_path / "ckpt.safetensors"
    killed_mid_write = 0
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "1"      # one whole save exists
            deadline = time.monotonic() + 30
            while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
                assert time.monotonic() < deadline, "the saving process never wrote a temporary"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        killed_mid_write += bool(leftovers)
        ckpt = tg.load(path)
        assert ckpt["step"] >= 1 and ckpt["w"].shape == (1_000_000,)
        assert np.all(ckpt["w"] == ckpt["step"])            # one save, not a mix of two
        for n in leftovers:
            os.unlink(tmp_path / n)
        if killed_mid_write >= 2:
            break
    assert killed_mid_write >= 1, "no kill landed while a temporary was being written"


def test_truncated_file_gives_a_clear_error_naming_it(tmp_path, fmt):
    path = tmp_path / f"ckpt{FORMATS[fmt]}"
    tg.save({"w": np.random.default_rng(0).standard_normal(2000), "meta": {"a": 1}}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30, 5, 0):
        bad = tmp_path / f"cut{cut}{FORMATS[fmt]}"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"'{bad}' is not a readable checkpoint"):
            tg.load(bad)


def test_corrupt_bytes_are_detected(tmp_path, fmt):
    """A flipped byte inside an array fails a CRC check rather than loading wrong weights:
    zip's for npz, the manifest's CRC-32 for safetensors (which has no checksum itself)."""
    path = tmp_path / f"ckpt{FORMATS[fmt]}"
    tg.save({"w": np.zeros(5000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"'{path}'.*corrupt"):
        tg.load(path)


def test_corrupt_header_is_detected(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tg.save({"w": np.zeros(50)}, path)
    data = bytearray(path.read_bytes())
    data[9] = ord("#")                                   # the header's JSON breaks
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        tg.load(path)
    assert info.value.__cause__ is not None              # safetensors' own error, chained


def _rewrite(path, change):
    """Re-save a safetensors file after ``change(tensors, metadata)`` edits it (a file altered
    by hand or by another tool)."""
    tensors = safetensors_numpy.load_file(str(path))
    n = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8:8 + n])["__metadata__"]
    change(tensors, metadata)
    safetensors_numpy.save_file(tensors, str(path), metadata=metadata)


def test_wrong_dtype_or_shape_in_the_file_is_an_error(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tg.save({"model": {"w": np.zeros((2, 3)), "b": np.ones(3, dtype=np.float32)}}, path)

    def to_float16(tensors, metadata):
        tensors["model/w"] = tensors["model/w"].astype(np.float16)
    _rewrite(path, to_float16)
    with pytest.raises(CheckpointError, match=r"'model/w'.* has dtype float16, but the manifest "
                                              r"says float64"):
        tg.load(path)

    tg.save({"model": {"w": np.zeros((2, 3))}}, path)

    def reshape(tensors, metadata):
        manifest = json.loads(metadata["tinygrad_rnn"])
        manifest["arrays"]["model/w"]["shape"] = [3, 2]
        metadata["tinygrad_rnn"] = json.dumps(manifest)
    _rewrite(path, reshape)
    with pytest.raises(CheckpointError, match=r"'model/w' has shape \(2, 3\), but the manifest says "
                                              r"\(3, 2\)"):
        tg.load(path)


def test_a_dtype_numpy_cannot_hold_is_a_clear_error(tmp_path):
    """bfloat16 (a safetensors dtype numpy lacks), written by hand."""
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match="bf16.safetensors' is not a readable checkpoint"):
        tg.load(path)


def test_foreign_and_missing_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt' is not a readable checkpoint: neither"):
        tg.load(text)
    single = tmp_path / "one.npy"
    np.save(single, np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        tg.load(single)
    with pytest.raises(FileNotFoundError, match="no such file '.*missing.safetensors'"):
        tg.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        tg.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tg.save({"a": 1}, tmp_path / "no" / "dir" / "x.safetensors")


def test_damaged_manifest(tmp_path):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open(serialization.MANIFEST_KEY + ".npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(b"{not json", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="damaged manifest"):
        tg.load(path)
    path = tmp_path / "m.safetensors"
    safetensors_numpy.save_file({"a": np.ones(2)}, str(path), metadata={"tinygrad_rnn": "{not json"})
    with pytest.raises(CheckpointError, match="m.safetensors' has a damaged manifest"):
        tg.load(path)
    tg.save({"a": np.ones(2)}, path)
    _rewrite(path, lambda tensors, metadata: tensors.update(extra=np.zeros(1)))
    with pytest.raises(CheckpointError, match=r"tensors its manifest does not list: \['extra'\]"):
        tg.load(path)


def test_plain_npz_and_foreign_safetensors_load_as_flat_dicts(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(2), b=np.arange(3))
    back = tg.load(path)
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["b"], np.arange(3))
    path = tmp_path / "hf.safetensors"
    safetensors_numpy.save_file({"weight": np.eye(2, dtype=np.float32)}, str(path),
                                metadata={"format": "pt"})
    back = tg.load(path)
    assert list(back) == ["weight"] and back["weight"].dtype == np.float32


def write_version_1_npz(obj_arrays, meta, path):
    """A checkpoint exactly as the npz-only tg.save wrote it (members a0, a1, ...)."""
    root = {"t": "dict", "v": [["model", {"t": "dict", "v": [[k, {"t": "array", "k": f"a{i}"}]
                                                            for i, k in enumerate(obj_arrays)]}],
                               ["step", {"t": "int", "v": meta}]]}
    manifest = {"format": "tinygrad_rnn.save", "version": 1, "root": root}
    blob = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    np.savez(path, **{f"a{i}": a for i, a in enumerate(obj_arrays.values())},
             **{serialization.MANIFEST_KEY: blob})


def test_old_npz_checkpoints_load_with_a_note_and_convert(tmp_path):
    model = small_model()
    old = tmp_path / "run.npz"
    write_version_1_npz(model.state_dict(), 12, old)
    with pytest.warns(LegacyFormatWarning, match=r"old \.npz checkpoint format.*"
                                                 r"tg\.serialization\.convert\('.*run\.npz'\)"):
        back = tg.load(old)
    assert back["step"] == 12
    fresh = tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)]).load_state_dict(back["model"])
    np.testing.assert_array_equal(fresh.cells[1].weight_hh.data, model.cells[1].weight_hh.data)

    new = serialization.convert(old)
    assert new == str(tmp_path / "run.safetensors") and old.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # the converted file loads silently
        converted = tg.load(new)
    assert converted["step"] == 12
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(converted["model"][k], v)
    with pytest.raises(ValueError, match="would overwrite its input"):
        serialization.convert(new, new)


def test_saving_npz_warns_and_other_names_write_safetensors(tmp_path):
    with pytest.warns(LegacyFormatWarning, match=r"name it \*\.safetensors"):
        tg.save({"a": np.ones(1)}, tmp_path / "old.npz")
    assert (tmp_path / "old.npz").read_bytes()[:4] == b"PK\x03\x04"
    path = tmp_path / "checkpoint.bin"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tg.save({"a": np.ones(1)}, path)
        assert tg.load(path)["a"][0] == 1.0
    assert not (tmp_path / "checkpoint.bin.safetensors").exists()
    assert path.read_bytes()[8:9] == b"{"                # a safetensors header, whatever the name
    tg.save({"a": np.ones(1)}, tmp_path / "forced.npz", format="safetensors")
    assert (tmp_path / "forced.npz").read_bytes()[8:9] == b"{"


def test_mismatched_model_checkpoint_errors_name_the_parameter(tmp_path):
    path = tmp_path / "m.safetensors"
    tg.save({"model": nn.Linear(3, 4).state_dict()}, path)
    state = tg.load(path)["model"]
    with pytest.raises(ValueError, match=r"'weight' has shape \(5, 3\) but the state holds \(4, 3\)"):
        nn.Linear(3, 5).load_state_dict(state)
    with pytest.raises(KeyError, match=r"unexpected parameters \['bias'\]"):
        nn.Linear(3, 4, bias=False).load_state_dict(state)


def test_load_state_dict_changes_nothing_when_any_entry_is_bad():
    """The weight fits, the bias is text: the error names the bias and the weight is untouched."""
    layer = nn.Linear(3, 4)
    before = layer.weight.data.copy()
    state = {"weight": np.zeros((4, 3)), "bias": np.array(["a", "b", "c", "d"])}
    with pytest.raises(ValueError, match=r"'bias' is float64 but the state holds a <U1 array"):
        layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.weight.data, before)
